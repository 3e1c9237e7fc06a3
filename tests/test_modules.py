"""Building blocks and inference of the reference against hand-written numpy and hand-built cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy_reference import bilinear_resize, sigmoid, softmax

from mfport.core.presets import PRESETS
from mfport.torch_reference.backbone import FrozenBatchNorm2d
from mfport.torch_reference.maskformer import MaskFormer, panoptic_inference, semantic_inference
from mfport.torch_reference.position_encoding import PositionEmbeddingSine


def test_frozen_bn_both_paths_equal_numpy():
    rng = np.random.default_rng(0)
    bn = FrozenBatchNorm2d(4)
    stats = {k: rng.uniform(0.5, 2.0, 4).astype(np.float32) for k in ("weight", "bias", "running_mean", "running_var")}
    for k, v in stats.items():
        getattr(bn, k).copy_(torch.from_numpy(v))
    x = rng.normal(0, 3, size=(2, 4, 5, 6)).astype(np.float32)
    expected = ((x - stats["running_mean"][:, None, None]) / np.sqrt(stats["running_var"][:, None, None] + 1e-5)
                * stats["weight"][:, None, None] + stats["bias"][:, None, None])
    np.testing.assert_allclose(bn(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-5)
    with_grad = bn(torch.from_numpy(x).requires_grad_()).detach().numpy()
    np.testing.assert_allclose(with_grad, expected, rtol=1e-5, atol=1e-5)
    assert sorted(bn.state_dict()) == ["bias", "running_mean", "running_var", "weight"]
    assert list(bn.parameters()) == []


def test_sine_position_encoding_equals_formula():
    height, width, feats = 5, 7, 8
    pos = PositionEmbeddingSine(num_pos_feats=feats)(torch.zeros(1, 3, height, width))[0].numpy()
    assert pos.shape == (2 * feats, height, width)
    for y in range(height):
        for x in range(width):
            y_embed = (y + 1) / (height + 1e-6) * 2 * math.pi
            x_embed = (x + 1) / (width + 1e-6) * 2 * math.pi
            for i in range(feats):
                dim_t = 10000 ** (2 * (i // 2) / feats)
                trig = math.sin if i % 2 == 0 else math.cos
                # float32 sin/cos of arguments up to 2*pi: ~1e-7 off the float64 value; 1e-5 is a 100x margin.
                assert pos[i, y, x] == pytest.approx(trig(y_embed / dim_t), abs=1e-5)
                assert pos[feats + i, y, x] == pytest.approx(trig(x_embed / dim_t), abs=1e-5)


@pytest.mark.parametrize("preset_name, expected", [("r50_ade20k", (64, 96)), ("r50_6enc_coco_panoptic", (50, 70))])
def test_preprocess_normalises_and_pads_bottom_right(preset_name, expected):
    model = MaskFormer(PRESETS[preset_name])
    images = [torch.full((3, 50, 70), 200.0), torch.full((3, 40, 65), 10.0)]
    padded, sizes = model.preprocess(images)
    assert sizes == [(50, 70), (40, 65)]
    assert tuple(padded.shape) == (2, 3, *expected)
    mean, std = np.array(PRESETS[preset_name].pixel_mean), np.array(PRESETS[preset_name].pixel_std)
    np.testing.assert_allclose(padded[1, :, 0, 0].numpy(), (10.0 - mean) / std, rtol=1e-6)
    assert float(padded[1, :, 40:].abs().max()) == 0.0 and float(padded[1, :, :, 65:].abs().max()) == 0.0


def test_semantic_inference_equals_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(7, 5)).astype(np.float32)
    masks = rng.normal(size=(7, 9, 11)).astype(np.float32)
    expected = np.einsum("qc,qhw->chw", softmax(logits)[:, :-1], sigmoid(masks))
    got = semantic_inference(torch.from_numpy(logits), torch.from_numpy(masks)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _logits_for(classes: list[int], num_classes: int, confidence: float) -> np.ndarray:
    """Logits whose softmax puts `confidence` on the given class (the rest spread evenly)."""
    logits = np.zeros((len(classes), num_classes + 1), np.float32)
    rest = (1 - confidence) / num_classes
    for q, c in enumerate(classes):
        logits[q] = np.log(rest)
        logits[q, c] = np.log(confidence)
    return logits


def test_panoptic_inference_hand_built_case():
    # 4 classes: 0, 1 things; 2, 3 stuff. Queries on a 4x6 image (mask logit 6 = on, -6 = off):
    #   q0 thing 0 on columns 0-1; q1 stuff 2 on columns 2-3; q2 stuff 2 on columns 4-5 (merges into q1's
    #   segment); q3 "no object" everywhere (dropped); q4 thing 1 at score 0.5 (below 0.8, dropped);
    #   q5 thing 1 at 0.9 on columns 0-2 but outscored everywhere (wins no pixel);
    #   q6 thing 1 at 0.99 wins pixel (0, 0) only, of the 7 it claims (1/7 < 0.8: no segment, pixel stays void).
    num_classes, thing_ids = 4, frozenset({0, 1})
    logits = np.concatenate([_logits_for([0, 2, 2], num_classes, 0.95), _logits_for([4], num_classes, 0.95),
                             _logits_for([1], num_classes, 0.5), _logits_for([1], num_classes, 0.9),
                             _logits_for([1], num_classes, 0.99)])
    masks = np.full((7, 4, 6), -6.0, np.float32)
    masks[0, :, 0:2] = 6.0
    masks[1, :, 2:4] = 6.0
    masks[2, :, 4:6] = 6.0
    masks[3] = 6.0
    masks[4] = 6.0
    masks[5, :, 0:3] = 5.0
    masks[6, 1:, 0:2] = 1.0  # sigmoid 0.73: counts in q6's own area, loses to q0 (0.99 * 0.73 < 0.95 * 0.998)
    masks[6, 0, 0] = 8.0
    seg, segments = panoptic_inference(torch.from_numpy(logits), torch.from_numpy(masks), num_classes,
                                       thing_ids, object_mask_threshold=0.8, overlap_threshold=0.8)
    expected = np.zeros((4, 6), np.int32)
    expected[:, 0:2] = 1
    expected[0, 0] = 0
    expected[:, 2:6] = 2
    np.testing.assert_array_equal(seg.numpy(), expected)
    assert [(s.id, s.category_id, s.isthing, s.area) for s in segments] == [(1, 0, True, 7), (2, 2, False, 16)]


def test_panoptic_inference_thresholds_come_from_the_call():
    num_classes = 3
    logits = _logits_for([0], num_classes, 0.75)
    masks = np.full((1, 3, 3), 5.0, np.float32)
    args = (torch.from_numpy(logits), torch.from_numpy(masks), num_classes, frozenset({0}))
    assert panoptic_inference(*args, object_mask_threshold=0.8, overlap_threshold=0.8)[1] == []
    seg, segments = panoptic_inference(*args, object_mask_threshold=0.7, overlap_threshold=0.8)
    assert len(segments) == 1 and int(seg.min()) == 1


@pytest.mark.parametrize("preset_name", ["r50_ade20k", "r50_6enc_coco_panoptic"])
def test_inference_crops_padding_and_resizes_like_the_original(preset_name):
    torch.manual_seed(0)
    preset = PRESETS[preset_name].with_overrides(dec_layers=2)
    model = MaskFormer(preset).eval()
    images = [torch.rand(3, 45, 70) * 255]
    with torch.no_grad():
        outputs = model(images)
        result = model.inference(images, output_sizes=[(90, 140)])[0]
    padded_h, padded_w = model.preprocess(images)[0].shape[-2:]
    logits = outputs["pred_logits"][0].numpy().astype(np.float64)
    masks = bilinear_resize(outputs["pred_masks"][0].numpy().astype(np.float64), padded_h, padded_w)
    if preset.panoptic_on:  # crop + resize the mask logits, then combine
        cropped = bilinear_resize(masks[:, :45, :70], 90, 140)
        expected = np.einsum("qc,qhw->chw", softmax(logits)[:, :-1], sigmoid(cropped))
    else:  # combine on the padded grid, then crop + resize the class scores
        semseg = np.einsum("qc,qhw->chw", softmax(logits)[:, :-1], sigmoid(masks))
        expected = bilinear_resize(semseg[:, :45, :70], 90, 140)
    assert tuple(result["sem_seg"].shape) == (preset.num_classes, 90, 140)
    np.testing.assert_allclose(result["sem_seg"].numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [(64, 96), (75, 101)])
def test_forward_shapes_and_deep_supervision(size):
    torch.manual_seed(0)
    model = MaskFormer(PRESETS["r50_6enc_coco_panoptic"]).eval()
    with torch.no_grad():
        out = model([torch.rand(3, *size) * 255, torch.rand(3, *size) * 255])
    stride4 = (math.ceil(math.ceil(size[0] / 2) / 2), math.ceil(math.ceil(size[1] / 2) / 2))
    assert tuple(out["pred_logits"].shape) == (2, 100, 134)
    assert tuple(out["pred_masks"].shape) == (2, 100, *stride4)
    assert len(out["aux_outputs"]) == 5
    assert all(tuple(a["pred_masks"].shape) == (2, 100, *stride4) for a in out["aux_outputs"])
