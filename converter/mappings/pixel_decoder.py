"""Pixel decoders (live names `sem_seg_head.pixel_decoder.*`) -> tf_maskformer pixel_decoder."""

from __future__ import annotations

from mfport.converter.rules import Rule, attention, conv, linear, norm

SRC = "sem_seg_head.pixel_decoder"
DST = "sem_seg_head/pixel_decoder"
ENC_SRC = f"{SRC}.transformer.encoder.layers.{{layer:\\d+}}"
ENC_DST = f"{DST}/transformer/encoder/layers/{{layer}}"

RULES: tuple[Rule, ...] = (
    # BasePixelDecoder: adapters (1x1 + GN), layers (3x3 + GN + ReLU), mask_features (3x3 with bias).
    *conv(f"{SRC}.{{conv:adapter_[1-3]|layer_[1-4]}}", f"{DST}/{{conv}}"),
    *norm(f"{SRC}.{{conv:adapter_[1-3]|layer_[1-4]}}.norm", f"{DST}/{{conv}}/norm"),
    *conv(f"{SRC}.mask_features", f"{DST}/mask_features", bias=True),
    # TransformerEncoderPixelDecoder: input_proj and the post-norm encoder layers.
    *conv(f"{SRC}.input_proj", f"{DST}/input_proj", bias=True),
    *attention(f"{ENC_SRC}.self_attn", f"{ENC_DST}/self_attn"),
    *linear(f"{ENC_SRC}.{{fc:linear[12]}}", f"{ENC_DST}/{{fc}}"),
    *norm(f"{ENC_SRC}.{{ln:norm[12]}}", f"{ENC_DST}/{{ln}}"),
)
