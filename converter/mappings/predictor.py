"""TransformerPredictor and heads -> tf_maskformer predictor; the criterion's buffer (no TF variable)."""

from __future__ import annotations

import numpy as np

from mfport.converter.rules import IDENTITY, NOT_A_VARIABLE, Derived, Rule, attention, conv, linear, norm
from mfport.core.presets import MaskFormerPreset

SRC = "sem_seg_head.predictor"
DST = "sem_seg_head/predictor"
DEC_SRC = f"{SRC}.transformer.decoder.layers.{{layer:\\d+}}"
DEC_DST = f"{DST}/transformer/decoder/layers/{{layer}}"

RULES: tuple[Rule, ...] = (
    Rule(f"{SRC}.query_embed.weight", (f"{DST}/query_embed/embeddings",), IDENTITY),
    *conv(f"{SRC}.input_proj", f"{DST}/input_proj", bias=True),
    *attention(f"{DEC_SRC}.{{attn:self_attn|multihead_attn}}", f"{DEC_DST}/{{attn}}"),
    *linear(f"{DEC_SRC}.{{fc:linear[12]}}", f"{DEC_DST}/{{fc}}"),
    *norm(f"{DEC_SRC}.{{ln:norm[1-3]}}", f"{DEC_DST}/{{ln}}"),
    *norm(f"{SRC}.transformer.decoder.norm", f"{DST}/transformer/decoder/norm"),
    # Heads: class_embed (K+1 outputs, "no object" last, kept last) and the 3-layer mask MLP.
    *linear(f"{SRC}.class_embed", f"{DST}/class_embed"),
    *linear(f"{SRC}.mask_embed.layers.{{layer:[0-2]}}", f"{DST}/mask_embed/layers/{{layer}}"),
    # [1, ..., 1, no_object_weight]: a loss setting of the preset, not a model variable.
    Rule("criterion.empty_weight", (), NOT_A_VARIABLE),
)


def empty_weight(preset: MaskFormerPreset) -> np.ndarray:
    weight = np.ones(preset.num_classes + 1, np.float32)
    weight[-1] = preset.no_object_weight
    return weight


# 1 % relative: bfloat16/float16 files round 0.1 (to 0.10009 / 0.09998); another weight (0.2) still fails.
DERIVED = (Derived("criterion.empty_weight", empty_weight, lambda preset: ["criterion.empty_weight"],
                   lambda preset: f"no_object_weight {preset.no_object_weight} (last entry)", rtol=1e-2),)
