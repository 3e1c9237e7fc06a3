"""`mfport predict` on image files: overlays, raw maps equal to the PyTorch reference's inference."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import torch
from conftest import mfport_command
from PIL import Image

from converter.convert import convert_to_tf
from torch_reference.loading import load_maskformer


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*mfport_command(), *args], capture_output=True, text=True, timeout=600)


def test_predict_writes_overlays_and_maps_matching_pytorch(seeded_checkpoint, tmp_path):
    checkpoint = seeded_checkpoint("r50_6enc_coco_panoptic")
    convert_to_tf(checkpoint, tmp_path / "model")
    assert run("sample-images", "-o", str(tmp_path / "imgs"), "--seed", "5", "--count", "1",
               "--size", "150", "203").returncode == 0
    image_path = tmp_path / "imgs" / "sample_5_0.png"
    result = run("predict", str(image_path), "--model", str(tmp_path / "model"), "-o", str(tmp_path / "pred"),
                 "--object-mask-threshold", "0.3", "--overlap-threshold", "0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    semantic = np.asarray(Image.open(tmp_path / "pred" / "sample_5_0_semantic_map.png")).astype(np.int64)
    rgb = np.asarray(Image.open(tmp_path / "pred" / "sample_5_0_panoptic_map.png")).astype(np.int64)
    panoptic = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    segments = json.loads((tmp_path / "pred" / "sample_5_0_segments.json").read_text())["segments_info"]
    for overlay in ("sample_5_0_semantic.png", "sample_5_0_panoptic.png"):
        with Image.open(tmp_path / "pred" / overlay) as img:
            assert img.format == "PNG" and img.size[0] > 203

    torch_model, _ = load_maskformer(checkpoint)
    image = torch.from_numpy(np.array(Image.open(image_path))).permute(2, 0, 1).float()
    expected = torch_model.inference([image], object_mask_threshold=0.3, overlap_threshold=0.5)[0]
    assert semantic.shape == (150, 203)
    assert np.mean(semantic == expected["sem_seg"].argmax(0).numpy()) >= 0.999
    seg, torch_segments = expected["panoptic_seg"]
    assert np.mean(panoptic == seg.numpy()) >= 0.999
    assert [(s["id"], s["category_id"]) for s in segments] == [(s.id, s.category_id) for s in torch_segments]
    assert set(np.unique(panoptic)) - {0} == {s["id"] for s in segments}


def test_predict_names_a_bad_image(seeded_checkpoint, tmp_path):
    convert_to_tf(seeded_checkpoint("r50_ade20k"), tmp_path / "model")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    result = run("predict", str(bad), "--model", str(tmp_path / "model"), "-o", str(tmp_path / "pred"))
    assert result.returncode == 1 and "broken.png: not a readable PNG/JPEG image" in result.stderr
    missing = run("predict", str(bad), "--model", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "not a converted model directory" in missing.stderr
