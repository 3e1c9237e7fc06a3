"""The Swin Transformer backbone of MaskFormer in tf_keras, op for op as the original (torch_reference/swin.py
lists the order that matters), variables named after the original paths: backbone/patch_embed/proj/kernel,
backbone/layers/0/blocks/1/attn/{query,key,value}/kernel, .../attn/relative_position_bias_table,
backbone/layers/0/downsample/reduction/kernel, backbone/norm0/gamma.

Hand-written (no TF Swin reproduces it: keras-hub rolls before padding and shrinks windows, the Model Garden
has none). Shapes are dynamic: padding to the window, the shifted-window mask and the window partition are
computed with TF ops from the input's size, so one traced function serves any H, W (and XLA compiles it for
a fixed one). Sequences between blocks are [B, H*W, C], as in the original.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from mfport.core.presets import SwinSpec
from mfport.core.swin import relative_position_index
from mfport.tf_maskformer.modeling.layers import layer_norm
from mfport.tf_maskformer.modeling.taps import tap


def window_partition(x: tf.Tensor, window: int) -> tf.Tensor:
    """[B, Hp, Wp, C] -> [B * nW, w * w, C], windows in batch-major, row-major order."""
    shape = tf.shape(x)
    channels = x.shape[-1] if x.shape[-1] is not None else shape[3]
    x = tf.reshape(x, [shape[0], shape[1] // window, window, shape[2] // window, window, channels])
    return tf.reshape(tf.transpose(x, [0, 1, 3, 2, 4, 5]), [-1, window * window, channels])


def window_reverse(windows: tf.Tensor, window: int, batch: tf.Tensor, height: tf.Tensor, width: tf.Tensor
                   ) -> tf.Tensor:
    """[B * nW, w * w, C] -> [B, Hp, Wp, C]."""
    channels = windows.shape[-1]
    x = tf.reshape(windows, [batch, height // window, width // window, window, window, channels])
    return tf.reshape(tf.transpose(x, [0, 1, 3, 2, 4, 5]), [batch, height, width, channels])


def shifted_window_mask(padded_h: tf.Tensor, padded_w: tf.Tensor, window: int, shift: int) -> tf.Tensor:
    """[nW, w^2, w^2] on the padded map: 0 within a region of the shifted map, -100 across regions (the
    original's slices (0,-w), (-w,-s), (-s,None) along each axis give the region ids)."""

    def region(size: tf.Tensor) -> tf.Tensor:
        index = tf.range(size)
        return tf.where(index < size - window, 0, tf.where(index < size - shift, 1, 2))

    ids = region(padded_h)[:, None] * 3 + region(padded_w)[None, :]
    ids = tf.reshape(window_partition(tf.cast(ids, tf.float32)[None, :, :, None], window), [-1, window * window])
    return tf.where(ids[:, None, :] != ids[:, :, None], -100.0, 0.0)


class DropPath(tf_keras.layers.Layer):
    """Stochastic depth: in training, zero a sample's residual branch with probability `rate`, scale the rest."""

    def __init__(self, rate: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.rate = rate

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not training or self.rate == 0.0:
            return x
        keep = tf.floor(1.0 - self.rate + tf.random.uniform([tf.shape(x)[0]] + [1] * (x.shape.rank - 1), dtype=x.dtype))
        return x * keep / (1.0 - self.rate)


class WindowAttention(tf_keras.layers.Layer):
    """Multi-head self-attention inside each window, with the relative position bias (and the shift mask).
    q, k, v are per-head projections ([C, heads, head_dim] kernels): the converter splits the original's
    packed qkv (rows q | k | v, heads major inside each) into them."""

    def __init__(self, dim: int, window: int, heads: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.window, self.heads, self.head_dim = window, heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.index = relative_position_index(window).reshape(-1)
        projection = dict(output_shape=(None, heads, self.head_dim), bias_axes="de")
        self.query = tf_keras.layers.EinsumDense("bnc,cde->bnde", name="query", **projection)
        self.key = tf_keras.layers.EinsumDense("bnc,cde->bnde", name="key", **projection)
        self.value = tf_keras.layers.EinsumDense("bnc,cde->bnde", name="value", **projection)
        self.proj = tf_keras.layers.Dense(dim, name="proj")

    def build(self, input_shape: tf.TensorShape) -> None:
        self.relative_position_bias_table = self.add_weight(
            name="relative_position_bias_table", shape=((2 * self.window - 1) ** 2, self.heads),
            initializer=tf_keras.initializers.TruncatedNormal(stddev=0.02))
        super().build(input_shape)

    def call(self, x: tf.Tensor, mask: tf.Tensor | None) -> tf.Tensor:
        """x: [B * nW, N, C]; mask: [nW, N, N] or None."""
        q = self.query(x) * tf.cast(self.scale, x.dtype)  # q scaled BEFORE q @ k^T, as the original
        k, v = self.key(x), self.value(x)
        attn = tf.einsum("bnhd,bmhd->bhnm", q, k)
        tokens = self.window * self.window
        bias = tf.gather(tf.cast(self.relative_position_bias_table, x.dtype), self.index)
        attn = attn + tf.transpose(tf.reshape(bias, [tokens, tokens, self.heads]), [2, 0, 1])[None]
        if mask is not None:
            count = tf.shape(mask)[0]
            attn = tf.reshape(tf.reshape(attn, [-1, count, self.heads, tokens, tokens])
                              + tf.cast(mask, attn.dtype)[None, :, None], [-1, self.heads, tokens, tokens])
        attn = tf.nn.softmax(attn, axis=-1)
        out = tf.einsum("bhnm,bmhd->bnhd", attn, v)
        return self.proj(tf.reshape(out, [-1, tokens, self.heads * self.head_dim]))


class SwinTransformerBlock(tf_keras.layers.Layer):
    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float, drop_path: float,
                 eps: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.window, self.shift = window, shift
        self.norm1 = layer_norm(eps, "norm1")
        self.attn = WindowAttention(dim, window, heads, name="attn")
        self.drop_path = DropPath(drop_path)
        self.norm2 = layer_norm(eps, "norm2")
        self.fc1 = tf_keras.layers.Dense(int(dim * mlp_ratio), name="mlp/fc1")
        self.fc2 = tf_keras.layers.Dense(dim, name="mlp/fc2")

    def call(self, x: tf.Tensor, mask: tf.Tensor, hw: tuple, training: bool | None = None) -> tf.Tensor:
        """x: [B, H*W, C]; mask: the stage's shifted-window mask (shifted blocks only use it)."""
        height, width = hw
        batch, channels = tf.shape(x)[0], x.shape[-1]
        shortcut = x
        x = tf.reshape(self.norm1(x), [batch, height, width, channels])
        pad_b, pad_r = (-height) % self.window, (-width) % self.window
        x = tf.pad(x, [[0, 0], [0, pad_b], [0, pad_r], [0, 0]])  # after the norm: padded tokens are zeros
        padded_h, padded_w = height + pad_b, width + pad_r
        if self.shift:
            x = tf.roll(x, shift=[-self.shift, -self.shift], axis=[1, 2])
        windows = self.attn(window_partition(x, self.window), mask if self.shift else None)
        x = window_reverse(windows, self.window, batch, padded_h, padded_w)
        if self.shift:
            x = tf.roll(x, shift=[self.shift, self.shift], axis=[1, 2])
        x = tf.reshape(x[:, :height, :width, :], [batch, -1, channels])
        x = shortcut + self.drop_path(x, training=training)
        mlp = self.fc2(tf.nn.gelu(self.fc1(self.norm2(x)), approximate=False))  # exact (erf) GELU
        return x + self.drop_path(mlp, training=training)


class PatchMerging(tf_keras.layers.Layer):
    def __init__(self, dim: int, eps: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.norm = layer_norm(eps, "norm")
        self.reduction = tf_keras.layers.Dense(2 * dim, use_bias=False, name="reduction")

    def call(self, x: tf.Tensor, hw: tuple) -> tf.Tensor:
        height, width = hw
        batch, channels = tf.shape(x)[0], x.shape[-1]
        x = tf.pad(tf.reshape(x, [batch, height, width, channels]), [[0, 0], [0, height % 2], [0, width % 2], [0, 0]])
        # The original's order (tf.nn.space_to_depth would interleave differently).
        x = tf.concat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        return self.reduction(self.norm(tf.reshape(x, [batch, -1, 4 * channels])))


class BasicLayer(tf_keras.layers.Layer):
    """One stage: blocks (even plain, odd shifted by w // 2) and the downsample after it."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, drop_paths: list[float],
                 downsample: bool, eps: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.window = window
        self.blocks = [SwinTransformerBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio,
                                            drop_paths[i], eps, name=f"blocks/{i}") for i in range(depth)]
        self.downsample = PatchMerging(dim, eps, name="downsample") if downsample else None

    def call(self, x: tf.Tensor, hw: tuple, stage: int, training: bool | None = None) -> tuple:
        """x: [B, H*W, C] -> (the stage's output [B, H*W, C], the downsampled [B, H/2*W/2, 2C] or None)."""
        height, width = hw
        padded_h, padded_w = height + (-height) % self.window, width + (-width) % self.window
        mask = shifted_window_mask(padded_h, padded_w, self.window, self.window // 2)
        for index, block in enumerate(self.blocks):
            x = tap(f"backbone/layers/{stage}/blocks/{index}", block(x, mask, hw=hw, training=training))
        if self.downsample is None:
            return x, None
        return x, tap(f"backbone/layers/{stage}/downsample", self.downsample(x, hw=hw))


class PatchEmbed(tf_keras.layers.Layer):
    def __init__(self, patch: int, dim: int, eps: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.patch = patch
        self.proj = tf_keras.layers.Conv2D(dim, patch, strides=patch, padding="valid", name="proj")
        self.norm = layer_norm(eps, "norm")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        """[B, H, W, 3] -> [B, ceil(H/4), ceil(W/4), C], zero-padded bottom/right first."""
        shape = tf.shape(x)
        x = tf.pad(x, [[0, 0], [0, (-shape[1]) % self.patch], [0, (-shape[2]) % self.patch], [0, 0]])
        return self.norm(self.proj(x))


class SwinTransformer(tf_keras.layers.Layer):
    """Returns {"res2": stride 4, ..., "res5": stride 32} NHWC maps, each through its stage's output norm."""

    def __init__(self, spec: SwinSpec, eps: float = 1e-5, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.patch_embed = PatchEmbed(spec.patch_size, spec.embed_dim, eps, name="patch_embed")
        total = sum(spec.depths)
        rates = [spec.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = []
        for stage, (depth, heads) in enumerate(zip(spec.depths, spec.num_heads, strict=True)):
            first = sum(spec.depths[:stage])
            self.layers.append(BasicLayer(spec.channels[stage], depth, heads, spec.window_size, spec.mlp_ratio,
                                          rates[first:first + depth], stage < 3, eps, name=f"layers/{stage}"))
        self.norms = [layer_norm(eps, f"norm{stage}") for stage in range(4)]

    def call(self, x: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        x = tap("backbone/patch_embed", self.patch_embed(x))
        shape = tf.shape(x)
        batch, height, width = shape[0], shape[1], shape[2]
        x = tf.reshape(x, [batch, -1, self.spec.embed_dim])
        features = {}
        for stage, layer in enumerate(self.layers):
            out, down = layer(x, hw=(height, width), stage=stage, training=training)
            channels = self.spec.channels[stage]
            features[f"res{stage + 2}"] = tap(f"backbone/res{stage + 2}", self.norms[stage](
                tf.reshape(out, [batch, height, width, channels])))
            if down is not None:
                x, height, width = down, (height + 1) // 2, (width + 1) // 2
        return features
