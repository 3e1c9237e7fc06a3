"""Post-norm DETR transformer layers as MaskFormer uses them (nn.MultiheadAttention, packed q/k/v).

Attention is called with need_weights left at its default (True), as the original does: that keeps
PyTorch on its explicit softmax(QK^T)V path rather than the fused kernel, which rounds differently.
The FFN's ReLU is a module (`activation`, no weights: the state dict is the original's) so the parity harness
can find the gates float32 noise may flip.
"""

from __future__ import annotations

import torch
from torch import nn


def with_pos_embed(tensor: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return tensor if pos is None else tensor + pos


class TransformerEncoderLayer(nn.Module):
    """Self-attention + FFN; sequence-first tensors [L, B, C]."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.activation = nn.ReLU()
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.norm2 = nn.LayerNorm(d_model, eps=eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        q = k = with_pos_embed(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, value=src)[0]))
        src2 = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class TransformerDecoderLayer(nn.Module):
    """Self-attention over queries, cross-attention to the image, FFN; each followed by its norm."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.activation = nn.ReLU()
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.norm2 = nn.LayerNorm(d_model, eps=eps)
        self.norm3 = nn.LayerNorm(d_model, eps=eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor) -> torch.Tensor:
        q = k = with_pos_embed(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, value=tgt)[0]))
        tgt2 = self.multihead_attn(query=with_pos_embed(tgt, query_pos), key=with_pos_embed(memory, pos),
                                   value=memory)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))
