"""Independent shape arithmetic for the TF tests."""

from __future__ import annotations


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def stride_sizes(size: int) -> dict[str, int]:
    """Spatial size after stem (conv 7/2/3 + pool 3/2/1) and each stride-2 stage (3x3/2 pad 1)."""
    res2 = conv_out(conv_out(size, 7, 2, 3), 3, 2, 1)
    res3 = conv_out(res2, 3, 2, 1)
    res4 = conv_out(res3, 3, 2, 1)
    return {"res2": res2, "res3": res3, "res4": res4, "res5": conv_out(res4, 3, 2, 1)}


def padded(size: int, divisor: int) -> int:
    return -(-size // divisor) * divisor if divisor > 1 else size
