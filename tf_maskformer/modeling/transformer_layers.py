"""Post-norm DETR transformer layers on tf_keras MultiHeadAttention (with biases), batch-first [B, L, C].

Keras MHA keeps q/k/v as separate projections; the converter splits PyTorch's packed in_proj
(rows [0:d]=q, [d:2d]=k, [2d:3d]=v) into them.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from mfport.tf_maskformer.modeling.layers import layer_norm


def _attention(d_model: int, nhead: int, dropout: float, name: str) -> tf_keras.layers.MultiHeadAttention:
    return tf_keras.layers.MultiHeadAttention(nhead, d_model // nhead, dropout=dropout, use_bias=True, name=name)


class TransformerEncoderLayer(tf_keras.layers.Layer):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, eps: float,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.self_attn = _attention(d_model, nhead, dropout, "self_attn")
        self.linear1 = tf_keras.layers.Dense(dim_feedforward, name="linear1")
        self.linear2 = tf_keras.layers.Dense(d_model, name="linear2")
        self.norm1 = layer_norm(eps, "norm1")
        self.norm2 = layer_norm(eps, "norm2")
        self.dropout = tf_keras.layers.Dropout(dropout)

    def call(self, src: tf.Tensor, pos: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        q = k = src + pos
        attended = self.self_attn(q, src, key=k, training=training)
        src = self.norm1(src + self.dropout(attended, training=training))
        ffn = self.linear2(self.dropout(tf.nn.relu(self.linear1(src)), training=training))
        return self.norm2(src + self.dropout(ffn, training=training))


class TransformerDecoderLayer(tf_keras.layers.Layer):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, eps: float,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.self_attn = _attention(d_model, nhead, dropout, "self_attn")
        self.multihead_attn = _attention(d_model, nhead, dropout, "multihead_attn")
        self.linear1 = tf_keras.layers.Dense(dim_feedforward, name="linear1")
        self.linear2 = tf_keras.layers.Dense(d_model, name="linear2")
        self.norm1 = layer_norm(eps, "norm1")
        self.norm2 = layer_norm(eps, "norm2")
        self.norm3 = layer_norm(eps, "norm3")
        self.dropout = tf_keras.layers.Dropout(dropout)

    def call(self, tgt: tf.Tensor, memory: tf.Tensor, pos: tf.Tensor, query_pos: tf.Tensor,
             training: bool | None = None) -> tf.Tensor:
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, tgt, key=k, training=training), training=training))
        attended = self.multihead_attn(tgt + query_pos, memory, key=memory + pos, training=training)
        tgt = self.norm2(tgt + self.dropout(attended, training=training))
        ffn = self.linear2(self.dropout(tf.nn.relu(self.linear1(tgt)), training=training))
        return self.norm3(tgt + self.dropout(ffn, training=training))
