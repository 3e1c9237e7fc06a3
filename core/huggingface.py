"""Hugging Face transformers MaskFormer names <-> the original's live names (ResNet or Swin backbone,
BasePixelDecoder: the only decoder HF has).

HF keeps q/k/v as separate projections (packed here into the original's in_proj / qkv, rows q|k|v); its ResNet
uses BatchNorm (eval mode == FrozenBN; num_batches_tracked has no counterpart and is dropped); its Swin has an
unused final `model.layernorm` (dropped, and the conversion says so) and calls the per-stage output norms
`hidden_states_norms.i`. The FPN's layers are ordered top-down (layers.0 acts on res4), the original's adapters
bottom-up. The same tables run backwards (`to_hf_state`) for `mfport convert --to torch --naming huggingface`.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from mfport.core.errors import CheckpointError
from mfport.core.naming import compare_keys
from mfport.core.patterns import fill, pattern_regex

HF_PREFIXES = ("model.pixel_level_module.", "model.transformer_module.")
RESNET = "model.pixel_level_module.encoder"
SWIN = "model.pixel_level_module.encoder.model"
SWIN_BLOCK = f"{SWIN}.encoder.layers.{{stage:\\d+}}.blocks.{{block:\\d+}}"
BLOCK = "backbone.layers.{stage}.blocks.{block}"
FPN = "model.pixel_level_module.decoder"
DEC = "model.transformer_module.decoder.layers.{layer:\\d+}"
SRC_DEC = "sem_seg_head.predictor.transformer.decoder.layers.{layer}"
P = "{p:weight|bias}"
BN = "{p:weight|bias|running_mean|running_var}"

# HF pattern -> original live name (renames only: the transform is always identity).
RENAMES: tuple[tuple[str, str], ...] = (
    # ResNet.
    (f"{RESNET}.embedder.embedder.convolution.weight", "backbone.stem.conv1.weight"),
    (f"{RESNET}.embedder.embedder.normalization.{BN}", "backbone.stem.conv1.norm.{p}"),
    (f"{RESNET}.encoder.stages.{{stage:\\d+}}.layers.{{block:\\d+}}.shortcut.convolution.weight",
     "backbone.res{stage+2}.{block}.shortcut.weight"),
    (f"{RESNET}.encoder.stages.{{stage:\\d+}}.layers.{{block:\\d+}}.shortcut.normalization.{BN}",
     "backbone.res{stage+2}.{block}.shortcut.norm.{p}"),
    (f"{RESNET}.encoder.stages.{{stage:\\d+}}.layers.{{block:\\d+}}.layer.{{conv:[0-2]}}.convolution.weight",
     "backbone.res{stage+2}.{block}.conv{conv+1}.weight"),
    (f"{RESNET}.encoder.stages.{{stage:\\d+}}.layers.{{block:\\d+}}.layer.{{conv:[0-2]}}.normalization.{BN}",
     "backbone.res{stage+2}.{block}.conv{conv+1}.norm.{p}"),
    # Swin.
    (f"{SWIN}.embeddings.patch_embeddings.projection.{P}", "backbone.patch_embed.proj.{p}"),
    (f"{SWIN}.embeddings.norm.{P}", "backbone.patch_embed.norm.{p}"),
    (f"{SWIN_BLOCK}.layernorm_before.{P}", f"{BLOCK}.norm1.{{p}}"),
    (f"{SWIN_BLOCK}.attention.self.relative_position_bias_table", f"{BLOCK}.attn.relative_position_bias_table"),
    (f"{SWIN_BLOCK}.attention.self.relative_position_index", f"{BLOCK}.attn.relative_position_index"),
    (f"{SWIN_BLOCK}.attention.output.dense.{P}", f"{BLOCK}.attn.proj.{{p}}"),
    (f"{SWIN_BLOCK}.layernorm_after.{P}", f"{BLOCK}.norm2.{{p}}"),
    (f"{SWIN_BLOCK}.intermediate.dense.{P}", f"{BLOCK}.mlp.fc1.{{p}}"),
    (f"{SWIN_BLOCK}.output.dense.{P}", f"{BLOCK}.mlp.fc2.{{p}}"),
    (f"{SWIN}.encoder.layers.{{stage:\\d+}}.downsample.reduction.weight",
     "backbone.layers.{stage}.downsample.reduction.weight"),
    (f"{SWIN}.encoder.layers.{{stage:\\d+}}.downsample.norm.{P}", "backbone.layers.{stage}.downsample.norm.{p}"),
    (f"{RESNET}.hidden_states_norms.{{stage:[0-3]}}.{P}", "backbone.norm{stage}.{p}"),
    # Pixel decoder (FPN) and predictor.
    (f"{FPN}.fpn.stem.0.weight", "sem_seg_head.pixel_decoder.layer_4.weight"),
    (f"{FPN}.fpn.stem.1.{P}", "sem_seg_head.pixel_decoder.layer_4.norm.{p}"),
    (f"{FPN}.fpn.layers.{{level:[0-2]}}.proj.0.weight", "sem_seg_head.pixel_decoder.adapter_{3-level}.weight"),
    (f"{FPN}.fpn.layers.{{level:[0-2]}}.proj.1.{P}", "sem_seg_head.pixel_decoder.adapter_{3-level}.norm.{p}"),
    (f"{FPN}.fpn.layers.{{level:[0-2]}}.block.0.weight", "sem_seg_head.pixel_decoder.layer_{3-level}.weight"),
    (f"{FPN}.fpn.layers.{{level:[0-2]}}.block.1.{P}", "sem_seg_head.pixel_decoder.layer_{3-level}.norm.{p}"),
    (f"{FPN}.mask_projection.{P}", "sem_seg_head.pixel_decoder.mask_features.{p}"),
    ("model.transformer_module.queries_embedder.weight", "sem_seg_head.predictor.query_embed.weight"),
    (f"model.transformer_module.input_projection.{P}", "sem_seg_head.predictor.input_proj.{p}"),
    (f"{DEC}.self_attn.o_proj.{P}", f"{SRC_DEC}.self_attn.out_proj.{{p}}"),
    (f"{DEC}.encoder_attn.o_proj.{P}", f"{SRC_DEC}.multihead_attn.out_proj.{{p}}"),
    (f"{DEC}.self_attn_layer_norm.{P}", f"{SRC_DEC}.norm1.{{p}}"),
    (f"{DEC}.encoder_attn_layer_norm.{P}", f"{SRC_DEC}.norm2.{{p}}"),
    (f"{DEC}.final_layer_norm.{P}", f"{SRC_DEC}.norm3.{{p}}"),
    (f"{DEC}.mlp.fc{{fc:[12]}}.{P}", f"{SRC_DEC}.linear{{fc}}.{{p}}"),
    (f"model.transformer_module.decoder.layernorm.{P}", "sem_seg_head.predictor.transformer.decoder.norm.{p}"),
    (f"class_predictor.{P}", "sem_seg_head.predictor.class_embed.{p}"),
    (f"mask_embedder.{{layer:[0-2]}}.0.{P}", "sem_seg_head.predictor.mask_embed.layers.{layer}.{p}"),
    ("criterion.empty_weight", "criterion.empty_weight"),
)


@dataclasses.dataclass(frozen=True)
class Packed:
    """Separate HF projections (field `proj`, in `order`) concatenated along dim 0 into one original tensor."""

    source: str
    target: str
    order: tuple[str, str, str]


PACKED: tuple[Packed, ...] = (
    Packed(f"{DEC}.self_attn.{{proj:[qkv]}}_proj.{P}", f"{SRC_DEC}.self_attn.in_proj_{{p}}", ("q", "k", "v")),
    Packed(f"{DEC}.encoder_attn.{{proj:[qkv]}}_proj.{P}", f"{SRC_DEC}.multihead_attn.in_proj_{{p}}", ("q", "k", "v")),
    Packed(f"{SWIN_BLOCK}.attention.self.{{proj:query|key|value}}.{P}", f"{BLOCK}.attn.qkv.{{p}}",
           ("query", "key", "value")),
)
# BatchNorm's counter (no counterpart in FrozenBN) and the HF Swin's final layernorm (MaskFormer never uses it).
DROPPED = re.compile(r".*\.num_batches_tracked\Z|model\.pixel_level_module\.encoder\.model\.layernorm\.(weight|bias)\Z")


@dataclasses.dataclass
class LiveState:
    """A checkpoint's tensors under the original's live names."""

    tensors: dict[str, np.ndarray]
    naming: str  # "released", "live", "none" or "huggingface"
    dropped: list[str] = dataclasses.field(default_factory=list)  # source keys with no counterpart


def is_hf_state(tensors: dict[str, np.ndarray]) -> bool:
    return any(k.startswith(HF_PREFIXES) for k in tensors)


_RENAMES = [(pattern_regex(src), dst) for src, dst in RENAMES]
_PACKED = [(pattern_regex(p.source), p) for p in PACKED]


def from_hf_state(tensors: dict[str, np.ndarray], source: str = "checkpoint") -> LiveState:
    """HF-named tensors -> original live names; every HF tensor consumed exactly once (or dropped, and listed)."""
    state: dict[str, np.ndarray] = {}
    packed: dict[str, tuple[Packed, dict[str, np.ndarray]]] = {}
    unexpected, dropped = {}, []
    for key, value in tensors.items():
        if DROPPED.match(key):
            dropped.append(key)
            continue
        for regex, template in _RENAMES:
            if m := regex.match(key):
                state[fill(template, m.groupdict())] = value
                break
        else:
            for regex, rule in _PACKED:
                if m := regex.match(key):
                    packed.setdefault(fill(rule.target, m.groupdict()), (rule, {}))[1][m.group("proj")] = value
                    break
            else:
                unexpected[key] = value
    for name, (rule, parts) in packed.items():
        missing = [p for p in rule.order if p not in parts]
        if missing:
            raise CheckpointError(f"{source}: {name} lacks its {'/'.join(missing)} projection(s)")
        state[name] = np.concatenate([parts[p] for p in rule.order], axis=0)
    if unexpected:
        mismatch = compare_keys(unexpected, {})
        raise CheckpointError(f"{source}: {len(unexpected)} Hugging Face tensors match no rule of the HF naming "
                              f"table; first '{next(iter(unexpected))}' ({mismatch.summary()})")
    return LiveState(state, "huggingface", dropped)


def _inverse(template: str, source_pattern: str) -> tuple[re.Pattern[str], dict[str, tuple[str, int, int]]]:
    """A regex matching what `template` produces, and per group how to recover the source field: `{stage+2}`
    captures stage + 2, `{3-level}` captures 3 - level."""
    fields = dict(re.findall(r"\{(\w+):([^{}]+)\}", source_pattern))
    parts, last, recover = [], 0, {}
    for number, match in enumerate(re.finditer(r"\{([^{}]+)\}", template)):
        parts.append(re.escape(template[last:match.start()]))
        expr = match.group(1)
        if m := re.fullmatch(r"(\w+)\+(\d+)", expr):
            recover[f"g{number}"] = (m.group(1), 1, -int(m.group(2)))
        elif m := re.fullmatch(r"(\d+)-(\w+)", expr):
            recover[f"g{number}"] = (m.group(2), -1, int(m.group(1)))
        else:
            recover[f"g{number}"] = (expr, 0, 0)
        regex = r"\d+" if recover[f"g{number}"][1] else fields.get(recover[f"g{number}"][0], r"[^.]+")
        parts.append(f"(?P<g{number}>{regex})")
        last = match.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts) + r"\Z"), recover


def _source_key(pattern: str, fields: dict[str, str]) -> str:
    return re.sub(r"\{(\w+):[^{}]+\}", lambda m: fields[m.group(1)], pattern)


_INVERSE_RENAMES = [(*_inverse(dst, src), src) for src, dst in RENAMES]
_INVERSE_PACKED = [(*_inverse(p.target, p.source), p) for p in PACKED]


def to_hf_state(state: dict[str, np.ndarray], source: str = "model") -> dict[str, np.ndarray]:
    """Live-named tensors -> Hugging Face names (what `MaskFormerForInstanceSegmentation.load_state_dict` takes;
    the unused Swin layernorm is written as ones/zeros, BatchNorm counters as 0). Raises for architectures HF
    has no twin of (the +6 Enc pixel decoder, R101c's DeepLab stem)."""
    if any(".pixel_decoder.transformer." in k for k in state):
        raise CheckpointError(f"{source}: Hugging Face MaskFormer has no TransformerEncoderPixelDecoder (+6 Enc)",
                              parameter="naming")
    if "backbone.stem.conv2.weight" in state:
        raise CheckpointError(f"{source}: Hugging Face MaskFormer has no DeepLab (R101c) stem", parameter="naming")
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        for regex, recover, pattern in _INVERSE_RENAMES:
            if m := regex.match(key):
                fields = {name: str(int(m.group(g)) * sign + offset) if sign else m.group(g)
                          for g, (name, sign, offset) in recover.items()}
                out[_source_key(pattern, fields)] = value
                break
        else:
            for regex, recover, rule in _INVERSE_PACKED:
                if m := regex.match(key):
                    fields = {name: m.group(g) for g, (name, _, _) in recover.items()}
                    for part, chunk in zip(rule.order, np.split(value, 3, axis=0), strict=True):
                        out[_source_key(rule.source, {**fields, "proj": part})] = chunk
                    break
            else:
                raise CheckpointError(f"{source}: '{key}' has no Hugging Face name", parameter="naming")
    for key in [k for k in out if k.endswith(".running_var")]:
        out[key.removesuffix("running_var") + "num_batches_tracked"] = np.zeros((), np.int64)
    norms = [k for k in out if k.startswith(f"{RESNET}.hidden_states_norms.3.")]
    if norms:  # Swin: HF's unused final layernorm, of the last stage's width
        width = out[f"{RESNET}.hidden_states_norms.3.weight"].shape[0]
        out[f"{SWIN}.layernorm.weight"] = np.ones(width, np.float32)
        out[f"{SWIN}.layernorm.bias"] = np.zeros(width, np.float32)
    return out
