"""The mapping registry: per-family rule tables, PyTorch (live names) <-> TF variable paths.

One table drives both directions (converter.registry); MAPPING_VERSION changes whenever a rule does.
"""

from __future__ import annotations

from mfport.converter.mappings import backbone, pixel_decoder, predictor, swin
from mfport.converter.rules import Derived, Rule

MAPPING_VERSION = "2"  # 2: Swin, R101c's DeepLab stem, pattern-keyed derived tensors

FAMILIES: dict[str, tuple[Rule, ...]] = {
    "backbone": backbone.RULES,
    "swin": swin.RULES,
    "pixel_decoder": pixel_decoder.RULES,
    "predictor": predictor.RULES,
}

# Source tensors with no TF variable, regenerated from the preset on the way back (and checked on the way in).
DERIVED: tuple[Derived, ...] = (*predictor.DERIVED, *swin.DERIVED)
