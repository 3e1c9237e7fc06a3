"""A Hugging Face transformers MaskFormer (ResNet, random init) converts; TF outputs match transformers'."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf
import torch
from safetensors.torch import save_file

from converter.checkpoint_io import CheckpointError
from converter.convert import convert_to_tf, load_tf_model

transformers = pytest.importorskip("transformers", reason="transformers is the optional 'hf' extra")


def _hf_model(depths: list[int], num_labels: int) -> torch.nn.Module:
    backbone = transformers.ResNetConfig(depths=depths, hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck",
                                         out_features=["stage1", "stage2", "stage3", "stage4"])
    config = transformers.MaskFormerConfig(backbone_config=backbone, num_labels=num_labels)
    torch.manual_seed(0)
    model = transformers.MaskFormerForInstanceSegmentation(config).eval()
    # Random-init BatchNorm statistics are 0/1; give them values so the frozen-BN path is exercised.
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model


# R50 only: with random init the 101-layer backbone's residual stream blows up (uncalibrated BN
# statistics) until float32 rounding dominates any comparison (measured: 3e-3 relative on the logits).
@pytest.mark.parametrize("depths, preset, fmt", [([3, 4, 6, 3], "r50_ade20k", "safetensors"),
                                                 ([3, 4, 6, 3], "r50_ade20k", "bin")])
def test_hf_checkpoint_converts_and_matches_transformers(tmp_path, depths, preset, fmt):
    hf = _hf_model(depths, 150)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    path = tmp_path / f"model.{fmt}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    result = convert_to_tf(path, tmp_path / "tf")
    assert result.preset == preset and result.naming_era == "huggingface"
    model = load_tf_model(tmp_path / "tf")
    pixels = np.random.default_rng(0).normal(size=(2, 3, 128, 160)).astype(np.float32)  # already normalised
    with torch.no_grad():
        expected = hf(pixel_values=torch.from_numpy(pixels))
    got = model(tf.constant(pixels.transpose(0, 2, 3, 1)))
    # Only final outputs: transformers' auxiliary outputs are not the original's.
    for a, b in [(expected.class_queries_logits.numpy(), got["pred_logits"].numpy()),
                 (expected.masks_queries_logits.numpy(), got["pred_masks"].numpy())]:
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


def test_hf_checkpoint_missing_a_projection_is_named(tmp_path):
    state = {k: v.contiguous() for k, v in _hf_model([3, 4, 6, 3], 150).state_dict().items()}
    del state["model.transformer_module.decoder.layers.3.encoder_attn.v_proj.weight"]
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    message = re.escape("layers.3.multihead_attn.in_proj_weight lacks its v projection")
    with pytest.raises(CheckpointError, match=message):
        convert_to_tf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
