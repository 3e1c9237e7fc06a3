"""Loading original-format checkpoints: every format and naming era, strictness, and untrusted pickles."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from conftest import light_variant, one_line_error, run_cli, tiny_preset
from safetensors.numpy import save_file

from mfport.core.checkpoint_io import CheckpointError, read_checkpoint
from mfport.core.naming import to_live
from mfport.core.presets import PRESETS
from mfport.core.synthetic_images import synthetic_images
from mfport.torch_reference.loading import CheckpointMismatchError, load_maskformer


def _input() -> list[torch.Tensor]:
    return list(torch.from_numpy(synthetic_images(5, 1, 70, 90)).permute(0, 3, 1, 2).float())


# The format and error-path tests read and rewrite the tiny custom architecture's checkpoint (released naming,
# every kind of key of a real one, ~1 MB): a 170 MB R50 copy per case adds disk writes, not coverage.


def test_released_live_pth_and_safetensors_give_identical_models(seeded_checkpoint, tmp_path):
    released_path = seeded_checkpoint(tiny_preset())
    released = read_checkpoint(released_path).tensors
    assert any(k.startswith("sem_seg_head.adapter_1.") for k in released)
    live = {to_live(k): v for k, v in released.items()}

    live_pkl = tmp_path / "live.pkl"
    with open(live_pkl, "wb") as f:
        pickle.dump({"model": live, "__author__": "test"}, f)
    pth_wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in live.items()}, "iteration": 3}, pth_wrapped)
    pth_plain = tmp_path / "plain.pt"
    torch.save({k: torch.from_numpy(v) for k, v in live.items()}, pth_plain)
    st = tmp_path / "model.safetensors"
    save_file(released, str(st))

    reference, ckpt = load_maskformer(released_path)
    spec = reference.preset.backbone  # the architecture read off the keys
    assert ckpt.format == "detectron2-pkl" and (spec.embed_dim, spec.depths) == (16, (1, 1, 1, 1))
    expected_state = reference.state_dict()
    images = _input()
    with torch.no_grad():
        expected_logits = reference(images)["pred_logits"]
    for path, fmt in [(live_pkl, "detectron2-pkl"), (pth_wrapped, "torch"), (pth_plain, "torch"),
                      (st, "safetensors")]:
        model, loaded = load_maskformer(path)
        assert loaded.format == fmt
        for key, value in model.state_dict().items():
            assert torch.equal(value, expected_state[key]), (path, key)
        with torch.no_grad():
            assert torch.equal(model(images)["pred_logits"], expected_logits)


def test_fp16_checkpoint_is_read_and_cast(seeded_checkpoint, tmp_path):
    tensors = read_checkpoint(seeded_checkpoint(tiny_preset())).tensors
    half = {k: v.astype(np.float16) for k, v in tensors.items()}
    path = tmp_path / "half.safetensors"
    save_file(half, str(path))
    model, _ = load_maskformer(path)
    key = "sem_seg_head.predictor.class_embed.weight"
    assert torch.equal(model.state_dict()[key], torch.from_numpy(half[key].astype(np.float32)))


@pytest.mark.heavy
def test_checkpoint_of_another_preset_is_refused(tmp_path):
    path = light_variant("r50_6enc_coco_panoptic", tmp_path, "r50_6enc")
    with pytest.raises(CheckpointMismatchError) as info:
        load_maskformer(path, PRESETS["r50_ade20k"])
    message = str(info.value)
    assert "\n" not in message
    assert "r50_ade20k" in message and "looks like preset 'r50_6enc_coco_panoptic'" in message
    # The full report names every differing key.
    report = info.value.report
    assert "unexpected  sem_seg_head.pixel_decoder.transformer.encoder.layers.5.norm2.bias" in report
    assert "missing     sem_seg_head.predictor.input_proj.weight" in report
    assert "mis-shaped  sem_seg_head.predictor.class_embed.weight: (134, 256) vs expected (151, 256)" in report
    result = run_cli("-v", "inspect", path)
    assert result.returncode == 0


def test_missing_unexpected_and_misshaped_keys_are_named(seeded_checkpoint, tmp_path):
    tensors = dict(read_checkpoint(seeded_checkpoint(tiny_preset())).tensors)
    block = "backbone.layers.1.blocks.0.mlp.fc2.weight"
    tensors[block.replace("weight", "weigth")] = tensors.pop(block)  # a typo'd name
    tensors["sem_seg_head.layer_1.weight"] = np.zeros((32, 32, 1, 1), np.float32)  # the file's is (32, 32, 3, 3)
    path = tmp_path / "broken.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointMismatchError) as info:
        load_maskformer(path, tiny_preset())
    report = info.value.report
    assert f"missing     {block}   (closest in file: {block.replace('weight', 'weigth')})" in report
    assert f"unexpected  {block.replace('weight', 'weigth')}   (closest expected: {block})" in report
    assert ("mis-shaped  sem_seg_head.pixel_decoder.layer_1.weight: (32, 32, 1, 1) vs expected (32, 32, 3, 3)"
            in report)


def test_mixed_naming_is_refused(seeded_checkpoint, tmp_path):
    tensors = dict(read_checkpoint(seeded_checkpoint(tiny_preset())).tensors)
    tensors["sem_seg_head.pixel_decoder.layer_1.weight"] = tensors.pop("sem_seg_head.layer_1.weight")
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="mixes released"):
        load_maskformer(path)


@pytest.mark.parametrize("suffix", [".pkl", ".pth", ".safetensors"])
def test_truncated_file_gives_one_line_error(seeded_checkpoint, tmp_path, suffix):
    source = seeded_checkpoint(tiny_preset())
    if suffix == ".pth":
        full = tmp_path / "full.pth"
        torch.save({k: torch.from_numpy(v) for k, v in read_checkpoint(source).tensors.items()}, full)
    elif suffix == ".safetensors":
        full = tmp_path / "full.safetensors"
        save_file(read_checkpoint(source).tensors, str(full))
    else:
        full = source
    data = full.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(truncated)
    one_line_error(run_cli("inspect", truncated), str(truncated), "truncated or corrupt")


def test_non_checkpoint_files_are_named(tmp_path):
    text = tmp_path / "notes.pkl"
    text.write_text("these are not weights\n")
    one_line_error(run_cli("inspect", text), str(text), "not a checkpoint")
    listing = tmp_path / "list.pkl"
    listing.write_bytes(pickle.dumps([1, 2, 3]))
    one_line_error(run_cli("inspect", listing), "top level is list")
    one_line_error(run_cli("inspect", tmp_path / "absent.pkl"), "no such file")


class _Payload:
    """Unpickling this runs `touch MARKER` through os.system, if the reader lets it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_a_command_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"backbone.stem.conv1.weight": _Payload(str(marker))}}))
    # Sanity: an unrestricted pickle.load would run it.
    pickle.loads(evil.read_bytes())
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="refused to load global"):
        read_checkpoint(evil)
    one_line_error(run_cli("inspect", evil), str(evil), "unsafe pickle, nothing executed")
    assert not marker.exists()


def test_torch_file_that_runs_a_command_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"x": _Payload(str(marker))}}, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(evil)
    one_line_error(run_cli("inspect", evil), str(evil), "refused by torch.load")
    assert not marker.exists()


def test_numpy_1x_module_names_are_accepted(tmp_path):
    # A pickle written under numpy 1.x names numpy.core.multiarray._reconstruct; rewrite ours that way.
    from mfport.core.checkpoint_io import unpickle_mapped

    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = pickle.dumps({"model": {"w": array}}, protocol=2)
    for new in (b"numpy.core.multiarray", b"numpy._core.multiarray"):
        patched = data.replace(b"numpy._core.multiarray", new).replace(b"numpy.core.multiarray", new)
        assert new in patched
        path = tmp_path / "numpy_names.pkl"
        path.write_bytes(patched)
        loaded = unpickle_mapped(path)
        np.testing.assert_array_equal(loaded["model"]["w"], array)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_mapped_pickle_reads_what_pickle_load_reads(tmp_path, protocol):
    """The memory-mapped reader against the standard unpickler: every value, dtype, shape and memory order;
    one array referenced twice stays one object; large arrays are views of the file, and writing to them
    leaves the file as it was."""
    from collections import OrderedDict

    from mfport.core.checkpoint_io import unpickle_mapped

    rng = np.random.default_rng(protocol)
    large = rng.standard_normal((64, 300)).astype(np.float32)  # 76.8 KB: past the 64 KiB view threshold
    model = OrderedDict(
        large=large, fortran=np.asfortranarray(rng.standard_normal((40, 500))),
        big_endian=large.astype(">f4"), half=large.astype(np.float16), ints=np.arange(20_000),
        small=np.float32([1.5, -2.0]), scalar=np.float32(3.5), zero_d=np.array(2.0), shared=large,
        objects=np.array([large, 1], dtype=object))
    if protocol > 2:  # protocol 2 spells an empty payload as builtins.bytes(), which the allowlist refuses
        model["empty"] = np.zeros((0, 3), np.float32)
    path = tmp_path / f"p{protocol}.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "test"}, f, protocol=protocol)
    with open(path, "rb") as f:
        expected = pickle.load(f, encoding="latin1")["model"]
    before = path.read_bytes()

    loaded = unpickle_mapped(path)
    got = loaded["model"]
    assert type(got) is OrderedDict and list(got) == list(expected) and loaded["__author__"] == "test"
    for key, want in expected.items():
        if key == "objects":
            assert type(got[key][0]) is np.ndarray and np.array_equal(got[key][0], want[0]) and got[key][1] == 1
            continue
        value = got[key]
        assert type(value) is type(want) and value.dtype == want.dtype and value.shape == want.shape, key
        assert np.array_equal(value, want), key
        if isinstance(want, np.ndarray):
            assert value.flags.f_contiguous == want.flags.f_contiguous, key
    assert got["shared"] is got["large"]
    if protocol > 2:  # protocol 2 carries payloads as latin-1 text: they cannot be views
        assert not got["large"].flags.owndata and got["large"].base is not None
    got["large"][0, 0] = 1e6  # writable, copy on write
    assert path.read_bytes() == before


def test_mapped_pickle_refuses_code_and_names_truncation(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"w": _Payload(str(tmp_path / "ran"))}}, protocol=4))
    with pytest.raises(CheckpointError, match="unsafe pickle, nothing executed"):
        read_checkpoint(evil)
    assert not (tmp_path / "ran").exists()
    # A payload cut short inside a large array: named as truncated, whichever opcode it stops in.
    data = pickle.dumps({"model": {"w": np.ones(50_000, np.float32)}}, protocol=4)
    for cut in (len(data) // 2, len(data) - 3):
        short = tmp_path / f"short{cut}.pkl"
        short.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            read_checkpoint(short)
