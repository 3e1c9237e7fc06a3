"""`mfport convert`: round trips, accounting of every tensor, wrong inputs, HF checkpoints, outputs."""

from __future__ import annotations

import json
import pickle
import subprocess

import numpy as np
import pytest
import tensorflow as tf
import torch
from conftest import mfport_command
from safetensors.numpy import save_file
from tf_helpers import converted_tf_model

import converter.convert as convert_module
from converter.checkpoint_io import CheckpointError, read_checkpoint
from converter.convert import convert_to_tf, convert_to_torch, load_tf_model
from converter.registry import ConversionError
from torch_reference.loading import load_maskformer
from torch_reference.presets import PRESETS
from torch_reference.synthetic_images import synthetic_images


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*mfport_command(), *args], capture_output=True, text=True, timeout=600)


def _one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _no_leftovers(directory) -> None:
    assert not [p.name for p in directory.iterdir() if ".partial" in p.name or p.name.endswith(".tmp")]


@pytest.mark.parametrize("preset_name", list(PRESETS))
def test_round_trip_is_bit_exact_for_every_preset(seeded_checkpoint, tmp_path, preset_name):
    source = seeded_checkpoint(preset_name)
    result = convert_to_tf(source, tmp_path / "tf", formats=("tf-checkpoint", "keras"))
    assert result.preset == preset_name and result.naming_era == "released"
    back = tmp_path / "back.pkl"
    convert_to_torch(tmp_path / "tf", back)
    original, returned = read_checkpoint(source).tensors, read_checkpoint(back).tensors
    assert list(returned) == list(original) or set(returned) == set(original)
    for key, value in original.items():
        assert returned[key].dtype == value.dtype and returned[key].tobytes() == value.tobytes(), key
    manifest = json.loads((tmp_path / "tf" / "manifest.json").read_text())
    assert len(manifest["tensors"]) == len(original)
    assert sum(len(t["tf_variables"]) for t in manifest["tensors"]) == len(load_tf_model(tmp_path / "tf").variables)


def test_converted_model_matches_pytorch_smoke(seeded_checkpoint, tmp_path):
    # Full parity numbers belong to the parity suite; here a smoke bound of 1e-4 on every preset.
    images = synthetic_images(11, 2, 96, 136)
    for preset_name in PRESETS:
        torch_model, _ = load_maskformer(seeded_checkpoint(preset_name))
        with torch.no_grad():
            expected = torch_model(list(torch.from_numpy(images).permute(0, 3, 1, 2).float()))
        tf_model = converted_tf_model(seeded_checkpoint(preset_name), preset_name)
        got = tf_model.predict_raw(tf.constant(images, tf.float32))
        for key in ("pred_logits", "pred_masks"):
            a, b = expected[key].numpy(), got[key].numpy()
            assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max(), (preset_name, key)


def test_keras_weights_and_saved_model_outputs(seeded_checkpoint, tmp_path):
    out = tmp_path / "model"
    convert_to_tf(seeded_checkpoint("r50_ade20k"), out, formats=("keras",), saved_model=True)
    assert (out / "model.weights.h5").is_file() and (out / "saved_model" / "saved_model.pb").is_file()
    assert not (out / "tf_checkpoint").exists()
    from_h5 = load_tf_model(out)
    reference = converted_tf_model(seeded_checkpoint("r50_ade20k"), "r50_ade20k")
    for a, b in zip(from_h5.variables, reference.variables, strict=True):
        assert a.name == b.name and np.array_equal(a.numpy(), b.numpy())


def test_cli_convert_json_manifest_and_force(seeded_checkpoint, tmp_path):
    source = seeded_checkpoint("r50_6enc_coco_panoptic")
    out = tmp_path / "out"
    result = run("convert", str(source), "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["preset"] == "r50_6enc_coco_panoptic" and summary["tensors"] == 482
    manifest = json.loads((out / "manifest.json").read_text())
    import hashlib

    assert manifest["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert manifest["architecture"]["pixel_decoder_enc_layers"] == 6 and manifest["mapping_version"]
    in_proj = "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.in_proj_weight"
    record = next(t for t in manifest["tensors"] if t["source_key"] == in_proj)
    assert record["transform"] == "in_proj_split_qkv" and record["tf_shapes"] == [[256, 8, 32]] * 3
    assert record["tf_variables"][1].endswith("self_attn/key/kernel")
    _one_line_error(run("convert", str(source), "-o", str(out)), "exists; pass --force")
    table = run("convert", str(source), "-o", str(out), "--force")
    assert table.returncode == 0 and "in_proj_split_qkv" in table.stdout
    _no_leftovers(tmp_path)
    back = tmp_path / "back.safetensors"
    assert run("convert", str(out), "--to", "torch", "-o", str(back)).returncode == 0
    assert read_checkpoint(back).tensors.keys() == {
        k.replace("sem_seg_head.", "sem_seg_head.pixel_decoder.", 1)
        if not k.startswith(("sem_seg_head.predictor", "backbone", "criterion")) else k
        for k in read_checkpoint(source).tensors}


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _variant(source, tmp_path, name, edit):
    tensors = dict(read_checkpoint(source).tensors)
    edit(tensors)
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path))
    return path


def test_each_wrong_input_is_named(seeded_checkpoint, tmp_path):
    source = seeded_checkpoint("r50_ade20k")
    removed = _variant(source, tmp_path, "removed", lambda t: t.pop("sem_seg_head.predictor.mask_embed.layers.1.bias"))
    added = _variant(source, tmp_path, "added",
                     lambda t: t.update({"sem_seg_head.extra_head.weight": np.ones(3, np.float32)}))
    reshaped = _variant(source, tmp_path, "reshaped", lambda t: t.update(
        {"sem_seg_head.predictor.transformer.decoder.layers.2.linear1.weight": np.ones((1024, 256), np.float32)}))
    cases = [
        (removed, ["--preset", "r50_ade20k"], "1 missing", "sem_seg_head.predictor.mask_embed.layers.1.bias"),
        (added, [], "1 unexpected", "sem_seg_head.pixel_decoder.extra_head.weight"),
        (reshaped, [], "1 mis-shaped", "decoder.layers.2.linear1.weight' (1024, 256) vs expected (2048, 256)"),
        (seeded_checkpoint("r50_6enc_coco_panoptic"), ["--preset", "r50_ade20k"], "does not fit preset 'r50_ade20k'",
         "missing"),
    ]
    for path, extra, *needles in cases:
        out = tmp_path / f"out_{path.stem}"
        _one_line_error(run("convert", str(path), "-o", str(out), *extra), str(path), *needles)
        assert not out.exists()
    # The full report names every key, with the closest name.
    with pytest.raises(ConversionError) as info:
        convert_to_tf(added, tmp_path / "x")
    assert "unexpected  sem_seg_head.pixel_decoder.extra_head.weight" in info.value.report
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(source.read_bytes()[:1000])
    _one_line_error(run("convert", str(truncated), "-o", str(tmp_path / "t")), "truncated or corrupt")
    text = tmp_path / "README.txt"
    text.write_text("not weights")
    _one_line_error(run("convert", str(text), "-o", str(tmp_path / "n")), "not a checkpoint")
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"x": _Payload(str(marker))}}))
    _one_line_error(run("convert", str(evil), "-o", str(tmp_path / "e")), "unsafe pickle, nothing executed")
    assert not marker.exists()
    _no_leftovers(tmp_path)


def test_failure_while_writing_leaves_nothing(seeded_checkpoint, tmp_path, monkeypatch):
    def explode(model, directory, formats, saved_model):
        (directory / "tf_checkpoint").mkdir()
        (directory / "tf_checkpoint" / "half-written").write_bytes(b"x")
        raise KeyboardInterrupt  # as if the user killed it mid-write

    monkeypatch.setattr(convert_module, "write_model", explode)
    with pytest.raises(KeyboardInterrupt):
        convert_to_tf(seeded_checkpoint("r50_ade20k"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_half_precision_source_cast_or_kept(seeded_checkpoint, tmp_path):
    half = {k: v.astype(np.float16) for k, v in read_checkpoint(seeded_checkpoint("r50_ade20k")).tensors.items()}
    path = tmp_path / "half.safetensors"
    save_file(half, str(path))
    cast = convert_to_tf(path, tmp_path / "cast")
    assert cast.cast_to_float32
    assert json.loads((tmp_path / "cast" / "manifest.json").read_text())["source"]["cast_to_float32"] is True
    kept = convert_to_tf(path, tmp_path / "kept", keep_dtype=True)
    assert not kept.cast_to_float32
    model = load_tf_model(tmp_path / "cast")
    assert all(v.dtype == tf.float32 for v in model.variables)
    key = "backbone.res2.0.conv1.weight"
    assert np.array_equal(convert_to_torch(tmp_path / "cast", tmp_path / "b.pth")[key], half[key].astype(np.float32))


def test_unknown_architecture_needs_a_preset(seeded_checkpoint, tmp_path):
    source = seeded_checkpoint("r50_ade20k")
    path = _variant(source, tmp_path, "k20", lambda t: t.update({
        "sem_seg_head.predictor.class_embed.weight": np.ones((21, 256), np.float32),
        "sem_seg_head.predictor.class_embed.bias": np.ones(21, np.float32),
        "criterion.empty_weight": np.ones(21, np.float32)}))
    with pytest.raises(CheckpointError, match="20 classes\\) matches no preset; pass --preset"):
        convert_to_tf(path, tmp_path / "o")
    _one_line_error(run("convert", str(path), "-o", str(tmp_path / "o"), "--preset", "r50_nowhere"),
                    "--preset: unknown preset 'r50_nowhere'; known presets: r50_ade20k")


def test_bfloat16_torch_file_is_reported_and_can_be_kept(seeded_checkpoint, tmp_path):
    tensors = read_checkpoint(seeded_checkpoint("r50_ade20k")).tensors
    path = tmp_path / "bf16.pth"
    torch.save({"model": {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()}}, path)
    cast = convert_to_tf(path, tmp_path / "cast")
    manifest = json.loads((tmp_path / "cast" / "manifest.json").read_text())
    assert cast.cast_to_float32 and manifest["source"]["dtypes"] == ["bfloat16"]
    convert_to_tf(path, tmp_path / "kept", keep_dtype=True)
    kept = load_tf_model(tmp_path / "kept")
    assert {v.dtype for v in kept.variables} == {tf.bfloat16}
    key = "backbone.res3.1.conv2.weight"
    expected = torch.from_numpy(tensors[key]).to(torch.bfloat16).float().numpy()
    assert np.array_equal(convert_to_torch(tmp_path / "cast", tmp_path / "b.pth")[key], expected)


@pytest.mark.parametrize(("shape", "axes"), [((64, 32, 3, 3), (2, 3, 1, 0)), ((64, 32, 1, 1), (2, 3, 1, 0)),
                                             ((3, 1, 1, 4), (2, 3, 1, 0)), ((7, 5), (1, 0)), ((1, 5), (1, 0))])
def test_transposed_views_are_laid_out_as_numpy_would(shape, axes):
    """The conversion sink lays out transposed kernels with TF's transpose (size-1 axes included)."""
    value = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    view = np.transpose(value, axes)
    laid_out = np.asarray(convert_module._laid_out(view))
    assert laid_out.shape == view.shape and np.array_equal(laid_out, np.ascontiguousarray(view))
    sliced = value.reshape(shape[0], -1)[:, ::2]  # not a pure transpose: numpy's copy
    assert np.array_equal(convert_module._laid_out(sliced), sliced)
