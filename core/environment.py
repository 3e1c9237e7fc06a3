"""Facts about the machine a result was measured on (parity reports and benchmark JSON record them)."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name: float32 results and speeds differ between CPU vendors and kernel choices."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def kernel_settings() -> dict[str, str]:
    """The environment variables that change which float32 kernels oneDNN, ATen and TF pick."""
    names = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS")
    return {name: os.environ[name] for name in names if name in os.environ}
