"""The TensorFlow MaskFormer: preprocessing, backbone, pixel decoder, transformer predictor (NHWC).

Variable paths follow the original module paths: maskformer/backbone/res3/0/conv2/kernel,
maskformer/sem_seg_head/pixel_decoder/adapter_1/norm/gamma, .../predictor/transformer/decoder/layers/0/...
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from mfport.core.errors import InputError
from mfport.core.presets import MaskFormerPreset
from mfport.tf_maskformer.modeling.backbone import build_backbone
from mfport.tf_maskformer.modeling.pixel_decoder import build_pixel_decoder
from mfport.tf_maskformer.modeling.transformer_predictor import TransformerPredictor

MIN_INPUT_SIZE = 32  # below one stride-32 cell res5 is empty


class MaskFormerHead(tf_keras.layers.Layer):
    def __init__(self, preset: MaskFormerPreset, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.pixel_decoder = build_pixel_decoder(preset)
        self.predictor = TransformerPredictor(preset, name="predictor")
        self.transformer_in_feature = preset.transformer_in_feature

    def call(self, features: dict[str, tf.Tensor], training: bool | None = None) -> dict[str, tf.Tensor]:
        mask_features, encoder_output = self.pixel_decoder(features, training=training)
        x = encoder_output if self.transformer_in_feature == "transformer_encoder" else features["res5"]
        return self.predictor(x, mask_features, training=training)


def validate_images(images: object) -> None:
    """Fail early, with a readable message, on input the model cannot take (static checks only)."""
    if not isinstance(images, (tf.Tensor, tf.Variable)) and not hasattr(images, "shape"):
        raise InputError(f"images: expected a float32 tensor [B, H, W, 3], got {type(images).__name__}")
    shape = tuple(images.shape)
    dtype = tf.as_dtype(images.dtype)
    if len(shape) != 4:
        raise InputError(f"images: expected rank 4 [B, H, W, 3] (NHWC), got rank {len(shape)} with shape {shape}")
    if shape[-1] is not None and shape[-1] != 3:
        hint = " (channels first? the TF model is NHWC)" if shape[1] == 3 else ""
        raise InputError(f"images: expected 3 RGB channels last, got shape {shape}{hint}")
    if not (dtype.is_floating or dtype == tf.uint8):
        raise InputError(f"images: expected float32 (or uint8) RGB 0..255, got {dtype.name}")
    for axis, name in ((1, "height"), (2, "width")):
        if shape[axis] is not None and shape[axis] < MIN_INPUT_SIZE:
            raise InputError(f"images: {name} {shape[axis]} is below the minimum {MIN_INPUT_SIZE} "
                             "(the stride-32 stage would be empty)")


class MaskFormer(tf_keras.Model):
    def __init__(self, preset: MaskFormerPreset, **kwargs: object) -> None:
        super().__init__(name=kwargs.pop("name", "maskformer"), **kwargs)
        self.preset = preset
        self.backbone = build_backbone(preset)
        self.sem_seg_head = MaskFormerHead(preset, name="sem_seg_head")

    def padded_size(self, height: tf.Tensor | int, width: tf.Tensor | int) -> tuple:
        stride = self.preset.size_divisibility
        if stride <= 1:
            return height, width
        return (height + stride - 1) // stride * stride, (width + stride - 1) // stride * stride

    def preprocess(self, images: tf.Tensor) -> tf.Tensor:
        """RGB 0..255 [B, H, W, 3] -> normalised, zero-padded bottom/right to size_divisibility."""
        validate_images(images)
        images = tf.cast(images, tf.float32)
        mean = tf.constant(self.preset.pixel_mean, tf.float32)
        std = tf.constant(self.preset.pixel_std, tf.float32)
        images = (images - mean) / std
        shape = tf.shape(images)
        padded_h, padded_w = self.padded_size(shape[1], shape[2])
        return tf.pad(images, [[0, 0], [0, padded_h - shape[1]], [0, padded_w - shape[2]], [0, 0]])

    def call(self, images: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        """The network on a normalised, padded batch [B, H, W, 3] (see preprocess).

        pred_logits [B, Q, K+1] ("no object" last), pred_masks [B, Q, H/4, W/4], and every decoder
        layer's outputs stacked in layer_logits / layer_masks (the first L-1 are the aux outputs).
        """
        return self.sem_seg_head(self.backbone(images), training=training)

    def predict_raw(self, images: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        """RGB 0..255 images -> raw outputs (preprocess + call)."""
        return self(self.preprocess(images), training=training)

    def build_for(self, height: int = 64, width: int = 64) -> MaskFormer:
        """Create every variable by running a small dummy batch."""
        self(tf.zeros([1, height, width, 3]))
        return self


def aux_outputs(outputs: dict[str, tf.Tensor]) -> list[dict[str, tf.Tensor]]:
    """The deep-supervision outputs (all decoder layers but the last), as the PyTorch model lists them."""
    return [{"pred_logits": outputs["layer_logits"][i], "pred_masks": outputs["layer_masks"][i]}
            for i in range(outputs["layer_logits"].shape[0] - 1)]
