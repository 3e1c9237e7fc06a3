"""Seeded original-format checkpoints: deterministic bytes, realistic activations, distinct queries."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from converter.checkpoint_io import read_checkpoint
from torch_reference.loading import load_maskformer
from torch_reference.presets import PRESETS
from torch_reference.seeded_init import write_seeded_checkpoint
from torch_reference.synthetic_images import synthetic_images


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_weights(seeded_checkpoint, tmp_path):
    first = seeded_checkpoint("r50_6enc_coco_panoptic", 0)
    again = tmp_path / "again.pkl"
    torch.set_num_threads(1)  # a different thread count must not change the calibrated statistics
    try:
        write_seeded_checkpoint(PRESETS["r50_6enc_coco_panoptic"], 0, again)
    finally:
        torch.set_num_threads(2)
    assert _sha(first) == _sha(again)
    other = seeded_checkpoint("r50_6enc_coco_panoptic", 1)
    a, b = read_checkpoint(first).tensors, read_checkpoint(other).tensors
    assert not np.array_equal(a["backbone.res4.2.conv2.weight"], b["backbone.res4.2.conv2.weight"])
    assert not np.array_equal(a["backbone.res4.2.conv2.norm.running_var"], b["backbone.res4.2.conv2.norm.running_var"])


@pytest.mark.parametrize("preset_name", ["r50_ade20k", "r101_6enc_coco_panoptic"])
def test_activations_stay_in_a_sane_range_through_every_stage(seeded_checkpoint, preset_name):
    model, _ = load_maskformer(seeded_checkpoint(preset_name))
    # Images the calibration never saw, at a size not divisible by 32.
    images = list(torch.from_numpy(synthetic_images(99, 2, 300, 404)).permute(0, 3, 1, 2).float())
    stds = {}

    def record(name):
        return lambda module, inputs, output: stds.__setitem__(name, float(output.std()))

    for block_name, block in model.backbone.named_modules():
        if block_name.startswith("res") and block_name.count(".") == 1:  # every bottleneck block, e.g. res4.17
            block.register_forward_hook(record(block_name))
    with torch.no_grad():
        padded, _ = model.preprocess(images)
        features = model.backbone(padded)
        outputs = model.forward_padded(padded)
    for name in ("res2", "res3", "res4", "res5"):
        assert 0.3 < float(features[name].std()) < 5.0, (name, float(features[name].std()))
    assert len(stds) == sum(model.preset.stage_blocks)
    assert max(stds.values()) < 5.0 and min(stds.values()) > 0.1, stds
    logits, masks = outputs["pred_logits"], outputs["pred_masks"]
    assert torch.isfinite(logits).all() and torch.isfinite(masks).all()
    assert 0.5 < float(masks.std()) < 50.0
    # Queries stay distinct: many different queries win pixels, and predictions are not all one class.
    winners = masks[0].argmax(0).unique().numel()
    classes = logits[0].argmax(-1).unique().numel()
    assert winners >= 20, winners
    assert classes >= 3, classes
    top_prob = logits.softmax(-1).max(-1).values
    assert float(top_prob.mean()) > 0.2  # confident enough that thresholds are exercised
