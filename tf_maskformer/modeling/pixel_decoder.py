"""BasePixelDecoder and TransformerEncoderPixelDecoder (+6 Enc), NHWC, original layer names."""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from mfport.core.presets import MaskFormerPreset
from mfport.tf_maskformer.modeling.layers import Conv2DNormAct, group_norm
from mfport.tf_maskformer.modeling.position_encoding import sine_position_encoding
from mfport.tf_maskformer.modeling.resize import nearest_resize_like_torch
from mfport.tf_maskformer.modeling.taps import tap
from mfport.tf_maskformer.modeling.transformer_layers import TransformerEncoderLayer

IN_FEATURES = ("res2", "res3", "res4", "res5")


class BasePixelDecoder(tf_keras.layers.Layer):
    """layer_4 on the top feature, then y = layer_i(adapter_i(res_i) + nearest(y)) for i = 3, 2, 1."""

    def __init__(self, preset: MaskFormerPreset, **kwargs: object) -> None:
        super().__init__(**kwargs)
        dim, groups, eps = preset.conv_dim, preset.norm_groups, preset.norm_eps
        self.adapters = [Conv2DNormAct(dim, 1, norm=group_norm(groups, eps), name=f"adapter_{i}") for i in (1, 2, 3)]
        self.layers = [Conv2DNormAct(dim, 3, padding=1, norm=group_norm(groups, eps), activation=True,
                                     name=f"layer_{i}") for i in (1, 2, 3, 4)]
        self.mask_features = Conv2DNormAct(preset.mask_dim, 3, padding=1, use_bias=True, name="mask_features")

    def top_down(self, features: dict[str, tf.Tensor], y: tf.Tensor) -> tf.Tensor:
        for index in (3, 2, 1):
            lateral = self.adapters[index - 1](features[IN_FEATURES[index - 1]])
            lateral_shape = tf.shape(lateral)
            y = lateral + nearest_resize_like_torch(y, (lateral_shape[1], lateral_shape[2]))
            y = tap(f"pixel_decoder/layer_{index}", self.layers[index - 1](y))
        return y

    def encode_top(self, res5: tf.Tensor, training: bool | None) -> tuple[tf.Tensor, tf.Tensor | None]:
        """The stride-32 input of the top-down path, and what the predictor reads (None here)."""
        return res5, None

    def call(self, features: dict[str, tf.Tensor], training: bool | None = None
             ) -> tuple[tf.Tensor, tf.Tensor | None]:
        top, encoder_output = self.encode_top(features["res5"], training)
        y = tap("pixel_decoder/layer_4", self.layers[3](top))
        return tap("pixel_decoder/mask_features", self.mask_features(self.top_down(features, y))), encoder_output


class TransformerEncoderPixelDecoder(BasePixelDecoder):
    """input_proj + sine PE + 6 post-norm encoder layers (no final norm) on res5 before layer_4."""

    def __init__(self, preset: MaskFormerPreset, **kwargs: object) -> None:
        super().__init__(preset, **kwargs)
        self.input_proj = Conv2DNormAct(preset.conv_dim, 1, use_bias=True, name="input_proj")
        self.encoder_layers = [
            TransformerEncoderLayer(preset.conv_dim, preset.nheads, preset.dim_feedforward, preset.dropout,
                                    preset.norm_eps, name=f"transformer/encoder/layers/{i}")
            for i in range(preset.pixel_decoder_enc_layers)]

    def encode_top(self, res5: tf.Tensor, training: bool | None) -> tuple[tf.Tensor, tf.Tensor]:
        x = self.input_proj(res5)
        shape = tf.shape(x)
        pos = tf.reshape(sine_position_encoding(x, x.shape[-1] // 2), [shape[0], -1, shape[3]])
        tokens = tf.reshape(x, [shape[0], -1, shape[3]])
        for index, layer in enumerate(self.encoder_layers):
            tokens = tap(f"pixel_decoder/encoder_layer_{index}", layer(tokens, pos, training=training))
        encoder_output = tf.reshape(tokens, shape)
        return encoder_output, encoder_output


def build_pixel_decoder(preset: MaskFormerPreset) -> BasePixelDecoder:
    if preset.pixel_decoder == "transformer_encoder":
        return TransformerEncoderPixelDecoder(preset, name="pixel_decoder")
    return BasePixelDecoder(preset, name="pixel_decoder")
