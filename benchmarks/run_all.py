"""Run every benchmark of the project; each writes benchmarks/results/<name>.json. A summary table follows.

`python -m benchmarks.run_all --only forward_latency train_step` runs some; `--table` only prints the table of
the JSON already there."""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks import conversion, forward_latency, matcher, parity_timing, train_step, xla_cpu_kernels
from benchmarks.common import RESULTS

BENCHMARKS = {"forward_latency": forward_latency.main, "train_step": train_step.main, "conversion": conversion.main,
              "parity_timing": parity_timing.main, "matcher": matcher.main, "xla_cpu_kernels": xla_cpu_kernels.main}


def summary_rows(results: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """(benchmark, measured, target, met) per line of the summary."""
    rows = []
    for name, case in results.get("forward_latency", {}).get("cases", {}).items():
        rows.append((f"forward {name} b1", ", ".join(f"{k} {v['median_s']:.2f}s" for k, v in case["modes"].items()),
                     f"tf_xla <= {case['target']['tf_xla_ratio_at_most']}x pytorch (now " + ", ".join(
                         f"{k} {v:.2f}x" for k, v in case["ratio_to_pytorch"].items() if k.startswith("tf_xla")) + ")",
                     f"{case['target']['met']} (inference forward: "
                     f"{case['target'].get('met_by_inference_forward', 'not measured')})"))
    for name, case in results.get("train_step", {}).get("cases", {}).items():
        rows.append((f"train step {name} 512x512 b2", ", ".join(f"{k} {v['median_s']:.2f}s"
                                                                for k, v in case["modes"].items()),
                     f"TF <= {case['target']['ratio_at_most']}x pytorch (now " + ", ".join(
                         f"{k} {v:.2f}x" for k, v in case["ratio_to_pytorch"].items()) + ")",
                     ", ".join(f"{k} {v}" for k, v in case["target"]["met"].items())))
    cv = results.get("conversion")
    if cv:
        rows.append(("conversion R50+6Enc", f"{cv['conversion']['mb_per_s']:.0f} MB/s, read/map/write "
                     f"{cv['conversion']['read_map_write_s']:.2f}s; repeated in one process "
                     f"{cv['repeated_in_process']['mb_per_s']:.0f} MB/s",
                     f">= {cv['targets']['mb_per_s_at_least']:.0f} MB/s", str(cv["targets"]["mb_per_s_met"])))
        rows.append(("conversion peak memory R50+6Enc", f"{cv['conversion']['peak_rss_mb']:.0f} MB "
                     f"(baseline {cv['baseline']['peak_rss_mb']:.0f} MB)",
                     f"<= {cv['targets']['peak_rss_mb_at_most']:.0f} MB", str(cv["targets"]["memory_met"])))
        largest = cv.get("largest_checkpoint")
        if largest:
            rows.append((f"conversion peak memory {largest['preset']} ({largest['checkpoint_mb']:.0f} MB)",
                         f"{largest['conversion_peak_rss_mb']:.0f} MB (baseline {largest['baseline_peak_rss_mb']:.0f}"
                         f" MB, +{largest['peak_over_baseline_x_checkpoint']:.2f}x checkpoint)",
                         f"<= {largest['target']['peak_rss_mb_at_most']:.0f} MB", str(largest["target"]["met"])))
        command = cv.get("whole_command")
        if command:
            for key, target in command["targets_s"].items():
                rows.append((f"mfport {key.replace('_', ' --').replace('saved model', 'saved-model')}",
                             f"{command['median_s'][key]:.1f}s (median of {len(command['runs_s'][key])})",
                             f"<= {target:.0f}s", str(command["met"][key])))
    pt = results.get("parity_timing")
    if pt:
        rows.append(("mfport parity 512x512 b2, float64 context", f"forward {pt['forward']['wall_s']:.0f}s, "
                     f"with gradients {pt['with_gradients']['wall_s']:.0f}s",
                     f"forward <= {pt['target']['forward_s_at_most']:.0f}s", str(pt["target"]["met"])))
    for case, timings in results.get("matcher", {}).get("cases", {}).items():
        rows.append((f"matcher {case}", ", ".join(f"{k} {v['median_ms']:.1f}ms" for k, v in timings.items()),
                     f"in-graph <= {results['matcher']['target']['in_graph_ms_at_most']:.0f} ms",
                     str(results["matcher"]["target"]["met"])))
    for case, row in results.get("xla_cpu_kernels", {}).get("cases", {}).items():
        rows.append((f"kernel {case}", ", ".join(f"{k} {v['median_s'] * 1e3:.1f}ms" for k, v in row["modes"].items()),
                     "none: explains the Swin ratios", f"XLA {row['xla_to_pytorch']:.2f}x pytorch"))
    return rows


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run these benchmarks only")
    parser.add_argument("--table", action="store_true", help="run nothing; summarise results/*.json")
    args = parser.parse_args(argv)
    if not args.table:
        for name, run in BENCHMARKS.items():
            if not args.only or name in args.only:
                run([])
    results = {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))}
    table = Table(title="mfport benchmarks (benchmarks/results/*.json)")
    for column in ("benchmark", "measured", "target", "met"):
        table.add_column(column)
    for row in summary_rows(results):
        table.add_row(*row)
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
