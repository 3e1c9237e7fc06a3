"""MaskFormer's TransformerPredictor: queries decoded against the image features, class and mask heads.

Names follow the original (query_embed, input_proj, transformer.decoder.layers.N, transformer.decoder.norm,
class_embed, mask_embed.layers.N). The predictor's own transformer has 0 encoder layers, so its
"memory" is the (projected) input feature map itself.
"""

from __future__ import annotations

import torch
from torch import nn

from mfport.core.presets import MaskFormerPreset
from mfport.torch_reference.backbone import Conv2d
from mfport.torch_reference.position_encoding import PositionEmbeddingSine
from mfport.torch_reference.transformer_layers import TransformerDecoderLayer


class MLP(nn.Module):
    """Linear layers with ReLU between them (not after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))
        self.activations = nn.ModuleList(nn.ReLU() for _ in range(num_layers - 1))  # no weights (see parity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = self.activations[index](x)
        return x


class TransformerDecoder(nn.Module):
    """Decoder layers whose every output passes through the shared `norm` (deep supervision)."""

    def __init__(self, preset: MaskFormerPreset) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            TransformerDecoderLayer(preset.hidden_dim, preset.nheads, preset.dim_feedforward,
                                    preset.dropout, preset.norm_eps)
            for _ in range(preset.dec_layers)])
        self.norm = nn.LayerNorm(preset.hidden_dim, eps=preset.norm_eps)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor) -> torch.Tensor:
        """Returns the normed hidden states of every layer: [num_layers, Q, B, C]."""
        intermediate = []
        output = tgt
        for layer in self.layers:
            output = layer(output, memory, pos=pos, query_pos=query_pos)
            intermediate.append(self.norm(output))
        return torch.stack(intermediate)


class PredictorTransformer(nn.Module):
    """Holds the decoder under the original's `transformer.decoder` path."""

    def __init__(self, preset: MaskFormerPreset) -> None:
        super().__init__()
        self.decoder = TransformerDecoder(preset)

    def forward(self, src: torch.Tensor, query_embed: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """src, pos: [B, C, H, W]; query_embed: [Q, C] -> hidden states [num_layers, B, Q, C]."""
        batch = src.shape[0]
        memory = src.flatten(2).permute(2, 0, 1)
        pos = pos.flatten(2).permute(2, 0, 1)
        query_pos = query_embed.unsqueeze(1).repeat(1, batch, 1)
        tgt = torch.zeros_like(query_pos)  # the decoder input starts at zeros
        return self.decoder(tgt, memory, pos=pos, query_pos=query_pos).transpose(1, 2)


class TransformerPredictor(nn.Module):
    def __init__(self, preset: MaskFormerPreset) -> None:
        super().__init__()
        self.pe_layer = PositionEmbeddingSine(preset.hidden_dim // 2, normalize=True)
        self.transformer = PredictorTransformer(preset)
        self.query_embed = nn.Embedding(preset.num_queries, preset.hidden_dim)
        if preset.has_predictor_input_proj:
            self.input_proj = Conv2d(preset.predictor_in_channels, preset.hidden_dim, kernel_size=1)
        else:
            self.input_proj = nn.Identity()
        self.class_embed = nn.Linear(preset.hidden_dim, preset.num_classes + 1)  # "no object" last
        self.mask_embed = MLP(preset.hidden_dim, preset.hidden_dim, preset.mask_dim, 3)
        self.deep_supervision = preset.deep_supervision

    def forward(self, x: torch.Tensor, mask_features: torch.Tensor) -> dict[str, object]:
        pos = self.pe_layer(x)
        hidden_states = self.transformer(self.input_proj(x), self.query_embed.weight, pos)
        outputs_class = self.class_embed(hidden_states)  # [L, B, Q, K+1]
        mask_embed = self.mask_embed(hidden_states)  # [L, B, Q, C]
        outputs_masks = torch.einsum("lbqc,bchw->lbqhw", mask_embed, mask_features)
        out: dict[str, object] = {"pred_logits": outputs_class[-1], "pred_masks": outputs_masks[-1]}
        if self.deep_supervision:
            out["aux_outputs"] = [{"pred_logits": c, "pred_masks": m}
                                  for c, m in zip(outputs_class[:-1], outputs_masks[:-1], strict=True)]
        return out
