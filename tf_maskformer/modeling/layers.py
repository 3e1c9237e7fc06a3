"""Layers where numerical parity with PyTorch forces hand-written code, and the XLA-only forms that avoid
XLA-CPU's slow kernels (each says why), NHWC throughout."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras
from tf_keras.src.utils import control_flow_util


def compiling_with_xla() -> bool:
    """True while tracing inside an XLA-compiled function (jit_compile=True, TPU replicas): the check
    tf_keras's own backend uses to pick XLA-friendly formulations."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def compiling_with_xla_on_cpu() -> bool:
    """Tracing for XLA on a machine without GPU or TPU, where XLA runs convolutions with Eigen's kernels."""
    return (compiling_with_xla() and not tf.config.list_logical_devices("GPU")
            and not tf.config.list_logical_devices("TPU"))


def winograd_conv3x3(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """VALID 3x3 stride-1 convolution by Winograd's F(2x2, 3x3) (Lavin & Gray 2016): [B,H+2,W+2,C] ->
    [B,H,W,O] as 16 matmuls of (4x4 input tile transform) x (transformed kernel), 2.25x fewer products.

    For XLA on CPU only (see Conv2DNormAct). The transforms only add, subtract and halve: values and both
    gradients are as accurate as torch's float32 conv (256->256 at 64x64: 8.0e-7 vs 2.2e-6 max relative
    error against float64; tested). H, W and C must be static.
    """
    _, padded_h, padded_w, channels = x.shape
    out_h, out_w = padded_h - 2, padded_w - 2
    tiles_h, tiles_w = -(-out_h // 2), -(-out_w // 2)
    # Odd sizes: one zero row/column more so every 2x2 output tile has its 4x4 input tile.
    x = tf.pad(x, [[0, 0], [0, 2 * tiles_h + 2 - padded_h], [0, 2 * tiles_w + 2 - padded_w], [0, 0]])

    def input_transform(t: tf.Tensor, axis: int, tiles: int) -> list[tf.Tensor]:
        # B^T d for each tile d0..d3 (tiles overlap by 2): [d0 - d2, d1 + d2, d2 - d1, d1 - d3].
        d = [t[(slice(None),) * axis + (slice(k, k + 2 * tiles, 2),)] for k in range(4)]
        return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]

    def kernel_transform(g: tf.Tensor) -> tf.Tensor:  # G g along axis 0: [g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2]
        return tf.stack([g[0], (g[0] + g[1] + g[2]) * 0.5, (g[0] - g[1] + g[2]) * 0.5, g[2]])

    rows = input_transform(x, 1, tiles_h)
    tiles = tf.stack([v for row in rows for v in input_transform(row, 2, tiles_w)])  # [16,B,th,tw,C]
    tiles = tf.reshape(tiles, [16, -1, channels])
    u = tf.transpose(kernel_transform(tf.transpose(kernel_transform(kernel), [1, 0, 2, 3])), [1, 0, 2, 3])
    products = tf.matmul(tiles, tf.reshape(u, [16, channels, -1]))  # [16, tiles, O]
    # Output transform A^T m A (A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]) as one [4, 16] matmul (kron(A^T, A^T))
    # rather than elementwise: XLA fuses elementwise sums into every consumer, and a consumer reading
    # channel-major (the mask head's einsum) then re-gathers the 9 products per pixel at a 1 KB stride.
    a_t = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
    y = tf.matmul(tf.constant(np.kron(a_t, a_t)), tf.reshape(products, [16, -1]))
    # y[2i + j] holds output pixels (2p + i, 2q + j): interleave the four phases.
    y = tf.transpose(tf.reshape(y, [2, 2, -1, tiles_h, tiles_w, kernel.shape[-1]]), [2, 3, 0, 4, 1, 5])
    y = tf.reshape(y, [-1, 2 * tiles_h, 2 * tiles_w, kernel.shape[-1]])
    return y[:, :out_h, :out_w]


class FrozenBatchNorm(tf_keras.layers.Layer):
    """detectron2 FrozenBatchNorm2d: x * scale + shift from four non-trainable weights (PyTorch names).

    Hand-written: Keras BatchNormalization defaults to eps 1e-3 and updates its statistics in training.
    """

    def __init__(self, eps: float = 1e-5, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.eps = eps

    def build(self, input_shape: tf.TensorShape) -> None:
        channels = int(input_shape[-1])
        init = {"weight": "ones", "bias": "zeros", "running_mean": "zeros", "running_var": "ones"}
        for name, initializer in init.items():
            setattr(self, name, self.add_weight(name=name, shape=(channels,), initializer=initializer,
                                                trainable=False))
        super().build(input_shape)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        scale = self.weight * tf.math.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * tf.cast(scale, x.dtype) + tf.cast(shift, x.dtype)


class Conv2DNormAct(tf_keras.layers.Conv2D):
    """detectron2's Conv2d (conv, optional norm, optional ReLU) with PyTorch's SYMMETRIC zero padding.

    Hand-written padding: Keras padding="same" pads bottom/right only on stride-2 convs.
    Variables: `kernel` (HWIO), `bias` if any, and the norm's under `norm/`, as in the original.
    """

    def __init__(self, filters: int, kernel_size: int, stride: int = 1, padding: int = 0, use_bias: bool = False,
                 norm: tf_keras.layers.Layer | None = None, activation: bool = False, **kwargs: object) -> None:
        super().__init__(filters, kernel_size, strides=stride, padding="valid", use_bias=use_bias, **kwargs)
        self.torch_padding = padding
        self.norm = norm
        self.relu = activation

    def convolution_op(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        if self._winograd_pays_off(inputs):
            return winograd_conv3x3(inputs, kernel)
        if self.kernel_size != (1, 1) or not compiling_with_xla():
            return super().convolution_op(inputs, kernel)
        # Under XLA a 1x1 convolution runs as one matmul (the same products and sums): XLA on CPU compiles
        # a 1x1 conv's filter gradient 3-5x slower than this dot's (ResNet-50 fwd+bwd 1.37 s -> 0.95 s), and
        # XLA on TPU rewrites 1x1 convs into dots anyway. Outside XLA, TF's oneDNN conv is as fast and sums
        # its filter gradient more accurately (2.4e-7 vs 6e-7 relative), which gradient parity feels.
        stride = self.strides[0]
        if stride > 1:
            inputs = inputs[:, ::stride, ::stride, :]
        shape = tf.shape(inputs)
        outputs = tf.matmul(tf.reshape(inputs, [-1, inputs.shape[-1]]), tf.reshape(kernel, kernel.shape[2:]))
        return tf.reshape(outputs, tf.concat([shape[:-1], [self.filters]], 0))

    def _winograd_pays_off(self, inputs: tf.Tensor) -> bool:
        """XLA on CPU, float32, a 3x3 stride-1 conv of >= 128 channels in and out on >= 32x32 pixels (static
        H, W, C): there Winograd F(2x2,3x3) beats XLA-CPU's Eigen conv (256->256 at 128x128: forward 50 -> 32
        ms at batch 1, forward+backward 299 -> 200 ms at batch 2); on 64 channels (res2) or 16x16 pixels
        (res5) its transforms cost more than the products they save. TPUs and GPUs keep their own convs."""
        height, width, channels = inputs.shape[1:]
        return (self.kernel_size == (3, 3) and self.strides == (1, 1) and self.dilation_rate == (1, 1)
                and inputs.dtype == tf.float32 and None not in (height, width, channels)
                and channels >= 128 and self.filters >= 128 and (height - 2) * (width - 2) >= 32 * 32
                and compiling_with_xla_on_cpu())

    def call(self, x: tf.Tensor) -> tf.Tensor:
        if self.torch_padding:
            p = self.torch_padding
            x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        x = super().call(x)
        if self.norm is not None:
            x = self.norm(x)
        return tf.nn.relu(x) if self.relu else x


def group_norm(groups: int, eps: float, name: str = "norm") -> tf_keras.layers.GroupNormalization:
    """GroupNorm(32, 256) of the original: eps 1e-5 (Keras defaults to 1e-3)."""
    return tf_keras.layers.GroupNormalization(groups=groups, axis=-1, epsilon=eps, name=name)


def layer_norm(eps: float, name: str) -> tf_keras.layers.LayerNormalization:
    return tf_keras.layers.LayerNormalization(axis=-1, epsilon=eps, name=name)


def max_pool_3x3_s2_p1(x: tf.Tensor) -> tf.Tensor:
    """PyTorch max_pool2d(k=3, s=2, p=1): pads one -inf row/column on EVERY side.

    Hand-written: "SAME" pooling puts the extra padding bottom/right only, shifting every window.
    """
    x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=float("-inf"))
    if not compiling_with_xla():
        return tf.nn.max_pool2d(x, ksize=3, strides=2, padding="VALID")
    # Under XLA, the maximum of the window's nine strided views: XLA on CPU runs max-pool's backward
    # (select-and-scatter) ~4x slower than these selects. Ties go to the first view, as in PyTorch.
    out_h, out_w = (tf.shape(x)[1] - 3) // 2 + 1, (tf.shape(x)[2] - 3) // 2 + 1
    pooled = None
    for i in range(3):
        for j in range(3):
            view = x[:, i:i + 2 * out_h - 1:2, j:j + 2 * out_w - 1:2, :]
            pooled = view if pooled is None else tf.maximum(pooled, view)
    return pooled


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


def bilinear_resize(x: tf.Tensor, size: tuple[int, int] | tf.Tensor) -> tf.Tensor:
    """Bilinear, half-pixel centres, no antialiasing: PyTorch's interpolate(align_corners=False)."""
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
