"""Run every benchmark of the project; each writes benchmarks/results/<name>.json. A summary table follows."""

from __future__ import annotations

import sys

from benchmarks import conversion, forward_latency, matcher, train_step


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    results = {"forward_latency": forward_latency.main([]), "conversion": conversion.main([]),
               "train_step": train_step.main([]), "matcher": matcher.main([])}
    table = Table(title="mfport benchmarks (benchmarks/results/*.json)")
    for column in ("benchmark", "measured", "target", "met"):
        table.add_column(column)
    fl = results["forward_latency"]
    table.add_row("forward 512x512 b1, 2 threads",
                  ", ".join(f"{k} {v['median_s']:.3f}s" for k, v in fl["modes"].items()),
                  f"tf_xla <= {fl['target']['tf_xla_ratio_at_most']}x pytorch "
                  f"(now {fl['ratio_to_pytorch']['tf_xla']:.2f}x)", str(fl["target"]["met"]))
    cv = results["conversion"]
    table.add_row("conversion R50+6Enc", f"{cv['conversion']['mb_per_s']:.0f} MB/s, "
                  f"read/map/write {cv['conversion']['read_map_write_s']:.2f}s "
                  f"(TF import {cv['baseline']['import_tf_s']:.1f}s, build {cv['baseline']['build_model_s']:.1f}s); "
                  f"repeated in one process {cv['repeated_in_process']['mb_per_s']:.0f} MB/s",
                  f">= {cv['targets']['mb_per_s_at_least']:.0f} MB/s", str(cv["targets"]["mb_per_s_met"]))
    table.add_row("conversion peak memory", f"{cv['conversion']['peak_rss_mb']:.0f} MB "
                  f"(baseline {cv['baseline']['peak_rss_mb']:.0f} MB)",
                  f"<= {cv['targets']['peak_rss_mb_at_most']:.0f} MB", str(cv["targets"]["memory_met"]))
    ts = results["train_step"]
    table.add_row("train step 512x512 b2, 2 threads",
                  ", ".join(f"{k} {v['median_s']:.2f}s" for k, v in ts["modes"].items()),
                  f"TF <= {ts['target']['ratio_at_most']}x pytorch (now " + ", ".join(
                      f"{k} {v:.2f}x" for k, v in ts["ratio_to_pytorch"].items()) + ")",
                  ", ".join(f"{k} {v}" for k, v in ts["target"]["met"].items()))
    mt = results["matcher"]
    for case, timings in mt["cases"].items():
        table.add_row(f"matcher {case}", ", ".join(f"{k} {v['median_ms']:.1f}ms" for k, v in timings.items()),
                      f"in-graph <= {mt['target']['in_graph_ms_at_most']:.0f} ms", str(mt["target"]["met"]))
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
