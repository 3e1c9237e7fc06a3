"""Naming eras of MaskFormer checkpoints and the key-set checks that compare a checkpoint to a model.

- "released": model-zoo files, pixel decoder flat under the head: `sem_seg_head.adapter_1.weight`.
- "live": the running original model and files saved from it: `sem_seg_head.pixel_decoder.adapter_1.weight`.
The original head renames released keys on load; so do we, in both directions.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import TYPE_CHECKING

import numpy as np

from mfport.core.checkpoint_io import Checkpoint
from mfport.core.errors import CheckpointError

if TYPE_CHECKING:
    from mfport.core.huggingface import LiveState

HEAD = "sem_seg_head."
LIVE_PIXEL_DECODER = HEAD + "pixel_decoder."
PREDICTOR = HEAD + "predictor."


def _is_flat_pixel_decoder_key(key: str) -> bool:
    return key.startswith(HEAD) and not key.startswith(PREDICTOR) and not key.startswith(LIVE_PIXEL_DECODER)


def naming_era(keys: object) -> str:
    """"released", "live", "mixed" or "none" (no pixel-decoder keys at all)."""
    keys = list(keys)
    flat = any(_is_flat_pixel_decoder_key(k) for k in keys)
    live = any(k.startswith(LIVE_PIXEL_DECODER) for k in keys)
    if flat and live:
        return "mixed"
    return "released" if flat else "live" if live else "none"


def original_live_state(checkpoint: Checkpoint) -> LiveState:
    """A checkpoint's tensors under the original's live names, the naming they came in ("released", "live",
    "none" or "huggingface", mapped through core/huggingface.py) and the source keys dropped on the way."""
    from mfport.core.huggingface import LiveState, from_hf_state, is_hf_state  # it builds on this module

    if is_hf_state(checkpoint.tensors):
        return from_hf_state(checkpoint.tensors, checkpoint.path)
    era = naming_era(checkpoint.tensors)
    if era == "mixed":
        raise CheckpointError(f"{checkpoint.path}: mixes released (flat) and live (pixel_decoder.) head names; "
                              "a checkpoint uses one or the other")
    return LiveState({to_live(k): v for k, v in checkpoint.tensors.items()}, era)


def to_live(key: str) -> str:
    return LIVE_PIXEL_DECODER + key[len(HEAD):] if _is_flat_pixel_decoder_key(key) else key


def to_released(key: str) -> str:
    return HEAD + key[len(LIVE_PIXEL_DECODER):] if key.startswith(LIVE_PIXEL_DECODER) else key


@dataclasses.dataclass
class KeyMismatch:
    """Differences between a checkpoint's tensors and the names/shapes a model expects."""

    missing: list[str]
    unexpected: list[str]
    misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, found, expected)
    closest: dict[str, str]  # unexpected key -> closest expected key, missing key -> closest found key

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.misshaped)

    def summary(self) -> str:
        """One line: the counts and the first offender of each kind."""
        parts = [f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                 f"{len(self.misshaped)} mis-shaped keys"]
        if self.missing:
            parts.append(f"first missing '{self.missing[0]}'")
        if self.unexpected:
            key = self.unexpected[0]
            hint = f" (closest expected: '{self.closest[key]}')" if key in self.closest else ""
            parts.append(f"first unexpected '{key}'{hint}")
        if self.misshaped:
            key, found, expected = self.misshaped[0]
            parts.append(f"first mis-shaped '{key}' {found} vs expected {expected}")
        return "; ".join(parts)

    def report(self) -> str:
        """Every offending key on its own line, with the closest name where one exists."""
        lines = [self.summary()]
        lines += [f"  missing     {k}" + (f"   (closest in file: {self.closest[k]})" if k in self.closest else "")
                  for k in self.missing]
        lines += [f"  unexpected  {k}" + (f"   (closest expected: {self.closest[k]})" if k in self.closest else "")
                  for k in self.unexpected]
        lines += [f"  mis-shaped  {k}: {found} vs expected {expected}" for k, found, expected in self.misshaped]
        return "\n".join(lines)


def compare_keys(found: dict[str, np.ndarray] | dict[str, tuple[int, ...]],
                 expected: dict[str, tuple[int, ...]]) -> KeyMismatch:
    """Compare names and shapes (values may be arrays or shapes)."""
    shapes = {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in found.items()}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    misshaped = [(k, shapes[k], tuple(expected[k])) for k in expected
                 if k in shapes and shapes[k] != tuple(expected[k])]
    closest = {}
    for key in unexpected:
        match = difflib.get_close_matches(key, missing or list(expected), n=1, cutoff=0.6)
        if match:
            closest[key] = match[0]
    for key in missing:
        match = difflib.get_close_matches(key, unexpected, n=1, cutoff=0.6)
        if match:
            closest[key] = match[0]
    return KeyMismatch(missing, unexpected, misshaped, closest)
