"""Loading the TF MaskFormer of a directory written by `mfport convert` (TensorFlow alone, no torch)."""

from __future__ import annotations

import os
from pathlib import Path

from mfport.core.errors import CheckpointError
from mfport.core.model_dir import KERAS_WEIGHTS, TF_CHECKPOINT, Manifest
from mfport.tf_maskformer.modeling.factory import build_maskformer
from mfport.tf_maskformer.modeling.maskformer_model import MaskFormer


def load_converted_model(model_dir: str | os.PathLike[str]) -> MaskFormer:
    """The TF MaskFormer of a converted model directory, weights restored from its TF checkpoint (or Keras
    weights), in the dtype the conversion stored."""
    import tensorflow as tf

    manifest = Manifest.read(model_dir)
    dtype = manifest.source.tf_variable_dtype
    model = build_maskformer(manifest.preset, dtype=None if dtype == "float32" else dtype)
    if Path(model_dir, TF_CHECKPOINT).is_dir():
        tf.train.Checkpoint(model=model).read(str(Path(model_dir) / TF_CHECKPOINT / "ckpt")
                                              ).assert_existing_objects_matched()
    elif Path(model_dir, KERAS_WEIGHTS).is_file():
        model.load_weights(str(Path(model_dir) / KERAS_WEIGHTS))
    else:
        raise CheckpointError(f"{model_dir}: holds neither {TF_CHECKPOINT}/ nor {KERAS_WEIGHTS}")
    return model
