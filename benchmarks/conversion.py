"""Conversion speed and peak memory of `mfport convert` (R50 + 6 Enc; Swin-L, the largest checkpoint, for memory).

Each measurement runs in its own fresh process so its peak RSS (VmHWM) is that step's alone:
- baseline: import TensorFlow and build the TF model (what every conversion pays before any data work);
- conversion: the same, then read + map + write of the seeded checkpoint (timed separately), after
  os.sync(); then, as a floor of the write step, TF's checkpoint writer alone re-saving the converted
  variables;
- repeated: five conversions in one process; the later ones find memory the earlier ones freed;
- whole command: `mfport convert` and `mfport convert --saved-model` as a user runs them, wall time of the
  process (interpreter, imports, model build, data, SavedModel trace and save).
Targets: read + map + write moves >= 500 MB/s of tensor data; peak RSS <= baseline + 2.5 x checkpoint size
(R50 and Swin-L); the whole command <= 10 s, with --saved-model <= 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import write_result

TARGET_MB_PER_S = 500.0
TARGET_MEMORY_FACTOR = 2.5
TARGET_COMMAND_S = {"convert": 10.0, "convert_saved_model": 15.0}

# The child's own high-water RSS. Not ru_maxrss: Linux carries the parent's peak across fork and exec
# into it, so after run_all's earlier benchmarks (TF and torch loaded, ~2.7 GB) every child reported that.
_PEAK_RSS_MB = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"

_BASELINE = """
import json, time
t = time.perf_counter()
import tensorflow as tf
from mfport.tf_maskformer.modeling.factory import build_maskformer
imported = time.perf_counter()
build_maskformer({preset!r})
built = time.perf_counter()
print(json.dumps({{"import_s": imported - t, "build_s": built - imported,
                  "peak_rss_mb": {peak_rss}}}))
"""

# After the conversion (and its peak RSS), a floor of the write step on the same disk, same run: TF's own
# checkpoint writer re-saving the converted variables.
_CONVERT = """
import json, os, time
from mfport.converter.convert import convert_to_tf
from mfport.tf_maskformer.serving.model_dir import load_converted_model
os.sync()  # no dirty pages of an earlier run throttle this one's writes
result = convert_to_tf({checkpoint!r}, {output!r})
peak = {peak_rss}
import tensorflow as tf
model = load_converted_model({output!r})
os.sync()
start = time.perf_counter()
tf.train.Checkpoint(model=model).write({output!r} + "-again/ckpt")
saver_s = time.perf_counter() - start
print(json.dumps({{"timings_s": result.timings_s, "tensor_bytes": result.tensor_bytes, "peak_rss_mb": peak,
                  "tf_checkpoint_write_alone_s": saver_s}}))
"""

_REPEATED = """
import json, os, shutil
from mfport.converter.convert import convert_to_tf
runs = []
for i in range({count}):
    shutil.rmtree({output!r}, ignore_errors=True)
    os.sync()
    runs.append(convert_to_tf({checkpoint!r}, {output!r}).timings_s)
print(json.dumps(runs))
"""


def _run(code: str) -> object:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def _command_seconds(arguments: list[str], runs: int) -> list[float]:
    """Wall time of whole `mfport` processes (fresh interpreter each), after os.sync()."""
    import time

    times = []
    for _ in range(runs):
        os.sync()
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mfport", *arguments], capture_output=True, check=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        times.append(time.perf_counter() - start)
    return times


def _data_seconds(timings: dict[str, float]) -> float:
    return timings["read"] + timings["map"] + timings["write"]


def whole_command(preset_name: str, runs: int) -> dict[str, object]:
    from mfport.core.presets import get_preset
    from mfport.torch_reference.seeded_init import write_seeded_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "seeded.pkl"
        write_seeded_checkpoint(get_preset(preset_name), 0, checkpoint)
        variants = {"convert": [], "convert_saved_model": ["--saved-model"]}
        seconds = {name: _command_seconds(["convert", str(checkpoint), "-o", str(Path(tmp) / name), "--force",
                                           *extra], runs) for name, extra in variants.items()}
    medians = {name: statistics.median(t) for name, t in seconds.items()}
    return {"preset": preset_name, "runs_s": seconds, "median_s": medians,
            "targets_s": TARGET_COMMAND_S, "met": {k: medians[k] <= v for k, v in TARGET_COMMAND_S.items()}}


def memory_only(preset_name: str) -> dict[str, object]:
    """Peak RSS of one fresh conversion against the model build alone (the largest checkpoints)."""
    from mfport.core.presets import get_preset
    from mfport.torch_reference.seeded_init import write_seeded_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "seeded.pkl"
        write_seeded_checkpoint(get_preset(preset_name), 0, checkpoint)
        size_mb = checkpoint.stat().st_size / 2**20
        baseline = _run(_BASELINE.format(preset=preset_name, peak_rss=_PEAK_RSS_MB))
        converted = _run(_CONVERT.format(checkpoint=str(checkpoint), output=str(Path(tmp) / "out"),
                                         peak_rss=_PEAK_RSS_MB))
    limit = baseline["peak_rss_mb"] + TARGET_MEMORY_FACTOR * size_mb
    return {"preset": preset_name, "checkpoint_mb": size_mb, "baseline_peak_rss_mb": baseline["peak_rss_mb"],
            "conversion_peak_rss_mb": converted["peak_rss_mb"], "timings_s": converted["timings_s"],
            "peak_over_baseline_x_checkpoint": (converted["peak_rss_mb"] - baseline["peak_rss_mb"]) / size_mb,
            "target": {"peak_rss_mb_at_most": limit, "met": converted["peak_rss_mb"] <= limit}}


def run(preset_name: str, repeats: int) -> dict[str, object]:
    from mfport.core.presets import get_preset
    from mfport.torch_reference.seeded_init import write_seeded_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "seeded.pkl"
        write_seeded_checkpoint(get_preset(preset_name), 0, checkpoint)
        size_mb = checkpoint.stat().st_size / 2**20
        baselines = [_run(_BASELINE.format(preset=preset_name, peak_rss=_PEAK_RSS_MB)) for _ in range(repeats)]
        conversions = [_run(_CONVERT.format(checkpoint=str(checkpoint), output=str(Path(tmp) / f"out{i}"),
                                      peak_rss=_PEAK_RSS_MB))
                       for i in range(repeats)]
        repeated = _run(_REPEATED.format(checkpoint=str(checkpoint), output=str(Path(tmp) / "again"), count=5))
        tensor_bytes = conversions[0]["tensor_bytes"]
    best = min(conversions, key=lambda c: _data_seconds(c["timings_s"]))
    read_map_s = best["timings_s"]["read"] + best["timings_s"]["map"]
    data_s = _data_seconds(best["timings_s"])
    tf_writer_s = min(c["tf_checkpoint_write_alone_s"] for c in conversions)
    tensor_mb = tensor_bytes / 2**20
    baseline_rss = min(b["peak_rss_mb"] for b in baselines)
    peak_rss = max(c["peak_rss_mb"] for c in conversions)
    memory_limit = baseline_rss + TARGET_MEMORY_FACTOR * size_mb
    best_repeat = min(repeated[1:], key=_data_seconds)
    return {
        "preset": preset_name, "checkpoint_mb": size_mb, "tensor_mb": tensor_mb, "repeats": repeats,
        "baseline": {"import_tf_s": min(b["import_s"] for b in baselines),
                     "build_model_s": min(b["build_s"] for b in baselines), "peak_rss_mb": baseline_rss},
        # The best of the fresh processes, and every one's read + map + write.
        "conversion": {"timings_s": best["timings_s"], "read_map_write_s": data_s,
                       "mb_per_s": tensor_mb / data_s,
                       "read_map_mb_per_s": tensor_mb / read_map_s,
                       "all_read_map_write_s": [_data_seconds(c["timings_s"]) for c in conversions],
                       "median_mb_per_s": tensor_mb / statistics.median(_data_seconds(c["timings_s"])
                                                                        for c in conversions),
                       "peak_rss_mb": peak_rss,
                       "peak_over_baseline_mb": peak_rss - baseline_rss,
                       "peak_over_baseline_x_checkpoint": (peak_rss - baseline_rss) / size_mb},
        # Conversions 2-5 of one process (the first is a fresh process's, as above): the best of them.
        "repeated_in_process": {"timings_s": best_repeat, "read_map_write_s": _data_seconds(best_repeat),
                                "mb_per_s": tensor_mb / _data_seconds(best_repeat),
                                "all_read_map_write_s": [_data_seconds(t) for t in repeated]},
        # TF's checkpoint writer alone, re-saving the converted variables (best of the fresh processes).
        "write_floors": {
            "tf_checkpoint_write_s": tf_writer_s,
            "best_possible_mb_per_s_with_tf_writer": tensor_mb / (read_map_s + tf_writer_s),
        },
        "targets": {"mb_per_s_at_least": TARGET_MB_PER_S, "mb_per_s_met": tensor_mb / data_s >= TARGET_MB_PER_S,
                    "peak_rss_mb_at_most": memory_limit, "memory_met": peak_rss <= memory_limit},
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="r50_6enc_coco_panoptic")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-preset", default="swin_l_coco_panoptic", help="the largest checkpoint")
    parser.add_argument("--command-runs", type=int, default=3)
    args = parser.parse_args(argv)
    result = run(args.preset, args.repeats)
    result["whole_command"] = whole_command(args.preset, args.command_runs)
    result["largest_checkpoint"] = memory_only(args.memory_preset)
    write_result("conversion", result)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
