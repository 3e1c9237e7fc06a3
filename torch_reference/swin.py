"""The Swin Transformer backbone of MaskFormer (mask_former/modeling/backbone/swin.py, D2SwinTransformer), with
its module and buffer names: patch_embed.{proj,norm}, layers.i.blocks.j.{norm1, attn.{qkv, proj,
relative_position_bias_table, relative_position_index}, norm2, mlp.{fc1, fc2}}, layers.i.downsample.{norm,
reduction}, norm0..norm3.

The numerics that matter (../shared/reference/SWIN.md), in the original's order:
- the patch embedding zero-pads right/bottom to a multiple of the patch size before its 4x4/4 conv;
- a block normalises first, THEN zero-pads to a multiple of the window (padded tokens take part in attention,
  unmasked), then rolls (odd blocks), partitions windows, attends, reverses, rolls back and crops;
- the shifted-window mask is built on the padded map from slices (0,-w), (-w,-s), (-s,None): -100 where the
  region ids of two tokens differ; the window never shrinks below w (a map smaller than w is padded up);
- q is multiplied by head_dim^-0.5 before q @ k^T; the relative position bias is gathered from its table;
- PatchMerging zero-pads odd sizes by one and concatenates x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2];
- each stage's output is normed by norm_i; the downsample consumes the un-normed tensor.
Stochastic depth (drop path, rate rising linearly to drop_path_rate over all blocks) acts in training only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mfport.core.presets import SwinSpec
from mfport.core.swin import relative_position_index


def shifted_window_mask(height: int, width: int, window: int, shift: int, device: torch.device | None = None
                        ) -> torch.Tensor:
    """[nW, w^2, w^2]: 0 between tokens of the same region of the padded, shifted map, -100 otherwise."""
    padded_h, padded_w = -(-height // window) * window, -(-width // window) * window
    regions = torch.zeros((padded_h, padded_w), device=device)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for row, h in enumerate(bounds):
        for col, w in enumerate(bounds):
            regions[h, w] = row * 3 + col
    ids = window_partition(regions[None, :, :, None], window).reshape(-1, window * window)
    mask = ids[:, None, :] - ids[:, :, None]
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, w, w, C], windows in batch-major, row-major order."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """[B * nW, w, w, C] -> [B, H, W, C]."""
    batch = windows.shape[0] // ((height // window) * (width // window))
    x = windows.reshape(batch, height // window, width // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, -1)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability p, scale the rest."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        # A persistent buffer, as in the released files (the converter checks a file's against this one).
        self.register_buffer("relative_position_index", torch.from_numpy(relative_position_index(window)))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: [B * nW, N, C]; mask: [nW, N, N] or None."""
        windows, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(windows, tokens, 3, self.heads, channels // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # q scaled BEFORE q @ k^T
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.reshape(tokens, tokens, -1).permute(2, 0, 1)[None]
        if mask is not None:
            count = mask.shape[0]
            attn = (attn.reshape(windows // count, count, self.heads, tokens, tokens) + mask[None, :, None]
                    ).reshape(-1, self.heads, tokens, tokens)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(windows, tokens, channels))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float, drop_path: float,
                 eps: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, window, heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """x: [B, H*W, C]; mask: the stage's shifted-window mask (used by shifted blocks only)."""
        height, width = hw
        batch, _, channels = x.shape
        shortcut = x
        x = self.norm1(x).reshape(batch, height, width, channels)
        pad_b, pad_r = (-height) % self.window, (-width) % self.window
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # after the norm: padded tokens are zeros, unmasked
        padded_h, padded_w = height + pad_b, width + pad_r
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(x, self.window).reshape(-1, self.window * self.window, channels)
        windows = self.attn(windows, mask if self.shift else None)
        x = window_reverse(windows.reshape(-1, self.window, self.window, channels), self.window, padded_h, padded_w)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x[:, :height, :width, :].reshape(batch, height * width, channels)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=eps)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        height, width = hw
        batch, _, channels = x.shape
        x = F.pad(x.reshape(batch, height, width, channels), (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.reshape(batch, -1, 4 * channels)))


class BasicLayer(nn.Module):
    """One stage: its blocks (even ones plain, odd ones shifted by w // 2) and the downsample after it."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, drop_paths: list[float],
                 downsample: bool, eps: float) -> None:
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, drop_paths[i], eps)
            for i in range(depth)])
        self.downsample = PatchMerging(dim, eps) if downsample else None

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = shifted_window_mask(*hw, self.window, self.window // 2, x.device).to(x.dtype)
        for block in self.blocks:
            x = block(x, mask, hw=hw)
        return x, (self.downsample(x, hw=hw) if self.downsample is not None else None)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int, eps: float) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, C, ceil(H/4), ceil(W/4)], zero-padded right/bottom first."""
        height, width = x.shape[-2:]
        x = self.proj(F.pad(x, (0, (-width) % self.patch, 0, (-height) % self.patch)))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SwinTransformer(nn.Module):
    """Returns {"res2": stride 4, ..., "res5": stride 32} NCHW maps, each through its stage's output norm."""

    def __init__(self, spec: SwinSpec, eps: float = 1e-5) -> None:
        super().__init__()
        self.spec = spec
        self.patch_embed = PatchEmbed(spec.patch_size, spec.embed_dim, eps)
        total = sum(spec.depths)
        rates = [spec.drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linspace(0, rate, total)
        self.layers = nn.ModuleList()
        for stage, (depth, heads) in enumerate(zip(spec.depths, spec.num_heads, strict=True)):
            first = sum(spec.depths[:stage])
            self.layers.append(BasicLayer(spec.channels[stage], depth, heads, spec.window_size, spec.mlp_ratio,
                                          rates[first:first + depth], stage < 3, eps))
        for stage, channels in enumerate(spec.channels):
            self.add_module(f"norm{stage}", nn.LayerNorm(channels, eps=eps))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.patch_embed(x)
        height, width = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        features = {}
        for stage, layer in enumerate(self.layers):
            out, down = layer(x, (height, width))
            normed = getattr(self, f"norm{stage}")(out.reshape(-1, height, width, out.shape[-1]))  # NHWC (a tap)
            features[f"res{stage + 2}"] = normed.permute(0, 3, 1, 2)
            if down is not None:
                x, height, width = down, (height + 1) // 2, (width + 1) // 2
        return features
