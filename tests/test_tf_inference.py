"""TF semantic/panoptic inference give the PyTorch reference's results on identical raw outputs."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import torch

from mfport.core.presets import PRESETS
from mfport.tf_maskformer.modeling.inference import panoptic_inference as tf_panoptic
from mfport.tf_maskformer.modeling.inference import postprocess
from mfport.tf_maskformer.modeling.inference import semantic_inference as tf_semantic
from mfport.torch_reference.maskformer import MaskFormer as TorchMaskFormer
from mfport.torch_reference.maskformer import panoptic_inference as torch_panoptic


def _raw_outputs(seed: int, batch: int, queries: int, classes: int, height: int, width: int):
    """Confident, distinct queries whose masks are blobs, so thresholds and overlaps both matter."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, size=(batch, queries, classes + 1)).astype(np.float32)
    winners = rng.integers(0, classes + 1, size=(batch, queries))
    boost = rng.uniform(0, 9, size=(batch, queries))
    np.put_along_axis(logits, winners[..., None], (boost + 2)[..., None], axis=-1)
    yy, xx = np.mgrid[0:height, 0:width]
    masks = np.empty((batch, queries, height, width), np.float32)
    for b in range(batch):
        for q in range(queries):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            r = rng.uniform(3, max(height, width) / 2)
            masks[b, q] = (r - np.hypot(yy - cy, xx - cx)) * rng.uniform(0.3, 2.0)
    return logits, masks


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("thresholds", [(0.8, 0.8), (0.3, 0.5), (0.0, 0.2)])
def test_panoptic_maps_and_segments_equal_pytorch(seed, thresholds):
    classes, thing_ids = 12, frozenset(range(6))
    logits, masks = _raw_outputs(seed, 2, 30, classes, 37, 45)
    result = tf_panoptic(tf.constant(logits), tf.constant(masks), classes, thing_ids, *thresholds)
    for b in range(2):
        seg, segments = torch_panoptic(torch.from_numpy(logits[b]), torch.from_numpy(masks[b]), classes, thing_ids,
                                       *thresholds)
        np.testing.assert_array_equal(result["panoptic_seg"][b].numpy(), seg.numpy())
        ids, cats, areas = (result[k][b].numpy() for k in ("segment_id", "category", "area"))
        tf_segments = sorted((int(ids[q]), int(cats[q]), int(areas[q])) for q in range(30) if areas[q] > 0)
        assert tf_segments == [(s.id, s.category_id, s.area) for s in segments]


def test_panoptic_case_mix_is_meaningful():
    # Guard against a vacuous comparison: over the cases above there are things, stuff, void pixels,
    # and stuff queries merged into one segment.
    classes, thing_ids = 12, frozenset(range(6))
    things = stuff = merged = void_maps = 0
    for seed in range(6):
        for thresholds in [(0.8, 0.8), (0.3, 0.5), (0.0, 0.2)]:
            logits, masks = _raw_outputs(seed, 2, 30, classes, 37, 45)
            result = tf_panoptic(tf.constant(logits), tf.constant(masks), classes, thing_ids, *thresholds)
            ids, cats = result["segment_id"].numpy(), result["category"].numpy()
            for b in range(2):
                segment_ids = set(ids[b][ids[b] > 0].tolist())
                things += sum(1 for i in segment_ids if cats[b][ids[b] == i][0] in thing_ids)
                stuff += sum(1 for i in segment_ids if cats[b][ids[b] == i][0] not in thing_ids)
                merged += int((ids[b] > 0).sum()) - len(segment_ids)
                void_maps += int((result["panoptic_seg"][b].numpy() == 0).any())
    assert things >= 20 and stuff >= 20 and merged >= 3 and void_maps >= 20, (things, stuff, merged, void_maps)


def test_semantic_scores_equal_pytorch():
    logits, masks = _raw_outputs(3, 2, 20, 9, 21, 33)
    got = tf_semantic(tf.constant(logits), tf.constant(masks)).numpy()
    for b in range(2):
        from mfport.torch_reference.maskformer import semantic_inference

        expected = semantic_inference(torch.from_numpy(logits[b]), torch.from_numpy(masks[b])).numpy()
        np.testing.assert_allclose(got[b], expected.transpose(1, 2, 0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset_name", ["r50_ade20k", "r50_6enc_coco_panoptic"])
def test_postprocess_crop_resize_order_equals_pytorch(preset_name, monkeypatch):
    # Feed both pipelines the same raw outputs (the torch network is bypassed) on a padded input.
    preset = PRESETS[preset_name]
    logits, masks = _raw_outputs(5, 1, 100, preset.num_classes, 24, 32)
    model = TorchMaskFormer(preset).eval()
    monkeypatch.setattr(model, "forward_padded", lambda padded: {"pred_logits": torch.from_numpy(logits),
                                                                 "pred_masks": torch.from_numpy(masks)})
    image = torch.zeros(3, 90, 120) if preset.size_divisibility > 1 else torch.zeros(3, 96, 128)
    torch_result = model.inference([image], output_sizes=[(135, 180)], object_mask_threshold=0.3,
                                   overlap_threshold=0.5)[0]
    padded = tuple(model.preprocess([image])[0].shape[-2:])
    tf_result = postprocess({"pred_logits": tf.constant(logits), "pred_masks": tf.constant(masks)}, preset,
                            padded, tuple(image.shape[-2:]), (135, 180), 0.3, 0.5)
    np.testing.assert_allclose(tf_result["sem_seg"][0].numpy(), torch_result["sem_seg"].numpy().transpose(1, 2, 0),
                               rtol=1e-4, atol=1e-5)
    # Same float32 logits into both post-processings: only pixels whose top-2 scores tie within rounding (a
    # handful of 24300) may flip; 1e-4 allows two such pixels, a wrong resize or softmax moves thousands.
    agreement = np.mean(tf_result["semantic_map"][0].numpy() == torch_result["sem_seg"].argmax(0).numpy())
    assert agreement >= 0.9999
    seg, segments = torch_result["panoptic_seg"]
    assert np.mean(tf_result["panoptic_seg"][0].numpy() == seg.numpy()) >= 0.9999
    assert len(segments) > 0


def test_a_bilinear_resize_to_its_own_size_is_the_identity_in_both_frameworks():
    """The TF inference skips a resize whose static target equals its input size (the crop of an unpadded batch
    to its own output size); both resizes it stands for return their input bit for bit."""
    from mfport.tf_maskformer.modeling.resize import bilinear_resize

    x = np.random.default_rng(0).normal(0, 30, size=(2, 37, 53, 5)).astype(np.float32)
    resized_tf = tf.image.resize(tf.constant(x), (37, 53), method="bilinear", antialias=False).numpy()
    resized_torch = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(37, 53),
                                                    mode="bilinear", align_corners=False).numpy()
    np.testing.assert_array_equal(resized_tf, x)
    np.testing.assert_array_equal(resized_torch.transpose(0, 2, 3, 1), x)
    np.testing.assert_array_equal(bilinear_resize(tf.constant(x), (37, 53)).numpy(), x)
    np.testing.assert_array_equal(bilinear_resize(tf.constant(x), (38, 53)).numpy(),
                                  tf.image.resize(tf.constant(x), (38, 53), method="bilinear").numpy())


@pytest.mark.parametrize("preset_name", ["r50_ade20k", "r50_6enc_coco_panoptic"])
def test_postprocess_parts_on_request_equal_the_whole(preset_name):
    """semantic=False (TF, PyTorch) and panoptic=False (PyTorch), what the parity rows ask for: the parts computed
    are those of the whole post-processing, the others absent."""
    preset = PRESETS[preset_name]
    logits, masks = _raw_outputs(7, 2, 50, preset.num_classes, 24, 32)
    tf_outputs = {"pred_logits": tf.constant(logits), "pred_masks": tf.constant(masks)}
    whole = postprocess(tf_outputs, preset, (96, 128), (90, 120), None, 0.3, 0.5)
    panoptic_only = postprocess(tf_outputs, preset, (96, 128), (90, 120), None, 0.3, 0.5, semantic=False)
    assert set(panoptic_only) == set(whole) - {"sem_seg", "semantic_map"} and "sem_seg" in whole
    for key, value in panoptic_only.items():
        np.testing.assert_array_equal(value.numpy(), whole[key].numpy(), err_msg=key)
    model = TorchMaskFormer(preset).eval()
    torch_outputs = {"pred_logits": torch.from_numpy(logits), "pred_masks": torch.from_numpy(masks)}
    sizes = [(90, 120)] * 2
    full = model.postprocess(torch_outputs, (96, 128), sizes, object_mask_threshold=0.3, overlap_threshold=0.5)
    semantic = model.postprocess(torch_outputs, (96, 128), sizes, panoptic=False)
    panoptic = model.postprocess(torch_outputs, (96, 128), sizes, object_mask_threshold=0.3, overlap_threshold=0.5,
                                 semantic=False)
    for b in range(2):
        assert set(semantic[b]) == {"sem_seg"} and set(panoptic[b]) == {"panoptic_seg"}
        torch.testing.assert_close(semantic[b]["sem_seg"], full[b]["sem_seg"], rtol=0, atol=0)
        torch.testing.assert_close(panoptic[b]["panoptic_seg"][0], full[b]["panoptic_seg"][0], rtol=0, atol=0)
        assert panoptic[b]["panoptic_seg"][1] == full[b]["panoptic_seg"][1]
