"""Convolution and pooling as the layers call them, with the platform-specific forms and their routing.

Layers say which op they want (conv2d, max_pool_3x3_s2_p1); this module decides how it runs:
- under XLA (jit_compile, TPU replicas), a 1x1 convolution is one matmul: XLA on CPU compiles a 1x1 conv's
  filter gradient 3-5x slower than this dot's (ResNet-50 fwd+bwd 1.37 s -> 0.95 s), and XLA on TPU rewrites
  1x1 convs into dots anyway;
- under XLA on a CPU (no GPU or TPU), a wide 3x3 stride-1 convolution is Winograd's F(2x2, 3x3);
- under XLA, the stem's 3x3/2 max-pool is the maximum of nine strided views (select-and-scatter, its XLA
  backward, is ~4x slower on CPU);
- everywhere else TF's own kernels run (oneDNN on CPU: as fast, and it sums a 1x1 filter gradient more
  accurately, 2.4e-7 vs 6e-7 relative, which gradient parity notices).
Each form computes the same products and sums as the convolution it replaces; the tests compare each with
torch's values and gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf
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


def winograd_pays_off(inputs: tf.Tensor, kernel_size: tuple[int, int], strides: tuple[int, int],
                      dilation: tuple[int, int], filters: int) -> bool:
    """XLA on CPU, float32, a 3x3 stride-1 undilated conv of >= 128 channels in and out on >= 32x32 pixels
    (static H, W, C): there Winograd F(2x2,3x3) beats XLA-CPU's Eigen conv (256->256 at 128x128: forward
    50 -> 32 ms at batch 1, forward+backward 299 -> 200 ms at batch 2); on 64 channels (res2) or 16x16 pixels
    (res5) its transforms cost more than the products they save. TPUs and GPUs keep their own convs."""
    height, width, channels = inputs.shape[1:]
    return (kernel_size == (3, 3) and strides == (1, 1) and dilation == (1, 1)
            and inputs.dtype == tf.float32 and None not in (height, width, channels)
            and channels >= 128 and filters >= 128 and (height - 2) * (width - 2) >= 32 * 32
            and compiling_with_xla_on_cpu())


def conv2d(inputs: tf.Tensor, kernel: tf.Tensor, strides: tuple[int, int], dilation: tuple[int, int],
           default: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """A VALID convolution (the caller pads as PyTorch does) of NHWC inputs with an HWIO kernel; `default`
    is TF's own convolution, used wherever no other form pays off."""
    kernel_size, filters = tuple(kernel.shape[:2]), int(kernel.shape[-1])
    if winograd_pays_off(inputs, kernel_size, strides, dilation, filters):
        return winograd_conv3x3(inputs, kernel)
    if kernel_size != (1, 1) or not compiling_with_xla():
        return default(inputs, kernel)
    stride = strides[0]
    if stride > 1:
        inputs = inputs[:, ::stride, ::stride, :]
    shape = tf.shape(inputs)
    outputs = tf.matmul(tf.reshape(inputs, [-1, inputs.shape[-1]]), tf.reshape(kernel, kernel.shape[2:]))
    return tf.reshape(outputs, tf.concat([shape[:-1], [filters]], 0))


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
