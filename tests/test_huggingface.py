"""Hugging Face transformers MaskFormer checkpoints (ResNet and Swin, random init: nothing downloaded) convert
both ways; the converted TF model gives transformers' own outputs."""

from __future__ import annotations

import copy
import functools
import re

import numpy as np
import pytest
import tensorflow as tf
import torch
from conftest import lightened
from safetensors.torch import save_file

from mfport.converter.convert import convert_to_tf, convert_to_torch, tf_model_from_checkpoint
from mfport.core.checkpoint_io import Checkpoint
from mfport.core.errors import CheckpointError
from mfport.core.presets import PIXEL_MEAN, PIXEL_STD
from mfport.tf_maskformer.serving.export import export_saved_model

transformers = pytest.importorskip("transformers", reason="transformers is the optional 'hf' extra")


@functools.cache  # built once per backbone (random init of a full-size model takes seconds); tests copy to change it
def _hf_model(backbone: str, num_labels: int = 150) -> torch.nn.Module:
    if backbone == "resnet":
        config = transformers.ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                                           layer_type="bottleneck", out_features=[f"stage{i}" for i in range(1, 5)])
    else:  # the facebook/maskformer-swin-tiny-* architecture
        config = transformers.MaskFormerSwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                                                   window_size=7, out_features=[f"stage{i}" for i in range(1, 5)])
    torch.manual_seed(0)
    model = transformers.MaskFormerForInstanceSegmentation(
        transformers.MaskFormerConfig(backbone_config=config, num_labels=num_labels)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():  # random-init BatchNorm statistics are 0/1: give them values
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
        for name, parameter in model.named_parameters():  # Swin bias tables of O(1), as trained ones
            if name.endswith("relative_position_bias_table"):
                parameter.normal_(0, 1.0, generator=generator)
    return model


def _in_memory(backbone: str) -> Checkpoint:
    """The HF model's state dict as mfport reads it from a file, with no file."""
    tensors = {k: v.numpy() for k, v in _hf_model(backbone).state_dict().items()}
    return Checkpoint(f"transformers MaskFormer-{backbone} (in memory)", "torch", tensors, {}, 0)


# Each backbone once, in one of transformers' two file formats each (their readers are the checkpoint tests'
# subject, on the original formats as on these).
CASES = [("resnet", "bin", "r50_ade20k"), ("swin", "safetensors", "swin_t_ade20k")]


@pytest.mark.heavy
@pytest.mark.parametrize(("backbone", "fmt", "preset"), CASES)
def test_hf_checkpoint_converts_both_ways_bit_exact(tmp_path, backbone, fmt, preset):
    state = {k: v.contiguous() for k, v in _hf_model(backbone).state_dict().items()}
    path = tmp_path / f"model.{fmt}"  # as transformers saves it
    save_file(state, str(path)) if fmt == "safetensors" else torch.save(state, path)
    result = convert_to_tf(path, tmp_path / "tf")
    assert result.preset.name == preset and result.naming_era == "huggingface"
    if backbone == "swin":  # HF's unused final layernorm has no counterpart: dropped, and said so
        assert sorted(result.dropped) == ["model.pixel_level_module.encoder.model.layernorm.bias",
                                          "model.pixel_level_module.encoder.model.layernorm.weight"]
    # Back to transformers' names: loads strictly into a fresh HF model, every shared tensor bit-exact.
    back = convert_to_torch(tmp_path / "tf", tmp_path / "back.safetensors", naming="huggingface")
    assert set(back) == set(state)
    fresh = copy.deepcopy(_hf_model(backbone))
    fresh.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in back.items()}, strict=True)
    for key, value in state.items():
        if "num_batches_tracked" not in key and not re.search(r"encoder\.model\.layernorm\.", key):
            assert np.array_equal(back[key], value.numpy()), key


def _largest_errors_within(expected: object, got: dict[str, tf.Tensor], bound: float) -> None:
    # Only final outputs: transformers' auxiliary outputs are not the original's. HF scales q @ k^T after the
    # product (the original scales q first): ~1e-6 apart per stage (SWIN.md).
    for a, b in [(expected.class_queries_logits.numpy(), got["pred_logits"].numpy()),
                 (expected.masks_queries_logits.numpy(), got["pred_masks"].numpy())]:
        assert a.shape == b.shape and np.abs(a - b).max() <= bound * np.abs(a).max()


@pytest.mark.heavy
@pytest.mark.numerics
@pytest.mark.parametrize(("backbone", "preset"), [(backbone, preset) for backbone, _, preset in CASES])
def test_hf_checkpoint_converted_gives_transformers_outputs(backbone, preset):
    """The model mfport builds from the HF state dict gives transformers' outputs within 1e-4 of their largest
    magnitude. From the tensors in memory: reading transformers' files is the test above's subject."""
    model, resolved = tf_model_from_checkpoint(_in_memory(backbone))
    assert resolved.name == preset
    pixels = np.random.default_rng(0).normal(size=(2, 3, 128, 160)).astype(np.float32)  # already normalised
    with torch.no_grad():
        expected = _hf_model(backbone)(pixel_values=torch.from_numpy(pixels))
    _largest_errors_within(expected, model(tf.constant(pixels.transpose(0, 2, 3, 1))), 1e-4)


@pytest.mark.slow
@pytest.mark.numerics
def test_hf_swin_through_the_saved_model(tmp_path):
    """A transformers MaskFormer-Swin converted by mfport, served by its SavedModel (RGB 0..255 in), gives HF's
    outputs on the same normalised image within 1e-4 of their largest magnitude."""
    model, _ = tf_model_from_checkpoint(_in_memory("swin"))
    export_saved_model(model, tmp_path / "saved_model")
    serving = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    image = np.random.default_rng(3).uniform(0, 255, size=(1, 128, 160, 3)).astype(np.float32)  # no padding
    pixels = ((image - np.array(PIXEL_MEAN, np.float32)) / np.array(PIXEL_STD, np.float32)).transpose(0, 3, 1, 2)
    with torch.no_grad():
        expected = _hf_model("swin")(pixel_values=torch.from_numpy(pixels))
    _largest_errors_within(expected, serving(images=tf.constant(image)), 1e-4)


@pytest.mark.heavy
def test_hf_checkpoint_missing_a_projection_is_named(tmp_path):
    state = dict(_hf_model("resnet").state_dict())
    del state["model.transformer_module.decoder.layers.3.encoder_attn.v_proj.weight"]
    path = tmp_path / "broken.bin"  # light: the error reads names, not values
    torch.save(lightened(state), path)
    with pytest.raises(CheckpointError, match=re.escape("layers.3.multihead_attn.in_proj_weight lacks its v proj")):
        convert_to_tf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
