"""Shared benchmark plumbing: thread pinning, timing, environment facts and JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def pin_threads(threads: int) -> None:
    """Both frameworks on the same number of threads (call before TF runs anything)."""
    import tensorflow as tf
    import torch

    torch.set_num_threads(threads)
    if tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return  # set by an earlier benchmark of this process (TF refuses changes once it runs)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def median_seconds(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": repeats}


def interleaved_medians(modes: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Warm every mode up twice (tracing, XLA compilation), then time them in interleaved rounds so machine
    drift hits all alike; per mode the median and minimum seconds."""
    for fn in modes.values():
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(repeats):
        for name, fn in modes.items():
            samples[name].append(median_seconds(fn, 1)["median_s"])
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "runs": len(t)} for name, t in samples.items()}


def environment() -> dict[str, object]:
    import numpy
    import tensorflow as tf
    import torch

    from mfport.core.environment import cpu_model, kernel_settings

    return {"python": platform.python_version(), "machine": platform.machine(), "cpu_model": cpu_model(),
            "cpus": os.cpu_count(), "kernel_settings": kernel_settings(), "torch": torch.__version__,
            "tensorflow": tf.__version__, "numpy": numpy.__version__}


def write_result(name: str, payload: dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "environment": environment(), **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    return path
