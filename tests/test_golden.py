"""Drift guard: both models against the golden outputs stored in parity/fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import torch
from tf_helpers import converted_tf_model

from parity.fixtures import GOLDEN, IMAGE_SEED, SEED, golden_path
from torch_reference.loading import load_maskformer
from torch_reference.synthetic_images import synthetic_images


def _relative_max_error(reference: np.ndarray, value: np.ndarray) -> float:
    return float(np.abs(reference - value).max() / np.abs(reference).max())


@pytest.mark.parametrize("preset_name", list(GOLDEN))
def test_reference_and_tf_model_reproduce_golden_outputs(seeded_checkpoint, preset_name):
    golden = np.load(golden_path(preset_name))
    assert int(golden["seed"]) == SEED
    np.testing.assert_array_equal(golden["images"], synthetic_images(IMAGE_SEED, *GOLDEN[preset_name]))
    checkpoint = seeded_checkpoint(preset_name, SEED)
    torch_model, _ = load_maskformer(checkpoint)
    with torch.no_grad():
        out = torch_model(list(torch.from_numpy(golden["images"]).permute(0, 3, 1, 2).float()))
    # The reference against itself over time: float32 noise of another machine or library build only.
    assert _relative_max_error(golden["pred_logits"], out["pred_logits"].numpy()) <= 1e-5
    assert _relative_max_error(golden["pred_masks"], out["pred_masks"].numpy()) <= 1e-5
    assert _relative_max_error(golden["aux_4_logits"], out["aux_outputs"][4]["pred_logits"].numpy()) <= 1e-5
    tf_model = converted_tf_model(checkpoint, preset_name)
    tf_out = tf_model.predict_raw(tf.constant(golden["images"], tf.float32))
    assert _relative_max_error(golden["pred_logits"], tf_out["pred_logits"].numpy()) <= 1e-4
    assert _relative_max_error(golden["pred_masks"], tf_out["pred_masks"].numpy()) <= 1e-4
