"""Building the TF MaskFormer from a preset name, a preset, or a Model Garden config."""

from __future__ import annotations

from tf_maskformer.configs.maskformer import MaskFormerModel
from tf_maskformer.modeling.maskformer_model import MaskFormer
from torch_reference.presets import MaskFormerPreset, get_preset


def build_maskformer(spec: str | MaskFormerPreset | MaskFormerModel, build: bool = True) -> MaskFormer:
    """A MaskFormer with every variable created (build=True runs one small dummy batch)."""
    if isinstance(spec, str):
        preset = get_preset(spec)
    elif isinstance(spec, MaskFormerModel):
        preset = spec.to_preset()
    else:
        preset = spec
    model = MaskFormer(preset)
    return model.build_for(64, 64) if build else model
