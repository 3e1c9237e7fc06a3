"""Hugging Face transformers MaskFormer (ResNet backbone, BasePixelDecoder) names -> original live names.

HF keeps q/k/v as separate projections (packed here into the original's in_proj, rows q|k|v) and its
ResNet uses BatchNorm (eval mode == FrozenBN; num_batches_tracked has no counterpart and is dropped).
The FPN's layers are ordered top-down (layers.0 acts on res4), the original's adapters bottom-up.
"""

from __future__ import annotations

import re

import numpy as np

from converter.checkpoint_io import CheckpointError
from converter.naming import compare_keys
from converter.rules import Rule

HF_PREFIXES = ("model.pixel_level_module.", "model.transformer_module.")
RESNET = "model.pixel_level_module.encoder"
FPN = "model.pixel_level_module.decoder"
DEC = "model.transformer_module.decoder.layers.{layer:\\d+}"
SRC_DEC = "sem_seg_head.predictor.transformer.decoder.layers.{layer}"

# HF pattern -> original live name (renames only: the transform is always identity).
RENAMES: tuple[tuple[str, str], ...] = (
    (f"{RESNET}.embedder.embedder.convolution.weight", "backbone.stem.conv1.weight"),
    (f"{RESNET}.embedder.embedder.normalization.{{p:weight|bias|running_mean|running_var}}",
     "backbone.stem.conv1.norm.{p}"),
    (f"{RESNET}.encoder.stages.{{stage:\\d+}}.layers.{{block:\\d+}}.shortcut.convolution.weight",
     "backbone.res{stage+2}.{block}.shortcut.weight"),
    (f"{RESNET}.encoder.stages.{{stage:\\d+}}.layers.{{block:\\d+}}.shortcut.normalization."
     "{p:weight|bias|running_mean|running_var}", "backbone.res{stage+2}.{block}.shortcut.norm.{p}"),
    (f"{RESNET}.encoder.stages.{{stage:\\d+}}.layers.{{block:\\d+}}.layer.{{conv:[0-2]}}.convolution.weight",
     "backbone.res{stage+2}.{block}.conv{conv+1}.weight"),
    (f"{RESNET}.encoder.stages.{{stage:\\d+}}.layers.{{block:\\d+}}.layer.{{conv:[0-2]}}.normalization."
     "{p:weight|bias|running_mean|running_var}", "backbone.res{stage+2}.{block}.conv{conv+1}.norm.{p}"),
    (f"{FPN}.fpn.stem.0.weight", "sem_seg_head.pixel_decoder.layer_4.weight"),
    (f"{FPN}.fpn.stem.1.{{p:weight|bias}}", "sem_seg_head.pixel_decoder.layer_4.norm.{p}"),
    (f"{FPN}.fpn.layers.{{level:[0-2]}}.proj.0.weight", "sem_seg_head.pixel_decoder.adapter_{3-level}.weight"),
    (f"{FPN}.fpn.layers.{{level:[0-2]}}.proj.1.{{p:weight|bias}}",
     "sem_seg_head.pixel_decoder.adapter_{3-level}.norm.{p}"),
    (f"{FPN}.fpn.layers.{{level:[0-2]}}.block.0.weight", "sem_seg_head.pixel_decoder.layer_{3-level}.weight"),
    (f"{FPN}.fpn.layers.{{level:[0-2]}}.block.1.{{p:weight|bias}}",
     "sem_seg_head.pixel_decoder.layer_{3-level}.norm.{p}"),
    (f"{FPN}.mask_projection.{{p:weight|bias}}", "sem_seg_head.pixel_decoder.mask_features.{p}"),
    ("model.transformer_module.queries_embedder.weight", "sem_seg_head.predictor.query_embed.weight"),
    ("model.transformer_module.input_projection.{p:weight|bias}", "sem_seg_head.predictor.input_proj.{p}"),
    (f"{DEC}.self_attn.o_proj.{{p:weight|bias}}", f"{SRC_DEC}.self_attn.out_proj.{{p}}"),
    (f"{DEC}.encoder_attn.o_proj.{{p:weight|bias}}", f"{SRC_DEC}.multihead_attn.out_proj.{{p}}"),
    (f"{DEC}.self_attn_layer_norm.{{p:weight|bias}}", f"{SRC_DEC}.norm1.{{p}}"),
    (f"{DEC}.encoder_attn_layer_norm.{{p:weight|bias}}", f"{SRC_DEC}.norm2.{{p}}"),
    (f"{DEC}.final_layer_norm.{{p:weight|bias}}", f"{SRC_DEC}.norm3.{{p}}"),
    (f"{DEC}.mlp.fc{{fc:[12]}}.{{p:weight|bias}}", f"{SRC_DEC}.linear{{fc}}.{{p}}"),
    ("model.transformer_module.decoder.layernorm.{p:weight|bias}",
     "sem_seg_head.predictor.transformer.decoder.norm.{p}"),
    ("class_predictor.{p:weight|bias}", "sem_seg_head.predictor.class_embed.{p}"),
    ("mask_embedder.{layer:[0-2]}.0.{p:weight|bias}", "sem_seg_head.predictor.mask_embed.layers.{layer}.{p}"),
    ("criterion.empty_weight", "criterion.empty_weight"),
)
# Separate q/k/v projections packed into the original's in_proj (rows [0:d]=q, [d:2d]=k, [2d:3d]=v).
PACKED: tuple[tuple[str, str], ...] = (
    (f"{DEC}.self_attn.{{proj:[qkv]}}_proj.{{p:weight|bias}}", f"{SRC_DEC}.self_attn.in_proj_{{p}}"),
    (f"{DEC}.encoder_attn.{{proj:[qkv]}}_proj.{{p:weight|bias}}", f"{SRC_DEC}.multihead_attn.in_proj_{{p}}"),
)
DROPPED = re.compile(r".*\.num_batches_tracked\Z")  # BatchNorm's counter: no counterpart in FrozenBN


def is_hf_state(tensors: dict[str, np.ndarray]) -> bool:
    return any(k.startswith(HF_PREFIXES) for k in tensors)


def _fill(template: str, fields: dict[str, str]) -> str:
    """Fill `{name}` and simple `{name+N}` / `{N-name}` index arithmetic from the matched fields."""
    def value(expr: str) -> str:
        if m := re.fullmatch(r"(\w+)\+(\d+)", expr):
            return str(int(fields[m.group(1)]) + int(m.group(2)))
        if m := re.fullmatch(r"(\d+)-(\w+)", expr):
            return str(int(m.group(1)) - int(fields[m.group(2)]))
        return fields[expr]
    return re.sub(r"\{([^{}]+)\}", lambda m: value(m.group(1)), template)


_RENAME_REGEXES = [(Rule(src, (), None).source_regex, dst) for src, dst in RENAMES]  # type: ignore[arg-type]
_PACKED_REGEXES = [(Rule(src, (), None).source_regex, dst) for src, dst in PACKED]  # type: ignore[arg-type]


def from_hf_state(tensors: dict[str, np.ndarray], source: str = "checkpoint") -> dict[str, np.ndarray]:
    """HF-named tensors -> original live names; every HF tensor consumed exactly once or an error."""
    state: dict[str, np.ndarray] = {}
    packed: dict[str, dict[str, np.ndarray]] = {}
    unexpected = {}
    for key, value in tensors.items():
        if DROPPED.match(key):
            continue
        for regex, template in _RENAME_REGEXES:
            if m := regex.match(key):
                state[_fill(template, m.groupdict())] = value
                break
        else:
            for regex, template in _PACKED_REGEXES:
                if m := regex.match(key):
                    packed.setdefault(_fill(template, m.groupdict()), {})[m.group("proj")] = value
                    break
            else:
                unexpected[key] = value
    for name, parts in packed.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise CheckpointError(f"{source}: {name} lacks its {'/'.join(missing)} projection(s)")
        state[name] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    if unexpected:
        mismatch = compare_keys(unexpected, {})
        raise CheckpointError(f"{source}: {len(unexpected)} Hugging Face tensors match no rule of the HF naming "
                              f"table; first '{next(iter(unexpected))}' ({mismatch.summary()})")
    return state
