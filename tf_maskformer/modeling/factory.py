"""Building the TF MaskFormer from a preset name, a preset, or a Model Garden config."""

from __future__ import annotations

import tf_keras

from mfport.core.presets import MaskFormerPreset, get_preset
from mfport.tf_maskformer.modeling.maskformer_model import MaskFormer


def build_maskformer(spec: str | MaskFormerPreset | object, build: bool = True,
                     dtype: str | None = None) -> MaskFormer:
    """A MaskFormer with every variable created (build=True runs one small dummy batch).

    dtype ("float16", "bfloat16", ...) stores the variables and computes in that dtype.
    """
    if dtype is not None:
        previous = tf_keras.mixed_precision.global_policy()
        tf_keras.mixed_precision.set_global_policy(dtype)
        try:
            return build_maskformer(spec, build)
        finally:
            tf_keras.mixed_precision.set_global_policy(previous)
    if isinstance(spec, str):
        preset = get_preset(spec)
    elif hasattr(spec, "to_preset"):  # a Model Garden MaskFormerModel config (not imported: its 39 modules)
        preset = spec.to_preset()
    else:
        preset = spec
    model = MaskFormer(preset)
    return model.build_for(64, 64) if build else model
