"""MaskFormer pixel decoders: BasePixelDecoder (FPN-like) and TransformerEncoderPixelDecoder (+6 Enc).

Module names equal the original's (adapter_i / layer_i / mask_features / input_proj /
transformer.encoder.layers.N), so the state dict matches checkpoints key for key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mfport.core.presets import MaskFormerPreset
from mfport.torch_reference.backbone import Conv2d
from mfport.torch_reference.position_encoding import PositionEmbeddingSine
from mfport.torch_reference.transformer_layers import TransformerEncoderLayer

IN_FEATURES = ("res2", "res3", "res4", "res5")


def _group_norm(preset: MaskFormerPreset) -> nn.GroupNorm:
    return nn.GroupNorm(preset.norm_groups, preset.conv_dim, eps=preset.norm_eps)


class BasePixelDecoder(nn.Module):
    """layer_4 on res5, then top-down: y = layer_i(adapter_i(res_i) + nearest_resize(y))."""

    def __init__(self, preset: MaskFormerPreset, top_in_channels: int | None = None) -> None:
        super().__init__()
        dim = preset.conv_dim
        channels = preset.backbone_channels
        top_in_channels = channels[-1] if top_in_channels is None else top_in_channels
        # Registration order adapter_1, layer_1, ..., layer_4, mask_features, as the original.
        for index, in_channels in enumerate(channels):
            if index == len(channels) - 1:
                self.add_module(f"layer_{index + 1}", Conv2d(
                    top_in_channels, dim, kernel_size=3, padding=1, bias=False,
                    norm=_group_norm(preset), activation=nn.ReLU()))
            else:
                self.add_module(f"adapter_{index + 1}", Conv2d(
                    in_channels, dim, kernel_size=1, bias=False, norm=_group_norm(preset)))
                self.add_module(f"layer_{index + 1}", Conv2d(
                    dim, dim, kernel_size=3, padding=1, bias=False, norm=_group_norm(preset),
                    activation=nn.ReLU()))
        self.mask_features = Conv2d(dim, preset.mask_dim, kernel_size=3, padding=1)

    def top_down(self, features: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """From the stride-32 output y down to stride 4: lateral + nearest-upsampled y, then layer_i."""
        for index in (3, 2, 1):
            lateral = getattr(self, f"adapter_{index}")(features[IN_FEATURES[index - 1]])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{index}")(y)
        return y

    def forward_features(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None]:
        y = self.layer_4(features["res5"])
        return self.mask_features(self.top_down(features, y)), None


class TransformerEncoderOnly(nn.Module):
    """The encoder stack of the "+6 Enc" decoder (post-norm, no final norm)."""

    def __init__(self, preset: MaskFormerPreset) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([
            TransformerEncoderLayer(preset.conv_dim, preset.nheads, preset.dim_feedforward,
                                    preset.dropout, preset.norm_eps)
            for _ in range(preset.pixel_decoder_enc_layers)])

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = src.shape
        x = src.flatten(2).permute(2, 0, 1)
        pos = pos.flatten(2).permute(2, 0, 1)
        for layer in self.encoder.layers:
            x = layer(x, pos)
        return x.permute(1, 2, 0).reshape(batch, channels, height, width)


class TransformerEncoderPixelDecoder(BasePixelDecoder):
    """input_proj + sine PE + encoder on res5; the predictor receives the ENCODER OUTPUT."""

    def __init__(self, preset: MaskFormerPreset) -> None:
        super().__init__(preset, top_in_channels=preset.conv_dim)  # layer_4 is 256 -> 256 here
        self.input_proj = Conv2d(preset.backbone_channels[-1], preset.conv_dim, kernel_size=1)
        self.transformer = TransformerEncoderOnly(preset)
        self.pe_layer = PositionEmbeddingSine(preset.conv_dim // 2, normalize=True)

    def forward_features(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.input_proj(features["res5"])
        encoder_output = self.transformer(x, self.pe_layer(x))
        y = self.layer_4(encoder_output)
        return self.mask_features(self.top_down(features, y)), encoder_output


def build_pixel_decoder(preset: MaskFormerPreset) -> BasePixelDecoder:
    if preset.pixel_decoder == "transformer_encoder":
        return TransformerEncoderPixelDecoder(preset)
    return BasePixelDecoder(preset)
