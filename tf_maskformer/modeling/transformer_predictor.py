"""TransformerPredictor: 100 queries decoded against the image features; class and mask heads."""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from mfport.core.presets import MaskFormerPreset
from mfport.tf_maskformer.modeling.layers import Conv2DNormAct, layer_norm
from mfport.tf_maskformer.modeling.position_encoding import sine_position_encoding
from mfport.tf_maskformer.modeling.taps import tap
from mfport.tf_maskformer.modeling.transformer_layers import TransformerDecoderLayer


class MaskEmbedMLP(tf_keras.layers.Layer):
    """mask_embed: 3 linear layers, ReLU after the first two."""

    def __init__(self, hidden_dim: int, output_dim: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.mlp_layers = [tf_keras.layers.Dense(dim, name=f"layers/{i}")
                           for i, dim in enumerate((hidden_dim, hidden_dim, output_dim))]

    def call(self, x: tf.Tensor) -> tf.Tensor:
        for index, layer in enumerate(self.mlp_layers):
            x = layer(x)
            if index < len(self.mlp_layers) - 1:
                x = tf.nn.relu(x)
        return x


class TransformerPredictor(tf_keras.layers.Layer):
    def __init__(self, preset: MaskFormerPreset, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.hidden_dim = preset.hidden_dim
        self.num_queries = preset.num_queries
        self.input_proj = (Conv2DNormAct(preset.hidden_dim, 1, use_bias=True, name="input_proj")
                           if preset.has_predictor_input_proj else None)
        self.decoder_layers = [
            TransformerDecoderLayer(preset.hidden_dim, preset.nheads, preset.dim_feedforward, preset.dropout,
                                    preset.norm_eps, name=f"transformer/decoder/layers/{i}")
            for i in range(preset.dec_layers)]
        self.decoder_norm = layer_norm(preset.norm_eps, "transformer/decoder/norm")
        self.class_embed = tf_keras.layers.Dense(preset.num_classes + 1, name="class_embed")  # no object LAST
        self.mask_embed = MaskEmbedMLP(preset.hidden_dim, preset.mask_dim, name="mask_embed")

    def build(self, input_shape: object) -> None:
        self.query_embed = self.add_weight(name="query_embed/embeddings", shape=(self.num_queries, self.hidden_dim),
                                           initializer=tf_keras.initializers.RandomNormal(stddev=1.0))
        super().build(input_shape)

    def call(self, x: tf.Tensor, mask_features: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        """x: [B, h, w, C_in]; mask_features: [B, H/4, W/4, mask_dim].

        Returns pred_logits [B, Q, K+1], pred_masks [B, Q, H/4, W/4], and the same per decoder layer
        stacked as layer_logits [L, B, Q, K+1] / layer_masks [L, B, Q, H/4, W/4] (last = final).
        """
        pos = sine_position_encoding(x, self.hidden_dim // 2)
        if self.input_proj is not None:
            x = self.input_proj(x)
        shape = tf.shape(x)
        memory = tf.reshape(x, [shape[0], -1, self.hidden_dim])
        pos = tf.reshape(pos, [shape[0], -1, self.hidden_dim])
        query_pos = tf.tile(tf.cast(self.query_embed, x.dtype)[None], [shape[0], 1, 1])
        tgt = tf.zeros_like(query_pos)  # the decoder input starts at zeros
        hidden_states = []
        for index, layer in enumerate(self.decoder_layers):
            tgt = tap(f"predictor/decoder_layer_{index}", layer(tgt, memory, pos, query_pos, training=training))
            hidden_states.append(self.decoder_norm(tgt))  # shared norm on every layer's output
        hidden = tf.stack(hidden_states)  # [L, B, Q, C]
        layer_logits = tap("predictor/class_embed", self.class_embed(hidden))
        mask_embed = tap("predictor/mask_embed", self.mask_embed(hidden))
        # The final layer's masks apart from the auxiliary layers': a caller that takes only pred_* (serving,
        # prediction) leaves the auxiliary product unused, and XLA removes it (5 of 6 mask products).
        pred_masks = tf.einsum("bqc,bhwc->bqhw", mask_embed[-1], mask_features)
        aux_masks = tf.einsum("lbqc,bhwc->lbqhw", mask_embed[:-1], mask_features)
        return {"pred_logits": layer_logits[-1], "pred_masks": pred_masks, "layer_logits": layer_logits,
                "layer_masks": tf.concat([aux_masks, pred_masks[None]], axis=0)}
