"""The XLA:CPU kernels the Swin speed targets stand on, timed next to PyTorch's on the same shapes.

Why this exists: the Swin forward and train-step ratios (issue 18: <= 0.8x and <= 0.9x PyTorch) stay out of reach
on a CPU, and the whole-model benchmarks alone cannot say why. Each case here is one piece of a Swin block at the
size it has in a benchmarked model, run as XLA compiles it (`tf.function(jit_compile=True)`) and as PyTorch runs
the reference's op, in interleaved rounds of one process (the absolute times of this VM drift 2x within an hour;
the ratios of one run hold from run to run). With `--probe-flags` the alternative XLA:CPU kernels
(`--xla_cpu_use_onednn`, `--xla_cpu_use_xnnpack`) are tried in child processes, on a batched product and on the
Swin-T forward (timed against the same forward without a flag).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import interleaved_medians, pin_threads, write_result

# (name, what it is, kind, shape parameters). Shapes: Swin-T at 512x512 (stage 0: 128x128 tokens, 19x19 windows
# of 7x7 after padding to 133, 3 heads), Swin-B window 12 at 640x640 (stage 2: 40x40 tokens, 4x4 windows of
# 12x12 after padding to 48, 16 heads), the pixel decoder's res2 map at 512x512.
CASES: tuple[tuple[str, str, str, dict[str, int]], ...] = (
    ("scores_swin_t_stage0", "q @ k^T of every window and head", "scores", dict(batch=361 * 3, tokens=49)),
    ("softmax_swin_t_stage0", "softmax(scores + bias)", "softmax", dict(batch=361, heads=3, tokens=49)),
    ("values_swin_t_stage0", "attn @ v", "values", dict(batch=361 * 3, tokens=49)),
    ("scores_swin_b_stage2", "q @ k^T of every window and head", "scores", dict(batch=16 * 16, tokens=144)),
    ("softmax_swin_b_stage2", "softmax(scores + bias)", "softmax", dict(batch=16, heads=16, tokens=144)),
    ("values_swin_b_stage2", "attn @ v", "values", dict(batch=16 * 16, tokens=144)),
    ("layer_norm_swin_t_stage0", "LayerNorm over 96 channels", "layer_norm", dict(tokens=128 * 128, channels=96)),
    ("layer_norm_swin_b_stage2", "LayerNorm over 512 channels", "layer_norm", dict(tokens=40 * 40, channels=512)),
    ("group_norm_pixel_decoder_res2", "GroupNorm(32, 256) at 128x128", "group_norm", dict(size=128, channels=256)),
    ("gelu_swin_t_stage0", "exact GELU of fc1's output", "gelu", dict(tokens=128 * 128, channels=384)),
    ("fc1_swin_t_stage0", "dense 96 -> 384 (one large GEMM)", "dense",
     dict(tokens=128 * 128, channels=96, out=384)),
    ("fc1_swin_b_stage2", "dense 512 -> 2048", "dense", dict(tokens=40 * 40, channels=512, out=2048)),
    ("block_swin_b_stage2", "a whole shifted Swin-B block, stage 2", "block",
     dict(dim=512, heads=16, window=12, size=40)),
    ("attention_swin_b_stage2", "that block's window attention (projections included)", "attention",
     dict(dim=512, heads=16, window=12, size=40)),
    ("block_swin_t_stage0", "a whole shifted Swin-T block, stage 0", "block",
     dict(dim=96, heads=3, window=7, size=128)),
)
HEAD_DIM = 32  # every Swin size has 32 channels per head
ROOT = Path(__file__).resolve().parents[1]  # the children import benchmarks/ and mfport from here


def _pair(kind: str, p: dict[str, int]) -> tuple[Callable[[], object], Callable[[], object], float]:
    """(PyTorch's call, XLA's call, GFLOP of the case or 0) on the same random inputs."""
    import numpy as np
    import tensorflow as tf
    import tf_keras
    import torch

    rng = np.random.default_rng(0)

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(size=shape).astype(np.float32)

    def xla(fn: Callable, *args: np.ndarray) -> Callable[[], object]:
        compiled, tensors = tf.function(fn, jit_compile=True), [tf.constant(a) for a in args]
        return lambda: compiled(*tensors).numpy()

    def eager(fn: Callable, *args: np.ndarray) -> Callable[[], object]:
        tensors = [torch.from_numpy(a) for a in args]

        def run() -> object:
            with torch.no_grad():
                return fn(*tensors).numpy()
        return run

    if kind in ("scores", "values"):
        b, n = p["batch"], p["tokens"]
        if kind == "scores":
            q, k = normal(b, n, HEAD_DIM), normal(b, n, HEAD_DIM)
            return (eager(lambda a, c: a @ c.transpose(-2, -1), q, k),
                    xla(lambda a, c: tf.matmul(a, c, transpose_b=True), q, k), 2e-9 * b * n * n * HEAD_DIM)
        a, v = normal(b, n, n), normal(b, n, HEAD_DIM)
        return eager(lambda x, y: x @ y, a, v), xla(tf.matmul, a, v), 2e-9 * b * n * n * HEAD_DIM
    if kind == "softmax":
        scores, bias = normal(p["batch"], p["heads"], p["tokens"], p["tokens"]), normal(p["heads"], p["tokens"],
                                                                                        p["tokens"])
        return (eager(lambda s, c: (s + c[None]).softmax(-1), scores, bias),
                xla(lambda s, c: tf.nn.softmax(s + c[None], -1), scores, bias), 0.0)
    if kind == "layer_norm":
        x = normal(p["tokens"], p["channels"])
        torch_norm = torch.nn.LayerNorm(p["channels"], eps=1e-5)
        keras_norm = tf_keras.layers.LayerNormalization(epsilon=1e-5)
        keras_norm.build((None, p["channels"]))
        return eager(torch_norm, x), xla(keras_norm, x), 0.0
    if kind == "group_norm":
        x = normal(1, p["size"], p["size"], p["channels"])
        torch_norm = torch.nn.GroupNorm(32, p["channels"], eps=1e-5)
        keras_norm = tf_keras.layers.GroupNormalization(32, epsilon=1e-5)
        keras_norm.build(x.shape)
        return eager(lambda t: torch_norm(t.permute(0, 3, 1, 2)), x), xla(keras_norm, x), 0.0
    if kind == "gelu":
        x = normal(p["tokens"], p["channels"])
        return (eager(torch.nn.functional.gelu, x), xla(lambda t: tf.nn.gelu(t, approximate=False), x), 0.0)
    if kind == "dense":
        x, w = normal(p["tokens"], p["channels"]), normal(p["channels"], p["out"])
        return eager(torch.matmul, x, w), xla(tf.matmul, x, w), 2e-9 * p["tokens"] * p["channels"] * p["out"]
    return _swin_pair(kind, p, normal, eager, xla)


def _swin_pair(kind: str, p: dict[str, int], normal: Callable, eager: Callable, xla: Callable
               ) -> tuple[Callable[[], object], Callable[[], object], float]:
    """A shifted block, or its window attention, of the reference and of the TF model (random weights)."""
    from mfport.tf_maskformer.modeling import swin as tf_swin
    from mfport.torch_reference import swin as torch_swin

    dim, heads, window, size = p["dim"], p["heads"], p["window"], p["size"]
    shift, padded = window // 2, size + (-size) % window
    tf_block = tf_swin.SwinTransformerBlock(dim, heads, window, shift, 4.0, 0.0, 1e-5)
    torch_block = torch_swin.SwinTransformerBlock(dim, heads, window, shift, 4.0, 0.0, 1e-5).eval()
    tf_mask = tf_swin.shifted_window_mask(padded, padded, window, shift)
    torch_mask = torch_swin.shifted_window_mask(padded, padded, window, shift)
    if kind == "block":
        x = normal(1, size * size, dim)
        torch_call = eager(lambda t: torch_block(t, torch_mask, (size, size)), x)
        return torch_call, xla(lambda t: tf_block(t, tf_mask, hw=(size, size)), x), 0.0
    windows = normal((padded // window) ** 2, window * window, dim)
    tf_block(normal(1, size * size, dim), tf_mask, hw=(size, size))  # builds the attention's variables
    torch_call = eager(lambda t: torch_block.attn(t, torch_mask), windows)
    return torch_call, xla(lambda t: tf_block.attn(t, tf_mask), windows), 0.0


def time_cases(names: list[str], repeats: int) -> dict[str, dict[str, object]]:
    results = {}
    for name, what, kind, params in CASES:
        if name not in names:
            continue
        torch_call, xla_call, gflop = _pair(kind, params)
        timed = interleaved_medians({"pytorch": torch_call, "tf_xla": xla_call}, repeats)
        row: dict[str, object] = {"what": what, "shape": params, "modes": timed,
                                  "xla_to_pytorch": timed["tf_xla"]["median_s"] / timed["pytorch"]["median_s"]}
        if gflop:
            row["gflop_per_s"] = {mode: gflop / t["median_s"] for mode, t in timed.items()}
        results[name] = row
        print(f"{name:32s}", "  ".join(f"{m} {t['median_s'] * 1e3:7.2f} ms" for m, t in timed.items()),
              f"  ratio {row['xla_to_pytorch']:.2f}", flush=True)
    return results


PROBE_SNIPPET = """
import statistics, sys, time
import numpy as np, tensorflow as tf
from benchmarks.common import pin_threads
pin_threads(int(sys.argv[2]))
if sys.argv[1] == "batched_product":
    a = tf.constant(np.ones((8, 49, 32), np.float32))
    print(tf.function(lambda x: tf.matmul(x, x, transpose_b=True), jit_compile=True)(a).shape)
else:
    from mfport.core.presets import get_preset
    from mfport.tf_maskformer.modeling.factory import build_maskformer
    model = build_maskformer(get_preset("swin_t_ade20k"))
    x = tf.constant(np.random.default_rng(0).normal(size=(1, 512, 512, 3)).astype(np.float32))
    forward = tf.function(lambda v: model(v, training=False)["pred_masks"], jit_compile=True)
    forward(x).numpy()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        forward(x).numpy()
        times.append(time.perf_counter() - start)
    print("MEDIAN_S", statistics.median(times))
"""


def _probe(flag: str, program: str, threads: int) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE_SNIPPET, program, str(threads)], capture_output=True, text=True,
                          timeout=900, cwd=ROOT, env={**os.environ, "XLA_FLAGS": flag, "TF_CPP_MIN_LOG_LEVEL": "2"})
    # A run that worked says so on stdout; one that failed, on stderr.
    said = done.stdout if done.returncode == 0 and done.stdout.strip() else done.stderr
    lines = [line for line in said.splitlines() if line.strip()]
    medians = [float(line.split()[1]) for line in lines if line.startswith("MEDIAN_S")]
    row: dict[str, object] = {"flag": flag or "(none)", "program": program, "exit_code": done.returncode,
                              "last_line": lines[-1][:300] if lines else "",
                              "forward_median_s": medians[0] if medians else None}
    print(f"{row['flag']:28s} {program:16s} exit {done.returncode:4d}  "
          + (f"forward {medians[0]:.3f} s" if medians else str(row["last_line"])[:100]), flush=True)
    return row


def probe_flags(threads: int, rounds: int = 2) -> list[dict[str, object]]:
    """XLA:CPU's alternative kernels (oneDNN, XNNPACK; off by default), each in a child process with the flag set:
    a batched product (what window attention runs), and the Swin-T forward (512x512, batch 1, median of 5 after
    compiling) in `rounds` alternating passes with the same forward without a flag (one process per run, so the
    VM's drift between processes shows in the spread). Per run: exit code (negative: the signal that killed it),
    last line, forward seconds."""
    flags = ("", "--xla_cpu_use_onednn=true", "--xla_cpu_use_xnnpack=true")
    rows = [_probe(flag, "batched_product", threads) for flag in flags if flag]
    for _ in range(rounds):
        rows += [_probe(flag, "swin_t_forward", threads) for flag in flags]
    return rows


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=[c[0] for c in CASES], help="names of CASES to run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--probe-flags", action=argparse.BooleanOptionalAction, default=True,
                        help="try XLA:CPU's oneDNN and XNNPACK kernels in child processes")
    args = parser.parse_args(argv)
    pin_threads(args.threads)
    result: dict[str, object] = {"threads": args.threads, "cases": time_cases(args.cases, args.repeats)}
    if args.probe_flags:
        result["alternative_kernels"] = probe_flags(args.threads)
    write_result("xla_cpu_kernels", result)
    return result


if __name__ == "__main__":
    main()
