"""The mapping registry: per-family rule tables, PyTorch (live names) <-> TF variable paths.

One table drives both directions (converter.registry); MAPPING_VERSION changes whenever a rule does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from converter.mappings import backbone, pixel_decoder, predictor
from converter.rules import Rule
from torch_reference.presets import MaskFormerPreset

MAPPING_VERSION = "1"

FAMILIES: dict[str, tuple[Rule, ...]] = {
    "backbone": backbone.RULES,
    "pixel_decoder": pixel_decoder.RULES,
    "predictor": predictor.RULES,
}

# Source tensors with no TF variable, regenerated from the preset on the way back (and checked on the way in).
DERIVED: dict[str, Callable[[MaskFormerPreset], np.ndarray]] = dict(predictor.DERIVED)
