"""Sine position encoding (normalize=True, all pixels valid), NHWC, computed from the input's shape."""

from __future__ import annotations

import math

import tensorflow as tf


def sine_position_encoding(x: tf.Tensor, num_pos_feats: int = 128, temperature: float = 10000.0,
                           scale: float = 2 * math.pi, eps: float = 1e-6) -> tf.Tensor:
    """x: [B, H, W, C] (shape only) -> [B, H, W, 2 * num_pos_feats]: concat(pos_y, pos_x), each
    interleaving sin (even features) and cos (odd features), as the original."""
    shape = tf.shape(x)
    batch, height, width = shape[0], shape[1], shape[2]
    y_embed = tf.cumsum(tf.ones([height], tf.float32))
    x_embed = tf.cumsum(tf.ones([width], tf.float32))
    y_embed = y_embed / (y_embed[-1:] + eps) * scale
    x_embed = x_embed / (x_embed[-1:] + eps) * scale
    dim_t = tf.range(num_pos_feats, dtype=tf.float32)
    dim_t = temperature ** (2 * tf.math.floordiv(dim_t, 2) / num_pos_feats)
    pos_x = x_embed[:, None] / dim_t  # [W, F]
    pos_y = y_embed[:, None] / dim_t  # [H, F]
    pos_x = tf.reshape(tf.stack([tf.sin(pos_x[:, 0::2]), tf.cos(pos_x[:, 1::2])], axis=2), [width, num_pos_feats])
    pos_y = tf.reshape(tf.stack([tf.sin(pos_y[:, 0::2]), tf.cos(pos_y[:, 1::2])], axis=2), [height, num_pos_feats])
    pos = tf.concat([tf.broadcast_to(pos_y[:, None, :], [height, width, num_pos_feats]),
                     tf.broadcast_to(pos_x[None, :, :], [height, width, num_pos_feats])], axis=-1)
    return tf.cast(tf.broadcast_to(pos[None], [batch, height, width, 2 * num_pos_feats]), x.dtype)
