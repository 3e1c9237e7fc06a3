"""Strict loading of original-format checkpoints into the PyTorch reference MaskFormer."""

from __future__ import annotations

import os

import numpy as np
import torch

from mfport.core.architecture import detect_preset, resolve_preset
from mfport.core.checkpoint_io import Checkpoint, read_checkpoint
from mfport.core.errors import CheckpointError
from mfport.core.labels import LabelSet
from mfport.core.naming import compare_keys, original_live_state
from mfport.core.presets import MaskFormerPreset
from mfport.core.swin import check_index_buffers
from mfport.torch_reference.maskformer import MaskFormer


class CheckpointMismatchError(CheckpointError):
    """Missing, unexpected or mis-shaped keys; str() is one line, `.report` names every key."""


def load_state_strict(model: MaskFormer, state: dict[str, np.ndarray], source: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mismatch = compare_keys(state, expected)
    if not mismatch.ok:
        detected = detect_preset(state)
        hint = f"; the file looks like preset '{detected.name}'" if detected is not None else ""
        raise CheckpointMismatchError(
            f"{source}: does not fit preset '{model.preset.name}': {mismatch.summary()}{hint}",
            report=mismatch.report())
    if model.preset.backbone.kind == "swin":
        check_index_buffers(state, model.preset.backbone.window_size, source)
    with torch.no_grad():
        model.load_state_dict({k: torch.from_numpy(v if v.dtype == np.int64 else np.asarray(v, np.float32))
                               for k, v in state.items()},
                              strict=True)


def load_maskformer(path: str | os.PathLike[str], preset: MaskFormerPreset | str | None = None,
                    labels: LabelSet | None = None) -> tuple[MaskFormer, Checkpoint]:
    """Read a .pkl/.pth/.pt/.safetensors checkpoint (either naming era, or HF) into an eval-mode MaskFormer.

    Without `preset`, the architecture is detected from the keys (a released preset, or a custom one built
    from them). Fails on any key difference.
    """
    checkpoint = read_checkpoint(path)
    state = original_live_state(checkpoint).tensors
    model = MaskFormer(resolve_preset(state, preset, checkpoint.path, labels)).eval()
    load_state_strict(model, state, checkpoint.path)
    return model, checkpoint
