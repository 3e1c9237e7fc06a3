"""The TensorFlow path without PyTorch: convert (.pkl, .safetensors), predict, export, train and evaluate in a
process where importing torch fails, and torch is never imported; what needs torch says which extra brings it."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, tiny_preset
from safetensors.numpy import save_file

from mfport.core.checkpoint_io import read_checkpoint
from mfport.core.synthetic_images import synthetic_images

# Runs mfport commands one after another in ONE process where `import torch` fails, as on a TPU VM that installed
# mfport without [torch] (one interpreter and TensorFlow start-up for all of them); prints, as JSON, each
# command's exit code and stderr, and fails if torch was imported at all.
RUNNER = """
import contextlib, importlib.abc, io, json, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name="torch")

sys.meta_path.insert(0, NoTorch())
from mfport.cli import main
results = []
for command in json.loads(sys.argv[1]):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code = main(command)
        except SystemExit as exit:
            code = exit.code
    results.append({"command": command[0], "code": code, "stderr": stderr.getvalue()})
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")], "torch was imported"
print(json.dumps(results))
"""


def _run(*commands: list[object]) -> list[dict]:
    """Each command's {command, code, stderr}, run in one torch-less process."""
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps([[str(a) for a in c] for c in commands])],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def tf_checkpoint_step(model_dir: Path) -> int:
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(model_dir))
    return 0 if latest is None else int(latest.rsplit("-", 1)[1])


def test_the_core_install_needs_no_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(d.split(">")[0].split("=")[0].strip() == "torch" for d in project["dependencies"])
    assert any(d.startswith("torch") for d in project["optional-dependencies"]["torch"])


@pytest.mark.slow
def test_convert_predict_export_train_evaluate_without_torch(seeded_checkpoint, tmp_path):
    from PIL import Image

    from mfport.tf_maskformer.dataloaders.coco_panoptic_tfrecords import write_synthetic_records

    preset = tiny_preset()
    pkl = seeded_checkpoint(preset)
    safetensors = tmp_path / "tiny.safetensors"
    save_file(dict(read_checkpoint(pkl).tensors), str(safetensors))
    image = tmp_path / "image.png"
    Image.fromarray(synthetic_images(1, 1, 90, 120)[0]).save(image)
    data = tmp_path / "data"
    write_synthetic_records(data, {"train": (4, 0), "val": (4, 1)})
    import yaml

    from mfport.tf_maskformer.configs.maskformer import model_config

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"task": {"model": model_config(preset, [64, 64]).as_dict(),
                                               "jit_compile": False, "train_data": {"max_segments": 8},
                                               "validation_data": {"max_segments": 8}},
                                      "trainer": {"validation_steps": 1}}))
    common = ["--config_file", config, "--model-dir", tmp_path / "run", "--train-data", data / "records" / "train-*",
              "--val-data", data / "records" / "val-*"]
    results = _run(["convert", pkl, "-o", tmp_path / "model", "--saved-model"],
                   ["convert", safetensors, "-o", tmp_path / "st"],
                   ["predict", image, "--model", tmp_path / "model", "-o", tmp_path / "pred"],
                   ["train", *common, "--init-from", tmp_path / "model", "--steps", "2"],
                   ["evaluate", *common, "--json"])
    for result in results:
        assert result["code"] == 0, (result["command"], result["stderr"][-3000:])
    assert (tmp_path / "model" / "saved_model" / "saved_model.pb").is_file()
    assert (tmp_path / "st" / "manifest.json").is_file()
    assert (tmp_path / "pred" / "image_semantic_map.png").is_file()
    assert tf_checkpoint_step(tmp_path / "run") == 2


@pytest.mark.heavy
def test_what_needs_torch_names_the_extra(seeded_checkpoint, tmp_path):
    import torch

    pth = tmp_path / "model.pth"
    torch.save({"x": torch.zeros(2)}, pth)
    results = _run(["parity", seeded_checkpoint(tiny_preset())], ["init-checkpoint", "--preset", "r50_ade20k", "-o",
                                                                 tmp_path / "x.pkl"], ["inspect", pth])
    for result in results:
        lines = [line for line in result["stderr"].splitlines() if line.strip()]
        assert result["code"] == 1 and len(lines) == 1, result["stderr"][-2000:]
        assert "pip install 'mfport[torch]'" in lines[0], lines[0]
    assert not Path(tmp_path / "x.pkl").exists()
