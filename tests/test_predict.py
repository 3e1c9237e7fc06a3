"""`mfport predict`: the original predictor's test-time resize, overlays and raw maps at the image's size, equal
to the PyTorch reference predictor's; the SavedModel's predict_original signature likewise, TensorFlow alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import torch
from conftest import one_line_error, run_cli
from PIL import Image

from mfport.core.preprocessing import resize_like_predictor, shortest_edge_size
from mfport.core.synthetic_images import synthetic_images


def test_shortest_edge_rule_equals_detectron2s():
    """ResizeShortestEdge.get_output_shape, worked by hand: short side to 512 unless the long side passes 2048."""
    assert shortest_edge_size(1200, 1600, 512, 2048) == (512, 683)  # 1600 * 512 / 1200 = 682.67 -> 683
    assert shortest_edge_size(1600, 1200, 512, 2048) == (683, 512)
    assert shortest_edge_size(100, 1000, 512, 2048) == (205, 2048)  # 5120 > 2048: scaled to 2048 instead
    assert shortest_edge_size(480, 640, 800, 1333) == (800, 1067)  # 1066.67 -> 1067
    image = synthetic_images(0, 1, 60, 80)[0]
    resized = resize_like_predictor(image, 30, 1000)
    expected = np.asarray(Image.fromarray(image).resize((40, 30), Image.BILINEAR))
    assert np.array_equal(resized, expected)


def _reference_predictor(torch_model: object, image: np.ndarray) -> dict:
    """The original demo's DefaultPredictor: the resize, the network, maps at the image's own size."""
    preset = torch_model.preset
    resized = resize_like_predictor(image, preset.test_min_size, preset.test_max_size)
    tensor = torch.from_numpy(resized.astype(np.float32)).permute(2, 0, 1)
    return torch_model.inference([tensor], output_sizes=[image.shape[:2]], object_mask_threshold=0.3,
                                 overlap_threshold=0.5)[0]


@pytest.mark.heavy
@pytest.mark.numerics
def test_predict_runs_at_the_test_size_and_writes_maps_at_the_image_size(models, converted_dir, tmp_path):
    """A 960x720 photo with an ADE20K preset: the network sees 512 on the short side, the maps come back at
    960x720, and they agree with the reference predictor's on >= 99.9 % of pixels (both float32: only
    pixels whose top-2 class scores tie within float32 noise may differ)."""
    torch_model, _ = models("r50_ade20k")
    image = synthetic_images(5, 1, 720, 960)[0]  # the network input is 512x683 as for 1600x1200
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    result = run_cli("predict", path, "--model", converted_dir("r50_ade20k"), "-o", tmp_path / "pred",
                     "--object-mask-threshold", "0.3", "--overlap-threshold", "0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "512x683" in result.stdout  # the network input, in the table
    semantic = np.asarray(Image.open(tmp_path / "pred" / "photo_semantic_map.png")).astype(np.int64)
    rgb = np.asarray(Image.open(tmp_path / "pred" / "photo_panoptic_map.png")).astype(np.int64)
    panoptic = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    segments = json.loads((tmp_path / "pred" / "photo_segments.json").read_text())["segments_info"]
    assert semantic.shape == (720, 960) and panoptic.shape == (720, 960)
    for overlay in ("photo_semantic.png", "photo_panoptic.png"):
        with Image.open(tmp_path / "pred" / overlay) as img:
            assert img.format == "PNG" and img.size[0] > 1000
    expected = _reference_predictor(torch_model, image)
    assert np.mean(semantic == expected["sem_seg"].argmax(0).numpy()) >= 0.999
    seg, torch_segments = expected["panoptic_seg"]
    assert np.mean(panoptic == seg.numpy()) >= 0.999
    assert [(s["id"], s["category_id"]) for s in segments] == [(s.id, s.category_id) for s in torch_segments]
    assert set(np.unique(panoptic)) - {0} == {s["id"] for s in segments}
    # --no-resize: the network at the image's own size (the earlier behaviour), still maps at that size.
    small = tmp_path / "small.png"
    Image.fromarray(image[:150, :203]).save(small)
    plain = run_cli("predict", small, "--model", converted_dir("r50_ade20k"), "-o", tmp_path / "p2", "--no-resize")
    assert plain.returncode == 0 and "150x203" in plain.stdout


@pytest.mark.slow
@pytest.mark.numerics
def test_saved_model_predict_original_agrees_with_the_reference_predictor(models, converted_dir, tmp_path):
    """The SavedModel's in-graph resize (bilinear with antialiasing, rounded to uint8 as PIL) against PIL's:
    the final maps agree with the reference predictor on >= 99.9 % of pixels."""
    from mfport.tf_maskformer.serving.export import export_saved_model, resize_shortest_edge

    torch_model, tf_model = models("r50_ade20k")
    image = synthetic_images(6, 1, 900, 700)[0]
    pil = resize_like_predictor(image, 512, 2048)
    ours = resize_shortest_edge(tf.constant(image), 512, 2048).numpy()
    assert ours.shape == pil.shape and np.abs(ours - pil).max() <= 2  # grey levels: PIL's fixed-point rounding
    export_saved_model(tf_model, tmp_path / "sm")
    loaded = tf.saved_model.load(str(tmp_path / "sm")).signatures["predict_original"]
    out = loaded(image=tf.constant(image))
    expected = _reference_predictor(torch_model, image)
    assert out["semantic_map"].shape == (900, 700)
    assert np.mean(out["semantic_map"].numpy() == expected["sem_seg"].argmax(0).numpy()) >= 0.999


@pytest.mark.heavy
def test_predict_names_a_bad_image_and_a_bad_model(converted_dir, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    one_line_error(run_cli("predict", bad, "--model", converted_dir("r50_ade20k"), "-o", tmp_path / "pred"),
                   "broken.png: not a readable PNG/JPEG image")
    one_line_error(run_cli("predict", bad, "--model", tmp_path / "nowhere"), "not a converted model directory")
