"""`mfport convert`: round trips, accounting of every tensor, wrong inputs, Hugging Face checkpoints, outputs,
and failures a user can act on (disk full, non-finite weights, stale partial outputs)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import torch
from conftest import light_variant, mfport_command, one_line_error, run_cli, tiny_preset
from safetensors.numpy import save_file

import mfport.converter.convert as convert_module
from mfport.converter.convert import assign_converted, convert_to_tf, convert_to_torch
from mfport.converter.registry import ConversionError, tf_to_torch, tf_variable_path
from mfport.core.checkpoint_io import read_checkpoint
from mfport.core.naming import original_live_state, to_released
from mfport.core.presets import get_preset
from mfport.tf_maskformer.modeling.factory import build_maskformer
from mfport.tf_maskformer.serving.model_dir import load_converted_model
from mfport.torch_reference.seeded_init import seeded_state_dict


def _no_leftovers(directory) -> None:
    assert not [p.name for p in directory.iterdir() if ".partial" in p.name or p.name.endswith(".tmp")]


def _variant(source, tmp_path, name, edit):
    tensors = dict(read_checkpoint(source).tensors)
    edit(tensors)
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.slow
def test_round_trip_through_files_is_bit_exact(seeded_checkpoint, converted_dir, tmp_path):
    """R50 + 6 Enc: .pkl -> TF checkpoint -> .pkl, every tensor's bytes and dtype; the manifest accounts for all."""
    source = seeded_checkpoint("r50_6enc_coco_panoptic")
    out = converted_dir("r50_6enc_coco_panoptic")
    back = tmp_path / "back.pkl"
    convert_to_torch(out, back)
    original, returned = read_checkpoint(source).tensors, read_checkpoint(back).tensors
    assert set(returned) == set(original)
    for key, value in original.items():
        assert returned[key].dtype == value.dtype and returned[key].tobytes() == value.tobytes(), key
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["tensors"]) == len(original) and manifest["schema"] == 2
    assert sum(len(t["tf_variables"]) for t in manifest["tensors"]) == len(load_converted_model(out).variables)


@pytest.mark.heavy
@pytest.mark.parametrize("preset_name", ["r101c_ade20k", "swin_t_ade20k", "swin_b_ade20k", "r101_cityscapes"])
def test_round_trip_in_memory_is_bit_exact(preset_name):
    """Every rule of the family both ways (the file formats are the test above's): seeded tensors into a built
    TF model and back, bit for bit, the derived index buffers regenerated as int64."""
    preset = get_preset(preset_name)
    state = seeded_state_dict(preset, 0)
    source = {to_released(k): v.copy() for k, v in state.items()}
    model = build_maskformer(preset)
    records = assign_converted(model, state, preset, preset_name)
    assert len(records) == len(source)
    back = {to_released(k): v for k, v in
            tf_to_torch({tf_variable_path(v.name): v.numpy() for v in model.variables}, preset).items()}
    assert set(back) == set(source)
    for key, value in source.items():
        assert back[key].dtype == value.dtype and back[key].tobytes() == value.tobytes(), key


@pytest.mark.heavy
def test_convert_json_manifest_force_and_progress(seeded_checkpoint, tmp_path):
    source = seeded_checkpoint("swin_t_ade20k")
    out = tmp_path / "out"
    result = run_cli("convert", source, "-o", out, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["preset"] == "swin_t_ade20k" and summary["tensors"] == 334 and summary["architecture"].startswith(
        "Swin-T")
    manifest = json.loads((out / "manifest.json").read_text())
    import hashlib

    assert manifest["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert manifest["preset_config"]["backbone"]["kind"] == "swin" and manifest["mapping_version"] == "2"
    qkv = next(t for t in manifest["tensors"] if t["source_key"] == "backbone.layers.1.blocks.0.attn.qkv.weight")
    assert qkv["transform"] == "in_proj_split_qkv" and qkv["tf_shapes"] == [[192, 6, 32]] * 3
    index = next(t for t in manifest["tensors"] if t["source_key"].endswith("0.blocks.1.attn.relative_position_index"))
    assert index["transform"] == "not_a_variable" and index["tf_variables"] == []
    one_line_error(run_cli("convert", source, "-o", out), "--output", "exists; pass --force")
    # --force and the table on the tiny Swin (a third released-size conversion would add nothing to them).
    tiny, tiny_out = seeded_checkpoint(tiny_preset()), tmp_path / "tiny"
    assert run_cli("convert", tiny, "-o", tiny_out).returncode == 0
    table = run_cli("convert", tiny, "-o", tiny_out, "--force")
    assert table.returncode == 0 and "in_proj_split_qkv" in table.stdout
    # Not a terminal: tables are laid out 200 columns wide, so long tap and path names are not cut.
    assert max(len(line) for line in table.stdout.splitlines()) > 80
    assert "WARNING" not in table.stderr and "non-serializable" not in table.stderr
    _no_leftovers(tmp_path)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.heavy
def test_each_wrong_input_is_named(seeded_checkpoint, tmp_path):
    source = light_variant("r50_ade20k", tmp_path, "r50_ade20k")
    removed = light_variant("r50_ade20k", tmp_path, "removed",
                             lambda t: t.pop("sem_seg_head.predictor.mask_embed.layers.1.bias"))
    added = light_variant("r50_ade20k", tmp_path, "added",
                           lambda t: t.update({"sem_seg_head.extra_head.weight": np.ones(3, np.float32)}))
    reshaped = light_variant("r50_ade20k", tmp_path, "reshaped", lambda t: t.update(
        {"sem_seg_head.predictor.transformer.decoder.layers.2.linear1.weight": np.ones((1024, 256), np.float32)}))
    cases = [
        (removed, ["--preset", "r50_ade20k"], "1 missing", "sem_seg_head.predictor.mask_embed.layers.1.bias"),
        (added, ["--preset", "r50_ade20k"], "1 unexpected", "sem_seg_head.pixel_decoder.extra_head.weight"),
        (reshaped, ["--preset", "r50_ade20k"], "1 mis-shaped",
         "decoder.layers.2.linear1.weight' (1024, 256) vs expected (2048, 256)"),
        (light_variant("r50_6enc_coco_panoptic", tmp_path, "r50_6enc"), ["--preset", "r50_ade20k"],
         "does not fit preset 'r50_ade20k'", "missing"),
    ]
    for path, extra, *needles in cases:
        out = tmp_path / f"out_{path.stem}"
        one_line_error(run_cli("convert", path, "-o", out, *extra), str(path), *needles)
        assert not out.exists()
    with pytest.raises(ConversionError) as info:  # the full report names every key, with the closest name
        convert_to_tf(added, tmp_path / "x", preset="r50_ade20k")
    assert "unexpected  sem_seg_head.pixel_decoder.extra_head.weight" in info.value.report
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(seeded_checkpoint(tiny_preset()).read_bytes()[:1000])
    one_line_error(run_cli("convert", truncated, "-o", tmp_path / "t"), "truncated or corrupt")
    text = tmp_path / "README.txt"
    text.write_text("not weights")
    one_line_error(run_cli("convert", text, "-o", tmp_path / "n"), "not a checkpoint")
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"x": _Payload(str(marker))}}))
    one_line_error(run_cli("convert", evil, "-o", tmp_path / "e"), "unsafe pickle, nothing executed")
    assert not marker.exists()
    one_line_error(run_cli("convert", source, "-o", tmp_path / "p", "--preset", "r42_nowhere"),
                   "--preset: unknown preset 'r42_nowhere'; known presets: r50_ade20k")
    _no_leftovers(tmp_path)


@pytest.mark.heavy
def test_wrong_architecture_inputs_are_named(seeded_checkpoint, tmp_path):
    """Issues 18/19's wrong inputs: a corrupted index buffer, a missing Swin block, a window-7 file forced into a
    window-12 preset, a class head that disagrees with the criterion buffer, a stem neither basic nor DeepLab,
    an 847-class file given Cityscapes' names."""
    index = "backbone.layers.2.blocks.3.attn.relative_position_index"
    corrupted = light_variant("swin_t_ade20k", tmp_path, "index", lambda t: t.update({index: t[index][::-1].copy()}))
    one_line_error(run_cli("convert", corrupted, "-o", tmp_path / "a"), index, "not the index of a 7x7 window")
    block = "backbone.layers.2.blocks.5."
    missing_block = light_variant("swin_t_ade20k", tmp_path, "block",
                                   lambda t: [t.pop(k) for k in list(t) if k.startswith(block)])
    one_line_error(run_cli("convert", missing_block, "-o", tmp_path / "b", "--preset", "swin_t_ade20k"),
                   "does not fit preset 'swin_t_ade20k'", "missing")
    swin = seeded_checkpoint("swin_t_ade20k")  # the real file, as a user has it (also the manifest test's)
    one_line_error(run_cli("convert", swin, "-o", tmp_path / "c", "--preset", "swin_b_ade20k"),
                   "does not fit preset 'swin_b_ade20k'", "mis-shaped")
    head = light_variant("r50_ade20k", tmp_path, "head",
                          lambda t: t.update({"criterion.empty_weight": np.ones(21, np.float32)}))
    one_line_error(run_cli("convert", head, "-o", tmp_path / "d"), "criterion.empty_weight", "(21,)")
    stem = light_variant("r50_ade20k", tmp_path, "stem", lambda t: t.update(
        {"backbone.stem.conv1.weight": np.ones((64, 3, 5, 5), np.float32)}))
    one_line_error(run_cli("convert", stem, "-o", tmp_path / "e"), "stem.conv1.weight", "(64, 3, 5, 5)")
    full = light_variant("r50_ade20k_full", tmp_path, "full")
    one_line_error(run_cli("convert", full, "-o", tmp_path / "f", "--dataset", "cityscapes_19"),
                   "--dataset", "847 classes", "'cityscapes_19' has 19")
    _no_leftovers(tmp_path)


# Failures while converting (non-finite weights, disk full, a kill, an interrupt) and source dtypes: on the tiny
# custom architecture's checkpoint (~1 MB), not a 170 MB R50 copy per case.


def test_nonfinite_weights_are_refused_unless_allowed_and_inspect_counts_them(seeded_checkpoint, tmp_path):
    key = "sem_seg_head.predictor.class_embed.weight"

    def poison(t):
        t[key] = t[key].copy()
        t[key][3, 7], t[key][5, 1] = np.nan, np.inf

    bad = _variant(seeded_checkpoint(tiny_preset()), tmp_path, "nan", poison)
    one_line_error(run_cli("convert", bad, "-o", tmp_path / "out"), "2 non-finite values", key, "--allow-nonfinite")
    assert not (tmp_path / "out").exists()
    info = json.loads(run_cli("inspect", bad, "--json").stdout)
    assert info["nonfinite"] == {key: 2}
    assert run_cli("convert", bad, "-o", tmp_path / "out", "--allow-nonfinite").returncode == 0


def test_disk_full_is_one_line_and_leaves_nothing(seeded_checkpoint, tmp_path, monkeypatch):
    """A device without room (simulated: TF's writer raising as it does on ENOSPC) gives one line naming the
    output, the space needed and the space free; the partial output is gone."""
    def full(model, directory, formats, saved_model, progress=None):
        (directory / "tf_checkpoint").mkdir()
        (directory / "tf_checkpoint" / "ckpt.data-00000-of-00001").write_bytes(b"x" * 1000)
        raise tf.errors.ResourceExhaustedError(None, None, "ckpt_temp/part-00000; No space left on device")

    monkeypatch.setattr(convert_module, "write_model", full)
    source = seeded_checkpoint(tiny_preset())
    result = run_cli("convert", source, "-o", tmp_path / "out")
    line = one_line_error(result, str(tmp_path / "out"), "no space left on the device", "MiB are free")
    needed = sum(v.nbytes for v in read_checkpoint(source).tensors.values()) / 2**20
    assert f"needs about {needed:.0f} MiB" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_killed_conversion_leaves_a_partial_the_next_one_removes(seeded_checkpoint, tmp_path):
    """kill -9 mid-conversion: no output; the hidden partial directory stays until the next conversion to the
    same output removes it (its owner is gone); a partial whose owner still runs is kept."""
    out = tmp_path / "model"
    code = ("import sys, time\nimport mfport.converter.convert as c\n"
            "def slow(*a, **k):\n    print('writing', flush=True); time.sleep(600)\n"
            "c.write_model = slow\nc.convert_to_tf(sys.argv[1], sys.argv[2])\n")
    killed = subprocess.Popen([sys.executable, "-c", code, str(seeded_checkpoint(tiny_preset())), str(out)],
                              stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "writing"
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert len(stale) == 1 and not out.exists()
    alive = tmp_path / f".model.{os.getpid()}.keep.partial"  # owned by this (running) process
    alive.mkdir()
    (alive / ".mfport-owner.json").write_text(json.dumps({"pid": os.getpid(),
                                                          "start": convert_module._process_start(os.getpid())}))
    result = run_cli("convert", seeded_checkpoint(tiny_preset()), "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["removed_stale_partials"] == [str(stale[0])]
    assert not stale[0].exists() and alive.exists() and out.is_dir()


def test_failure_while_writing_leaves_nothing(seeded_checkpoint, tmp_path, monkeypatch):
    def explode(model, directory, formats, saved_model, progress=None):
        (directory / "tf_checkpoint").mkdir()
        (directory / "tf_checkpoint" / "half-written").write_bytes(b"x")
        raise KeyboardInterrupt  # as if the user interrupted it mid-write

    monkeypatch.setattr(convert_module, "write_model", explode)
    with pytest.raises(KeyboardInterrupt):
        convert_to_tf(seeded_checkpoint(tiny_preset()), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_half_precision_source_cast_or_kept(seeded_checkpoint, tmp_path):
    half = {k: v.astype(np.float16) if v.dtype == np.float32 else v
            for k, v in read_checkpoint(seeded_checkpoint(tiny_preset())).tensors.items()}
    path = tmp_path / "half.safetensors"
    save_file(half, str(path))
    cast = convert_to_tf(path, tmp_path / "cast")
    assert cast.cast_to_float32
    assert json.loads((tmp_path / "cast" / "manifest.json").read_text())["source"]["cast_to_float32"] is True
    kept = convert_to_tf(path, tmp_path / "kept", keep_dtype=True)
    assert not kept.cast_to_float32
    assert {v.dtype for v in load_converted_model(tmp_path / "kept").variables} == {tf.float16}
    key = "backbone.patch_embed.proj.weight"
    assert np.array_equal(convert_to_torch(tmp_path / "cast", tmp_path / "b.pth")[key], half[key].astype(np.float32))


def test_bfloat16_torch_file_is_reported(seeded_checkpoint, tmp_path):
    tensors = read_checkpoint(seeded_checkpoint(tiny_preset())).tensors
    path = tmp_path / "bf16.pth"
    torch.save({"model": {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()}}, path)
    cast = convert_to_tf(path, tmp_path / "cast")
    manifest = json.loads((tmp_path / "cast" / "manifest.json").read_text())
    assert cast.cast_to_float32 and manifest["source"]["dtypes"] == ["bfloat16"]
    key = "backbone.layers.1.blocks.0.mlp.fc2.weight"
    expected = torch.from_numpy(tensors[key]).to(torch.bfloat16).float().numpy()
    assert np.array_equal(convert_to_torch(tmp_path / "cast", tmp_path / "b.pth")[key], expected)


@pytest.mark.heavy
def test_custom_architecture_converts_with_class_names(tmp_path):
    """A user's own fine-tune (37 classes, 50 queries): detected from its keys, class names from a JSON (a light
    file: what is checked here are names and shapes)."""
    preset = get_preset("r50_ade20k").with_overrides(num_classes=37, num_queries=50)
    source = light_variant(preset, tmp_path, "fine_tune")
    names = tmp_path / "names.json"
    names.write_text(json.dumps([f"part {i}" for i in range(37)]))
    info = json.loads(run_cli("inspect", source, "--json").stdout)
    assert info["custom_architecture"] and info["detected_preset"] is None and info["architecture"]["num_queries"] == 50
    assert info["assumed_defaults"]["nheads"] == 8
    result = run_cli("convert", source, "-o", tmp_path / "m", "--class-names", names, "--json")
    assert result.returncode == 0, result.stderr
    model = load_converted_model(tmp_path / "m")
    assert model.preset.name == "custom" and model.preset.class_names[5] == "part 5"
    # The way back as `convert --to torch` maps it (writing that file is the round-trip tests' subject).
    back = tf_to_torch({tf_variable_path(v.name): v.numpy() for v in model.variables}, model.preset)
    assert set(back) == set(original_live_state(read_checkpoint(source)).tensors)
    one_line_error(run_cli("convert", source, "-o", tmp_path / "n", "--dataset", "cityscapes_19"),
                   "--dataset", "37 classes")


def test_transposed_views_are_laid_out_as_numpy_would():
    """The conversion sink lays out transposed kernels with TF's transpose (size-1 axes included)."""
    for shape, axes in [((64, 32, 3, 3), (2, 3, 1, 0)), ((64, 32, 1, 1), (2, 3, 1, 0)), ((3, 1, 1, 4), (2, 3, 1, 0)),
                        ((7, 5), (1, 0)), ((1, 5), (1, 0))]:
        value = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        view = np.transpose(value, axes)
        laid_out = np.asarray(convert_module._laid_out(view))
        assert laid_out.shape == view.shape and np.array_equal(laid_out, np.ascontiguousarray(view))
    sliced = value.reshape(shape[0], -1)[:, ::2]  # not a pure transpose: numpy's copy
    assert np.array_equal(convert_module._laid_out(sliced), sliced)


@pytest.mark.slow
def test_convert_command_as_a_user_runs_it(seeded_checkpoint, tmp_path):
    """The installed command in a process of its own (what the in-process tests stand in for): exit codes,
    one-line errors, no warning spam, and a SavedModel. The tiny Swin architecture: what a process adds does not
    depend on the model's size (a released Swin's SavedModel is test_tf_model's and test_huggingface's)."""
    out = tmp_path / "model"
    done = subprocess.run([*mfport_command(), "convert", str(seeded_checkpoint(tiny_preset())), "-o",
                           str(out), "--saved-model"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not [line for line in done.stderr.splitlines() if "WARNING" in line or "non-serializable" in line]
    assert (out / "saved_model" / "saved_model.pb").is_file()
    bad = subprocess.run([*mfport_command(), "convert", str(out / "manifest.json"), "-o", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
