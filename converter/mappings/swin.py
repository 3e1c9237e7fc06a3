"""Swin backbone (the original's names, mask_former/modeling/backbone/swin.py) -> tf_maskformer SwinTransformer.

The packed qkv [3C, C] (rows q | k | v, heads major inside each) splits into per-head query/key/value kernels
[C, heads, head_dim], as the decoder's in_proj does; the relative position index buffers are no variables:
each is checked against the index recomputed from the preset's window size and regenerated on the way back.
"""

from __future__ import annotations

from mfport.converter.rules import (
    IDENTITY,
    IN_PROJ_SPLIT,
    LINEAR_TRANSPOSE,
    NOT_A_VARIABLE,
    Derived,
    Rule,
    conv,
    linear,
    norm,
)
from mfport.core.presets import MaskFormerPreset
from mfport.core.swin import relative_position_index

SRC = "backbone"
DST = "backbone"
BLOCK = "layers.{stage:\\d+}.blocks.{block:\\d+}"
BLOCK_DST = "layers/{stage}/blocks/{block}"
INDEX = f"{SRC}.{BLOCK}.attn.relative_position_index"

RULES: tuple[Rule, ...] = (
    *conv(f"{SRC}.patch_embed.proj", f"{DST}/patch_embed/proj", bias=True),
    *norm(f"{SRC}.patch_embed.norm", f"{DST}/patch_embed/norm"),
    *norm(f"{SRC}.{BLOCK}.{{ln:norm[12]}}", f"{DST}/{BLOCK_DST}/{{ln}}"),
    *(Rule(f"{SRC}.{BLOCK}.attn.qkv.{p}", tuple(f"{DST}/{BLOCK_DST}/attn/{n}/{t}" for n in ("query", "key", "value")),
           IN_PROJ_SPLIT) for p, t in (("weight", "kernel"), ("bias", "bias"))),
    *linear(f"{SRC}.{BLOCK}.attn.proj", f"{DST}/{BLOCK_DST}/attn/proj"),
    Rule(f"{SRC}.{BLOCK}.attn.relative_position_bias_table",
         (f"{DST}/{BLOCK_DST}/attn/relative_position_bias_table",), IDENTITY),
    Rule(INDEX, (), NOT_A_VARIABLE),
    *linear(f"{SRC}.{BLOCK}.mlp.{{fc:fc[12]}}", f"{DST}/{BLOCK_DST}/mlp/{{fc}}"),
    *norm(f"{SRC}.layers.{{stage:\\d+}}.downsample.norm", f"{DST}/layers/{{stage}}/downsample/norm"),
    Rule(f"{SRC}.layers.{{stage:\\d+}}.downsample.reduction.weight",
         (f"{DST}/layers/{{stage}}/downsample/reduction/kernel",), LINEAR_TRANSPOSE),
    *norm(f"{SRC}.{{ln:norm[0-3]}}", f"{DST}/{{ln}}"),
)


def _index_keys(preset: MaskFormerPreset) -> list[str]:
    if preset.backbone.kind != "swin":
        return []
    return [f"{SRC}.layers.{stage}.blocks.{block}.attn.relative_position_index"
            for stage, depth in enumerate(preset.backbone.depths) for block in range(depth)]


def _window(preset: MaskFormerPreset) -> str:
    return f"the index of a {preset.backbone.window_size}x{preset.backbone.window_size} window"


DERIVED = (Derived(INDEX, lambda preset: relative_position_index(preset.backbone.window_size), _index_keys, _window),)
