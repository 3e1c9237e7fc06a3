"""Resizes with PyTorch's index and weight rules (tf.image.resize's differ or are slow where it matters)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _torch_nearest_indices(in_size: tf.Tensor, out_size: tf.Tensor) -> tf.Tensor:
    """PyTorch "nearest": src = min(floor(dst * (in / out)), in - 1) with the scale in float32."""
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    src = tf.cast(tf.floor(tf.cast(tf.range(out_size), tf.float32) * scale), tf.int32)
    return tf.minimum(src, tf.cast(in_size, tf.int32) - 1)


def nearest_resize_like_torch(x: tf.Tensor, size: tuple[tf.Tensor, tf.Tensor] | tf.Tensor) -> tf.Tensor:
    """Nearest resize of NHWC `x` to `size` (h, w) with PyTorch's index rule, for any sizes.

    Hand-written: tf.image.resize(method="nearest") uses half-pixel centres, which picks other source
    pixels whenever the ratio is not exactly 2 (inputs not divisible by 32).
    """
    in_shape = tf.shape(x)
    rows = _torch_nearest_indices(in_shape[1], size[0])
    cols = _torch_nearest_indices(in_shape[2], size[1])
    return tf.gather(tf.gather(x, rows, axis=1), cols, axis=2)


def is_own_size(shape_hw: tuple, size: tuple[int, int] | tf.Tensor) -> bool:
    """Whether a static (h, w) equals a static target size: a bilinear resize to its own size gives every output
    pixel its source pixel with weight 1 (and 0 on its neighbour), in both frameworks: the values unchanged, which
    tf.image.resize would still compute (~0.3 s for 100 masks at 512x512)."""
    static = isinstance(size, (tuple, list)) and all(isinstance(s, int) for s in size)
    return static and tuple(shape_hw) == tuple(size)


def bilinear_resize(x: tf.Tensor, size: tuple[int, int] | tf.Tensor) -> tf.Tensor:
    """Bilinear, half-pixel centres, no antialiasing: PyTorch's interpolate(align_corners=False)."""
    if is_own_size(x.shape[1:3], size):
        return x
    return tf.cast(tf.image.resize(x, size, method="bilinear", antialias=False), x.dtype)


def bilinear_weights_like_torch(out_size: int, in_size: int) -> np.ndarray:
    """[out, in] float32 matrix of PyTorch's bilinear (align_corners=False) weights along one axis.

    The arithmetic is PyTorch's: src = max(scale * (dst + 0.5) - 0.5, 0) with scale = in / out in float32,
    then weights 1 - frac and frac on rows floor(src) and floor(src) + 1 (clamped). PyTorch's CPU kernel
    evaluates src with one fused multiply-add; float64 then one rounding to float32 reproduces its weights
    exactly (plain float32 steps differ by up to 2e-6 for ratios like 37 -> 150).
    """
    scale = np.float32(in_size) / np.float32(out_size)
    centres = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)).astype(np.float64)
    src = np.maximum((np.float64(scale) * centres - 0.5).astype(np.float32), np.float32(0))
    first = np.minimum(src.astype(np.int64), in_size - 1)
    second = np.minimum(first + 1, in_size - 1)
    frac = (src - first.astype(np.float32)).astype(np.float32)
    weights = np.zeros((out_size, in_size), np.float32)
    np.add.at(weights, (np.arange(out_size), first), np.float32(1) - frac)
    np.add.at(weights, (np.arange(out_size), second), frac)
    return weights


def bilinear_resize_separable(x: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Bilinear resize of [N, h, w] maps (static h, w) as rows @ x @ cols^T with PyTorch's weights.

    Hand-written for speed: inside an XLA-compiled train step on CPU, tf.image.resize and its gradient
    take ~10x longer than these two small matmuls (measured per decoder layer in the set criterion).
    Values equal tf.image.resize's / PyTorch's to float32 rounding (the zero weights add exact zeros);
    on TPU the matmuls run at XLA's default float32 dot precision.
    """
    height, width = int(x.shape[1]), int(x.shape[2])
    rows = tf.constant(bilinear_weights_like_torch(size[0], height), x.dtype)
    cols = tf.constant(bilinear_weights_like_torch(size[1], width), x.dtype)
    return tf.einsum("nhj,wj->nhw", tf.einsum("hi,nij->nhj", rows, x), cols)
