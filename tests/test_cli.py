"""`mfport init-checkpoint` and `mfport inspect` through the installed command."""

from __future__ import annotations

import json
import subprocess

from conftest import mfport_command

from mfport.core.presets import PRESETS
from mfport.torch_reference.maskformer import MaskFormer


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*mfport_command(), *args], capture_output=True, text=True, timeout=600)


def test_init_checkpoint_then_inspect(tmp_path):
    out = tmp_path / "ade.pkl"
    result = run("init-checkpoint", "--preset", "r50_ade20k", "--seed", "3", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.exists() and not list(tmp_path.glob(".*.tmp"))
    info = json.loads(run("inspect", str(out), "--json").stdout)
    model = MaskFormer(PRESETS["r50_ade20k"])
    assert info["format"] == "detectron2-pkl"
    assert info["naming_era"] == "released"
    assert info["detected_preset"] == "r50_ade20k"
    assert info["tensor_count"] == len(model.state_dict())
    assert info["parameter_count"] == sum(p.numel() for p in model.parameters())
    assert info["dtypes"] == ["float32"]
    assert info["tensor_bytes"] == 4 * sum(v.numel() for v in model.state_dict().values())
    table = run("inspect", str(out))
    assert table.returncode == 0
    for text in ("detectron2-pkl", "released", "r50_ade20k", "41.25M", "float32", "MiB"):
        assert text in table.stdout

    # An existing output is not overwritten without --force.
    again = run("init-checkpoint", "--preset", "r50_ade20k", "--seed", "4", "-o", str(out))
    assert again.returncode == 1 and "exists; pass --force" in again.stderr


def test_bad_arguments_are_named(tmp_path):
    result = run("init-checkpoint", "--preset", "r42_nowhere", "-o", str(tmp_path / "x.pkl"))
    assert result.returncode == 1
    assert "--preset" in result.stderr and "r42_nowhere" in result.stderr and "r50_ade20k" in result.stderr
    assert not (tmp_path / "x.pkl").exists()
    assert run("inspect").returncode == 2
    presets = json.loads(run("presets", "--json").stdout)
    assert set(presets) == set(PRESETS)
