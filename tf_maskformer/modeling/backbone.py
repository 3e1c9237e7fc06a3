"""ResNet-50/101 as detectron2 builds it for MaskFormer: FrozenBN, stride on the 3x3 conv, NHWC; the basic
stem (one 7x7 conv) or the DeepLab stem of R101c (three 3x3 convs) with res5's multi-grid dilations."""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from mfport.core.presets import MaskFormerPreset, ResNetSpec
from mfport.tf_maskformer.modeling.layers import Conv2DNormAct, FrozenBatchNorm
from mfport.tf_maskformer.modeling.ops import max_pool_3x3_s2_p1
from mfport.tf_maskformer.modeling.taps import tap


def _conv_bn(filters: int, kernel_size: int, stride: int, padding: int, eps: float, relu: bool,
             name: str, dilation: int = 1) -> Conv2DNormAct:
    return Conv2DNormAct(filters, kernel_size, stride=stride, padding=padding, use_bias=False,
                         norm=FrozenBatchNorm(eps, name="norm"), activation=relu, dilation=dilation, name=name)


class BasicStem(tf_keras.layers.Layer):
    """conv1: 7x7/2 pad 3 + FrozenBN + ReLU; then max-pool 3x3/2 pad 1."""

    def __init__(self, out_channels: int, eps: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.conv1 = _conv_bn(out_channels, 7, 2, 3, eps, relu=True, name="conv1")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return max_pool_3x3_s2_p1(self.conv1(x))


class DeepLabStem(tf_keras.layers.Layer):
    """conv1 3x3/2 (C/2), conv2 3x3 (C/2), conv3 3x3 (C), each pad 1 + FrozenBN + ReLU; then max-pool 3x3/2."""

    def __init__(self, out_channels: int, eps: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        half = out_channels // 2
        self.convs = [_conv_bn(filters, 3, stride, 1, eps, relu=True, name=f"conv{index + 1}")
                      for index, (filters, stride) in enumerate(((half, 2), (half, 1), (out_channels, 1)))]

    def call(self, x: tf.Tensor) -> tf.Tensor:
        for index, conv in enumerate(self.convs):
            x = tap(f"backbone/stem/conv{index + 1}", conv(x))
        return max_pool_3x3_s2_p1(x)


class BottleneckBlock(tf_keras.layers.Layer):
    def __init__(self, in_channels: int, bottleneck: int, out_channels: int, stride: int, eps: float,
                 dilation: int = 1, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.shortcut = (_conv_bn(out_channels, 1, stride, 0, eps, relu=False, name="shortcut")
                         if in_channels != out_channels else None)
        self.conv1 = _conv_bn(bottleneck, 1, 1, 0, eps, relu=True, name="conv1")
        self.conv2 = _conv_bn(bottleneck, 3, stride, dilation, eps, relu=True, name="conv2", dilation=dilation)
        self.conv3 = _conv_bn(out_channels, 1, 1, 0, eps, relu=False, name="conv3")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return tf.nn.relu(out + shortcut)


class ResNetStage(tf_keras.layers.Layer):
    """res2..res5: blocks named "0", "1", ... as the original's nn.Sequential indices."""

    def __init__(self, num_blocks: int, in_channels: int, bottleneck: int, out_channels: int, first_stride: int,
                 eps: float, dilations: tuple[int, ...] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.blocks = []
        for index in range(num_blocks):
            self.blocks.append(BottleneckBlock(in_channels, bottleneck, out_channels,
                                               first_stride if index == 0 else 1, eps,
                                               dilation=dilations[index] if dilations else 1, name=str(index)))
            in_channels = out_channels

    def call(self, x: tf.Tensor) -> tf.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class ResNet(tf_keras.layers.Layer):
    """Returns {"res2": stride 4, ..., "res5": stride 32} NHWC feature maps."""

    STAGE_NAMES = ("res2", "res3", "res4", "res5")

    def __init__(self, spec: ResNetSpec, eps: float = 1e-5, **kwargs: object) -> None:
        super().__init__(**kwargs)
        stem = DeepLabStem if spec.stem == "deeplab" else BasicStem
        self.stem = stem(spec.stem_out_channels, eps, name="stem")
        self.stages = []
        in_channels, bottleneck, out_channels = spec.stem_out_channels, 64, 256
        for index, (name, num_blocks) in enumerate(zip(self.STAGE_NAMES, spec.stage_blocks, strict=True)):
            self.stages.append(ResNetStage(num_blocks, in_channels, bottleneck, out_channels, 1 if index == 0 else 2,
                                           eps, dilations=spec.res5_multi_grid if name == "res5" else None,
                                           name=name))
            in_channels, bottleneck, out_channels = out_channels, bottleneck * 2, out_channels * 2

    def call(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        x = tap("backbone/stem", self.stem(x))
        features = {}
        for name, stage in zip(self.STAGE_NAMES, self.stages, strict=True):
            x = tap(f"backbone/{name}", stage(x))
            features[name] = x
        return features


def build_backbone(preset: MaskFormerPreset) -> tf_keras.layers.Layer:
    """The preset's backbone, named "backbone" (the variable paths start maskformer/backbone/...)."""
    if preset.backbone.kind == "swin":
        from mfport.tf_maskformer.modeling.swin import SwinTransformer

        return SwinTransformer(preset.backbone, preset.norm_eps, name="backbone")
    return ResNet(preset.backbone, preset.norm_eps, name="backbone")
