"""Shared helpers of the TF tests: converted seeded models and independent shape arithmetic."""

from __future__ import annotations

import functools

import numpy as np

from converter.checkpoint_io import read_checkpoint
from converter.naming import original_live_state
from converter.registry import tf_variable_path, torch_to_tf
from tf_maskformer.modeling.factory import build_maskformer
from torch_reference.presets import get_preset


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def stride_sizes(size: int) -> dict[str, int]:
    """Spatial size after stem (conv 7/2/3 + pool 3/2/1) and each stride-2 stage (3x3/2 pad 1)."""
    res2 = conv_out(conv_out(size, 7, 2, 3), 3, 2, 1)
    res3 = conv_out(res2, 3, 2, 1)
    res4 = conv_out(res3, 3, 2, 1)
    return {"res2": res2, "res3": res3, "res4": res4, "res5": conv_out(res4, 3, 2, 1)}


def padded(size: int, divisor: int) -> int:
    return -(-size // divisor) * divisor if divisor > 1 else size


@functools.cache
def _converted_values(checkpoint_path: str, preset_name: str) -> dict[str, np.ndarray]:
    model = build_maskformer(get_preset(preset_name))
    shapes = {tf_variable_path(v.name): tuple(v.shape) for v in model.variables}
    state, _ = original_live_state(read_checkpoint(checkpoint_path))
    return torch_to_tf(state, shapes, get_preset(preset_name))[0]


def converted_tf_model(checkpoint_path: str, preset_name: str) -> object:
    """A fresh TF MaskFormer holding the converted weights of a seeded checkpoint."""
    model = build_maskformer(get_preset(preset_name))
    values = _converted_values(str(checkpoint_path), preset_name)
    for variable in model.variables:
        variable.assign(values[tf_variable_path(variable.name)])
    return model
