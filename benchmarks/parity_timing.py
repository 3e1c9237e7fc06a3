"""Wall time of `mfport parity` with the float64 context (the default) on R50 + 6 Enc at 512x512, batch 2: forward
only (--no-gradients) and with matcher, loss and gradient parity (float64 backward too), each as a user runs it:
one process, interpreter and imports included. The report's own phase timings are kept beside.
Target (forward with float64 context): <= 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result

TARGET_FORWARD_S = 60.0


def _timed_parity(checkpoint: Path, report_dir: Path, extra: list[str], size: tuple[int, int], batch: int
                  ) -> dict[str, object]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mfport", "parity", str(checkpoint), "--image-size", *map(str, size),
                           "--batch", str(batch), "--report-dir", str(report_dir), *extra],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - start
    report = json.loads((report_dir / "report.json").read_text())
    return {"wall_s": wall, "exit_code": done.returncode, "passed": report["passed"],
            "phases_s": report.get("timings_s", {})}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="r50_6enc_coco_panoptic")
    parser.add_argument("--size", type=int, nargs=2, default=[512, 512])
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    from mfport.core.presets import get_preset
    from mfport.torch_reference.seeded_init import write_seeded_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "seeded.pkl"
        write_seeded_checkpoint(get_preset(args.preset), 0, checkpoint)
        forward = _timed_parity(checkpoint, Path(tmp) / "forward", ["--no-gradients"], args.size, args.batch)
        gradients = _timed_parity(checkpoint, Path(tmp) / "gradients", [], args.size, args.batch)
    result = {"preset": args.preset, "input": [args.batch, *args.size, 3], "float64_context": True,
              "forward": forward, "with_gradients": gradients,
              "target": {"forward_s_at_most": TARGET_FORWARD_S, "met": forward["wall_s"] <= TARGET_FORWARD_S}}
    write_result("parity_timing", result)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
