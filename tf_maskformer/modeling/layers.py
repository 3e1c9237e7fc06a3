"""Layers where numerical parity with PyTorch forces hand-written code (each says why), NHWC throughout.
How their convolutions run on each platform is the ops module's business."""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from mfport.tf_maskformer.modeling import ops


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
                 norm: tf_keras.layers.Layer | None = None, activation: bool = False, dilation: int = 1,
                 **kwargs: object) -> None:
        super().__init__(filters, kernel_size, strides=stride, padding="valid", use_bias=use_bias,
                         dilation_rate=dilation, **kwargs)
        self.torch_padding = padding
        self.norm = norm
        self.relu = activation

    def build(self, input_shape: tf.TensorShape) -> None:
        # Keras checks the VALID output of the shape it is built with; the convolution sees the padded input.
        shape = tf.TensorShape(input_shape).as_list()
        shape[1:3] = [None if size is None else size + 2 * self.torch_padding for size in shape[1:3]]
        super().build(tf.TensorShape(shape))

    def convolution_op(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        return ops.conv2d(inputs, kernel, self.strides, self.dilation_rate, default=super().convolution_op)

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
