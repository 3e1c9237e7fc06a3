"""Strict loading of original-format checkpoints into the PyTorch reference MaskFormer."""

from __future__ import annotations

import os

import numpy as np
import torch

from converter.architecture import detect_preset, resolve_preset
from converter.checkpoint_io import Checkpoint, CheckpointError, read_checkpoint
from converter.naming import compare_keys, original_live_state
from torch_reference.maskformer import MaskFormer
from torch_reference.presets import MaskFormerPreset


class CheckpointMismatchError(CheckpointError):
    """Missing, unexpected or mis-shaped keys; str() is one line, `.report` names every key."""

    def __init__(self, message: str, report: str) -> None:
        super().__init__(message)
        self.report = report


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
    """Read a .pkl/.pth/.pt/.safetensors checkpoint (either naming era, or HF) into an eval-mode MaskFormer.

    Without `preset`, the architecture is detected from the keys. Fails on any key difference.
    """
    checkpoint = read_checkpoint(path)
    state, _ = original_live_state(checkpoint)
    model = MaskFormer(resolve_preset(state, preset, checkpoint.path)).eval()
    load_state_strict(model, state, checkpoint.path)
    return model, checkpoint
