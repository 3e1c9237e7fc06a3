"""Presets reproduce the original checkpoints' key sets, shapes and published parameter counts."""

from __future__ import annotations

import re

import pytest
from conftest import DATA

from converter.architecture import detect_preset, parameter_count
from converter.naming import to_released
from torch_reference.maskformer import MaskFormer
from torch_reference.presets import PRESETS


def reference_keys(filename: str) -> dict[str, tuple[int, ...]]:
    """Parse the original key lists: `name (d0, d1, ...)` per line."""
    keys = {}
    for line in (DATA / filename).read_text().splitlines():
        if line.strip():
            name, shape = line.split(" ", 1)
            keys[name] = tuple(int(d) for d in re.findall(r"\d+", shape))
    return keys


def released_state_shapes(preset_name: str) -> dict[str, tuple[int, ...]]:
    model = MaskFormer(PRESETS[preset_name])
    return {to_released(k): tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("preset_name, filename", [
    ("r50_ade20k", "keys_R50_ade20k_released.txt"),
    ("r50_6enc_coco_panoptic", "keys_R50_coco_panoptic_released.txt"),
])
def test_released_key_set_and_shapes_equal_original(preset_name, filename):
    expected = reference_keys(filename)
    assert len(expected) in (410, 482)
    assert released_state_shapes(preset_name) == expected


@pytest.mark.parametrize("r101, r50, filename", [
    ("r101_ade20k", "r50_ade20k", "keys_R50_ade20k_released.txt"),
    ("r101_6enc_coco_panoptic", "r50_6enc_coco_panoptic", "keys_R50_coco_panoptic_released.txt"),
])
def test_r101_twin_is_r50_with_23_res4_blocks(r101, r50, filename):
    # R101 differs from R50 only by res4 blocks 6..22, each shaped like res4 block 5.
    expected = reference_keys(filename)
    for block in range(6, 23):
        for key, shape in list(expected.items()):
            if key.startswith("backbone.res4.5."):
                expected[key.replace("res4.5.", f"res4.{block}.")] = shape
    assert released_state_shapes(r101) == expected


@pytest.mark.parametrize("preset_name", list(PRESETS))
def test_parameter_count_equals_published(preset_name):
    preset = PRESETS[preset_name]
    model = MaskFormer(preset)
    n_params = sum(p.numel() for p in model.parameters())
    assert round(n_params / 1e6, 2) == preset.published_params_m
    # The checkpoint-side count (no model built) agrees with the module's parameters.
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert parameter_count(state) == n_params


@pytest.mark.parametrize("preset_name", list(PRESETS))
def test_preset_detected_from_keys_in_both_eras(preset_name):
    state = {k: v.numpy() for k, v in MaskFormer(PRESETS[preset_name]).state_dict().items()}
    assert detect_preset(state).name == preset_name
    assert detect_preset({to_released(k): v for k, v in state.items()}).name == preset_name


def test_no_object_is_last_and_thresholds_from_preset():
    coco, ade = PRESETS["r50_6enc_coco_panoptic"], PRESETS["r50_ade20k"]
    assert coco.no_object_index == 133 and ade.no_object_index == 150
    assert (coco.object_mask_threshold, coco.overlap_threshold, coco.size_divisibility) == (0.8, 0.8, 0)
    assert (ade.object_mask_threshold, ade.size_divisibility) == (0.7, 32)
    assert len(coco.thing_ids) == 80 and len(ade.thing_ids) == 100
    model = MaskFormer(coco)
    empty_weight = model.criterion.empty_weight
    assert empty_weight.shape == (134,) and float(empty_weight[-1]) == pytest.approx(0.1)
    assert float(empty_weight[:-1].min()) == 1.0
