"""ResNet-50/101 backbone as detectron2 builds it for MaskFormer (FrozenBN, stride in the 3x3 conv), with the
basic stem (build_resnet_backbone) or the DeepLab stem and res5 multi-grid of R101c (build_resnet_deeplab_backbone,
detectron2 projects/DeepLab/deeplab/resnet.py).

State-dict names equal detectron2's: `stem.conv1.{weight,norm.*}` (DeepLab: stem.conv1..conv3),
`res2.0.shortcut.*`, `res2.0.conv1.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mfport.core.presets import MaskFormerPreset, ResNetSpec


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all four stored as buffers."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            # detectron2 folds the statistics into a scale and shift when gradients flow ...
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)
        # ... and calls batch_norm in inference; the two differ only by float rounding.
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)


class Conv2d(nn.Conv2d):
    """detectron2's Conv2d: a convolution followed by an optional norm and activation."""

    def __init__(self, *args: object, norm: nn.Module | None = None,
                 activation: nn.Module | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class BasicStem(nn.Module):
    """7x7/2 conv (pad 3) + FrozenBN + ReLU, then 3x3/2 max-pool (pad 1)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, eps: float = 1e-5) -> None:
        super().__init__()
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False,
                            norm=FrozenBatchNorm2d(out_channels, eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DeepLabStem(nn.Module):
    """Three 3x3 convs (3 -> C/2 stride 2, C/2 -> C/2, C/2 -> C), each + FrozenBN + ReLU; then 3x3/2 max-pool.

    The original applies each ReLU after the conv module; here it is the module's own activation (no weights,
    same values), so a hook on stem.convN sees the activated output, as the TF stem's taps do.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 128, eps: float = 1e-5) -> None:
        super().__init__()
        half = out_channels // 2
        for index, (cin, cout, stride) in enumerate(((in_channels, half, 2), (half, half, 1), (half, out_channels, 1))):
            self.add_module(f"conv{index + 1}", Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False,
                                                       norm=FrozenBatchNorm2d(cout, eps), activation=nn.ReLU()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.conv2(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (strided, maybe dilated) -> 1x1, ReLU after conv1, conv2 and the residual sum."""

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, stride: int,
                 eps: float = 1e-5, dilation: int = 1) -> None:
        super().__init__()
        if in_channels != out_channels:
            self.shortcut = Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False,
                                   norm=FrozenBatchNorm2d(out_channels, eps))
        else:
            self.shortcut = None
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, bias=False,
                            norm=FrozenBatchNorm2d(bottleneck_channels, eps))
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, kernel_size=3, stride=stride,
                            padding=dilation, dilation=dilation, bias=False,
                            norm=FrozenBatchNorm2d(bottleneck_channels, eps))
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False,
                            norm=FrozenBatchNorm2d(out_channels, eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """Stem + res2..res5; returns {"res2": stride 4, ..., "res5": stride 32} feature maps (NCHW)."""

    STAGE_NAMES = ("res2", "res3", "res4", "res5")

    def __init__(self, spec: ResNetSpec, eps: float = 1e-5) -> None:
        super().__init__()
        if spec.stem == "deeplab":
            self.stem = DeepLabStem(out_channels=spec.stem_out_channels, eps=eps)
        else:
            self.stem = BasicStem(out_channels=spec.stem_out_channels, eps=eps)
        in_channels, bottleneck, out_channels = spec.stem_out_channels, 64, 256
        for index, (name, num_blocks) in enumerate(zip(self.STAGE_NAMES, spec.stage_blocks, strict=True)):
            first_stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                dilation = spec.res5_multi_grid[block_index] if name == "res5" else 1
                blocks.append(BottleneckBlock(in_channels, bottleneck, out_channels,
                                              stride=first_stride if block_index == 0 else 1, eps=eps,
                                              dilation=dilation))
                in_channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
            bottleneck *= 2
            out_channels *= 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        features = {}
        for name in self.STAGE_NAMES:
            x = getattr(self, name)(x)
            features[name] = x
        return features


def build_backbone(preset: MaskFormerPreset) -> nn.Module:
    """The preset's backbone: detectron2's ResNet or the original Swin Transformer."""
    if preset.backbone.kind == "swin":
        from mfport.torch_reference.swin import SwinTransformer

        return SwinTransformer(preset.backbone, eps=preset.norm_eps)
    return ResNet(preset.backbone, eps=preset.norm_eps)
