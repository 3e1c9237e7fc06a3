"""Facts of the Swin Transformer that both models and the converter share."""

from __future__ import annotations

import numpy as np


def relative_position_index(window: int) -> np.ndarray:
    """int64 [w^2, w^2]: for tokens a, b of a window (row-major), the row of the relative position bias table
    holding their offset: (dy + w - 1) * (2w - 1) + (dx + w - 1). Released checkpoints store it as a buffer."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    offsets = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return (offsets[..., 0] * (2 * window - 1) + offsets[..., 1]).astype(np.int64)


def check_index_buffers(state: dict[str, np.ndarray], window: int, source: str) -> None:
    """Every `*.attn.relative_position_index` of a checkpoint must equal the index of its window size."""
    from mfport.core.errors import CheckpointError

    expected = relative_position_index(window)
    for key, value in state.items():
        if key.endswith("attn.relative_position_index") and not (
                value.shape == expected.shape and np.array_equal(np.asarray(value, np.int64), expected)):
            raise CheckpointError(f"{source}: '{key}' is not the relative position index of a {window}x{window} "
                                  "window (the file's window size differs, or the buffer is corrupted)")
