"""The mfport command: presets, init-checkpoint, inspect, usage and one-line errors (run in-process)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import light_variant, one_line_error, run_cli

from mfport.core.presets import PRESETS
from mfport.torch_reference.maskformer import MaskFormer


@pytest.mark.heavy
def test_init_checkpoint_then_inspect(tmp_path):
    out = tmp_path / "ade.pkl"
    result = run_cli("init-checkpoint", "--preset", "r101c_ade20k", "--seed", "3", "-o", out)
    assert result.returncode == 0, result.stderr
    assert out.exists() and not list(tmp_path.glob(".*.tmp"))
    info = json.loads(run_cli("inspect", out, "--json").stdout)
    with torch.device("meta"):
        model = MaskFormer(PRESETS["r101c_ade20k"])
    assert info["format"] == "detectron2-pkl" and info["naming_era"] == "released"
    assert info["detected_preset"] == "r101c_ade20k" and not info["custom_architecture"]
    assert info["architecture"]["backbone"] == "R101c" and info["class_names"] == "ade20k_150"
    assert info["tensor_count"] == len(model.state_dict())
    assert info["parameter_count"] == sum(p.numel() for p in model.parameters())
    assert info["dtypes"] == ["float32"] and info["nonfinite"] == {}
    assert info["tensor_bytes"] == 4 * sum(v.numel() for v in model.state_dict().values())
    table = run_cli("inspect", out)
    assert table.returncode == 0
    for text in ("detectron2-pkl", "released", "r101c_ade20k", "ade20k-150/maskformer_R101c_bs16_160k", "R101c",
                 "float32", "MiB", "non-finite values", "none"):
        assert text in table.stdout
    one_line_error(run_cli("init-checkpoint", "--preset", "r50_ade20k", "--seed", "4", "-o", out),
                   "exists; pass --force")


def test_presets_are_listed_grouped_by_data_set():
    table = run_cli("presets").stdout
    for name, preset in PRESETS.items():
        assert name in table and preset.original_config in table
    assert table.index("r50_ade20k") < table.index("r50_6enc_ade20k_panoptic") < table.index("r50_ade20k_full")
    listing = json.loads(run_cli("presets", "--json").stdout)
    assert set(listing) == set(PRESETS) and listing["swin_l_coco_panoptic"]["backbone"]["window_size"] == 12
    assert listing["r101c_cityscapes"]["published_result"] == "79.7 mIoU"


def test_bad_arguments_are_named(tmp_path):
    result = run_cli("init-checkpoint", "--preset", "r42_nowhere", "-o", tmp_path / "x.pkl")
    line = one_line_error(result, "--preset", "r42_nowhere", "r50_ade20k")
    assert line.startswith("error: --preset: unknown preset")
    assert not (tmp_path / "x.pkl").exists()
    assert run_cli("inspect").returncode == 2
    one_line_error(run_cli("inspect", tmp_path / "missing.pkl"), "missing.pkl: no such file")
    one_line_error(run_cli("train", "--model-dir", tmp_path / "m", "--experiment", "maskformer_nowhere"),
                   "--experiment", "maskformer_nowhere", "maskformer_r50_ade20k")
    one_line_error(run_cli("train", "--model-dir", tmp_path / "m", "--train-data", tmp_path / "none-*"),
                   "--train-data", "no file matches")
    one_line_error(run_cli("train", "--model-dir", tmp_path / "r", "--require", "panoptic_pq=0.8"),
                   "--require needs --evaluate")
    one_line_error(run_cli("train", "--model-dir", tmp_path / "r", "--evaluate", "--require", "panoptic_pq"),
                   "--require 'panoptic_pq'", "METRIC=MINIMUM")
    assert not (tmp_path / "r").exists()  # refused before anything was written
    one_line_error(run_cli("inspect", tmp_path / "missing.pkl", "--dataset", "kitti_7"), "--dataset")


@pytest.mark.heavy
@pytest.mark.parametrize("verbose", [False, True])
def test_verbose_prints_the_full_key_report(tmp_path, verbose):
    path = light_variant("r50_ade20k", tmp_path, "removed",
                         lambda t: t.pop("sem_seg_head.predictor.mask_embed.layers.1.bias"))
    args = (["-v"] if verbose else []) + ["convert", path, "-o", tmp_path / "o", "--preset", "r50_ade20k"]
    result = run_cli(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "1 missing" in lines[0]
    assert (len(lines) > 1) == verbose
    if verbose:
        assert any("missing     sem_seg_head.predictor.mask_embed.layers.1.bias" in line for line in lines)
