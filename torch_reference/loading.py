"""Strict loading of original-format checkpoints into the PyTorch reference MaskFormer."""

from __future__ import annotations

import os

import numpy as np
import torch

from converter.architecture import detect_preset
from converter.checkpoint_io import Checkpoint, CheckpointError, read_checkpoint
from converter.naming import compare_keys, naming_era, to_live
from torch_reference.maskformer import MaskFormer
from torch_reference.presets import MaskFormerPreset


class CheckpointMismatchError(CheckpointError):
    """Missing, unexpected or mis-shaped keys; str() is one line, `.report` names every key."""

    def __init__(self, message: str, report: str) -> None:
        super().__init__(message)
        self.report = report


def live_state(checkpoint: Checkpoint) -> dict[str, np.ndarray]:
    """The checkpoint's tensors under live-model names (released flat head names renamed)."""
    era = naming_era(checkpoint.tensors)
    if era == "mixed":
        raise CheckpointError(f"{checkpoint.path}: mixes released (flat) and live (pixel_decoder.) "
                              "head names; a checkpoint uses one or the other")
    return {to_live(k): v for k, v in checkpoint.tensors.items()}


def resolve_preset(checkpoint: Checkpoint, preset: MaskFormerPreset | None) -> MaskFormerPreset:
    if preset is not None:
        return preset
    detected = detect_preset(checkpoint.tensors)
    if detected is None:
        raise CheckpointError(f"{checkpoint.path}: architecture matches no known preset; pass --preset")
    return detected


def load_state_strict(model: MaskFormer, state: dict[str, np.ndarray], source: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatch = compare_keys(state, expected)
    if not mismatch.ok:
        detected = detect_preset(state)
        hint = f"; the file looks like preset '{detected.name}'" if detected is not None else ""
        raise CheckpointMismatchError(
            f"{source}: does not fit preset '{model.preset.name}': {mismatch.summary()}{hint}",
            mismatch.report())
    with torch.no_grad():
        model.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()},
                              strict=True)


def load_maskformer(path: str | os.PathLike[str], preset: MaskFormerPreset | None = None
                    ) -> tuple[MaskFormer, Checkpoint]:
    """Read a .pkl/.pth/.pt/.safetensors checkpoint (either naming era) into an eval-mode MaskFormer.

    Without `preset`, the architecture is detected from the keys. Fails on any key difference.
    """
    checkpoint = read_checkpoint(path)
    state = live_state(checkpoint)
    model = MaskFormer(resolve_preset(checkpoint, preset)).eval()
    load_state_strict(model, state, checkpoint.path)
    return model, checkpoint
