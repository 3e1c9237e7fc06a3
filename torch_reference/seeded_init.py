"""Deterministic original-format weights of realistic scale for a preset (the embedded default checkpoint).

Random weights alone make a poor test object: He-normal convs with random frozen-BN statistics blow the
residual stream up to ~1e3..1e4, and 1/sqrt(fan_in) attention collapses the 100 queries into copies.
So, as ../shared/reference/MASKFORMER.md recommends:
- every frozen BN's running_mean/var is calibrated, in forward order, from the conv output it actually
  sees on seeded synthetic images (float64), then perturbed slightly;
- residual-branch BNs (conv3) get small gammas, so res2..res5 stay at std ~1-5;
- attention q/k projections are scaled up (x3, on nn.MultiheadAttention's own xavier scale) and
  residual-branch outputs (out_proj, linear2) down (x1/sqrt(12)), so queries stay distinct; the class
  head is scaled so predictions are confident. `attention="sharp"` scales q/k to 6/sqrt(fan_in) instead:
  float32 rounding is then amplified as in some trained checkpoints (the regime parity must not flag).
Each tensor draws from its own generator seeded by (seed, crc32(name)): same seed -> same bytes.
"""

from __future__ import annotations

import math
import os
import re
import zlib

import numpy as np
import torch

from mfport.core.checkpoint_io import write_detectron2_pickle
from mfport.core.naming import to_released
from mfport.core.presets import MaskFormerPreset
from mfport.core.swin import relative_position_index
from mfport.core.synthetic_images import synthetic_images
from mfport.torch_reference.backbone import FrozenBatchNorm2d
from mfport.torch_reference.maskformer import MaskFormer

QK_SCALE = 3.0
SHARP_QK_SCALE = 6.0
ATTENTION_KINDS = ("default", "sharp")
RESIDUAL_OUT_SCALE = 1.0 / math.sqrt(12.0)
CLASS_HEAD_SCALE = 4.0
CALIBRATION_BATCH, CALIBRATION_SIZE = 2, 256


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
    return (mean + std * rng.standard_normal(shape)).astype(np.float32)


def _fan_in(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:]))


def initial_tensor(name: str, shape: tuple[int, ...], seed: int, preset: MaskFormerPreset,
                   attention: str = "default") -> np.ndarray:
    """The seeded value of one state-dict entry (live naming), before BN calibration."""
    rng = _rng(seed, name)
    leaf = name.rsplit(".", 1)[-1]
    if name == "criterion.empty_weight":
        weight = np.ones(shape, dtype=np.float32)
        weight[-1] = preset.no_object_weight
        return weight
    swin = preset.backbone.kind == "swin"
    if swin and name.startswith("backbone."):
        swin_value = _swin_tensor(name, leaf, shape, rng, preset)
        if swin_value is not None:
            return swin_value
    if not swin and name.startswith("backbone.") and ".norm." in name:  # FrozenBN
        residual_branch = ".conv3.norm." in name
        if leaf == "weight":
            low, high = (0.2, 0.5) if residual_branch else (0.6, 1.2)
            return rng.uniform(low, high, size=shape).astype(np.float32)
        if leaf == "bias":
            return _normal(rng, shape, 0.1)
        # running_mean / running_var: placeholders, calibrated from real activations afterwards.
        return np.zeros(shape, np.float32) if leaf == "running_mean" else np.ones(shape, np.float32)
    if re.search(r"\.norm\d?\.", name):  # GroupNorm / LayerNorm
        return _normal(rng, shape, 0.1, mean=1.0) if leaf == "weight" else _normal(rng, shape, 0.1)
    if leaf in ("bias", "in_proj_bias"):
        if name.endswith("class_embed.bias"):
            return _normal(rng, shape, 0.5)
        return _normal(rng, shape, 0.02)
    if name.endswith("query_embed.weight"):
        return _normal(rng, shape, 1.0)
    fan_in = _fan_in(shape)
    if leaf == "in_proj_weight":
        # default: nn.MultiheadAttention's own init scale (xavier over the packed [3d, d] weight), q/k rows x3.
        # On a 1/sqrt(fan_in) base instead, attention logits reach std ~15 and the decoder amplifies float32
        # rounding of its input ~20-35x (R101); on this base ~4x, with queries as distinct.
        # sharp: q/k rows x6 on the 1/sqrt(fan_in) base, as some trained checkpoints are: PyTorch's own float32
        # run is then ~8e-4 off its float64 run at pred_logits (480x640), the regime parity must not flag.
        xavier = math.sqrt(2.0 / (shape[0] + shape[1]))
        weight = _normal(rng, shape, xavier)
        weight[: 2 * shape[1]] *= SHARP_QK_SCALE / math.sqrt(shape[1]) / xavier if attention == "sharp" else QK_SCALE
        return weight
    if name.endswith("out_proj.weight") or name.endswith("linear2.weight"):
        return _normal(rng, shape, RESIDUAL_OUT_SCALE / math.sqrt(fan_in))
    if name.endswith("class_embed.weight"):
        return _normal(rng, shape, CLASS_HEAD_SCALE / math.sqrt(fan_in))
    if name.endswith("mask_embed.layers.2.weight") or name.endswith("mask_features.weight") \
            or name.endswith("input_proj.weight"):
        return _normal(rng, shape, 1.0 / math.sqrt(fan_in))  # linear outputs (no ReLU after)
    return _normal(rng, shape, math.sqrt(2.0 / fan_in))  # He-normal: convs and layers before a ReLU


def _swin_tensor(name: str, leaf: str, shape: tuple[int, ...], rng: np.random.Generator, preset: MaskFormerPreset
                 ) -> np.ndarray | None:
    """Swin backbone entries that differ from the generic rules (None: the generic rule applies). Trained Swin
    bias tables hold O(1) values; qkv on a 1/sqrt(C) base with q/k x1.5 keeps windows' attention distinct;
    residual outputs (attn.proj, mlp.fc2) scaled down keep the pre-norm stream stable over 18 blocks."""
    if leaf == "relative_position_index":
        return relative_position_index(preset.backbone.window_size)  # a buffer: the true index, not noise
    if leaf == "relative_position_bias_table":
        return _normal(rng, shape, 1.0)
    if name.endswith("attn.qkv.weight"):
        weight = _normal(rng, shape, 1.0 / math.sqrt(shape[1]))
        weight[: 2 * shape[1]] *= 1.5
        return weight
    if name.endswith("attn.proj.weight") or name.endswith("mlp.fc2.weight"):
        return _normal(rng, shape, RESIDUAL_OUT_SCALE / math.sqrt(_fan_in(shape)))
    if name.endswith("patch_embed.proj.weight") or name.endswith("downsample.reduction.weight"):
        return _normal(rng, shape, 1.0 / math.sqrt(_fan_in(shape)))  # linear, normed right after
    return None


@torch.no_grad()
def calibrate_frozen_bn(model: MaskFormer, images: torch.Tensor, seed: int) -> None:
    """Set each FrozenBN's statistics from its input on `images`, layer by layer in forward order.

    A pre-hook fires on each BN just before it runs, so every layer sees inputs produced by layers
    already calibrated: one forward pass calibrates the whole backbone.
    """
    handles = []
    for name, module in model.backbone.named_modules():
        if not isinstance(module, FrozenBatchNorm2d):
            continue

        def calibrate(mod: FrozenBatchNorm2d, inputs: tuple[torch.Tensor], name: str = name) -> None:
            x = inputs[0]
            mean = x.mean(dim=(0, 2, 3))
            var = x.var(dim=(0, 2, 3), unbiased=False)
            var = torch.clamp(var, min=1e-3 * float(var.median()) + 1e-12)
            rng = _rng(seed, f"calibration:{name}")
            jitter_mean = torch.from_numpy(rng.standard_normal(mean.shape[0])).to(x)
            jitter_var = torch.from_numpy(rng.standard_normal(mean.shape[0])).to(x)
            mod.running_mean.copy_(mean + 0.05 * var.sqrt() * jitter_mean)
            mod.running_var.copy_(var * torch.exp(0.1 * jitter_var))

        handles.append(module.register_forward_pre_hook(calibrate))
    try:
        model.backbone(images)
    finally:
        for handle in handles:
            handle.remove()


def seeded_state_dict(preset: MaskFormerPreset, seed: int, attention: str = "default") -> dict[str, np.ndarray]:
    """float32 state dict (live naming) of a realistic-scale seeded MaskFormer."""
    torch.manual_seed(seed)
    model = MaskFormer(preset).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    initial = {k: torch.from_numpy(initial_tensor(k, s, seed, preset, attention)) for k, s in shapes.items()}
    model.load_state_dict(initial, strict=True)
    if preset.backbone.kind == "resnet":  # Swin has LayerNorms only: nothing to calibrate
        model.double()  # calibrate in float64 so the stored statistics do not depend on thread count
        images = synthetic_images(seed, CALIBRATION_BATCH, CALIBRATION_SIZE, CALIBRATION_SIZE)
        padded, _ = model.preprocess(list(torch.from_numpy(images).permute(0, 3, 1, 2).double()))
        calibrate_frozen_bn(model, padded, seed)
    state = model.state_dict()
    return {k: v.detach().numpy() if v.dtype == torch.int64 else v.detach().float().numpy() for k, v in state.items()}


def write_seeded_checkpoint(preset: MaskFormerPreset, seed: int, path: str | os.PathLike[str],
                            attention: str = "default") -> dict[str, np.ndarray]:
    """Write a model-zoo style pickle (released naming) and return the tensors written."""
    state = {to_released(k): v for k, v in seeded_state_dict(preset, seed, attention).items()}
    write_detectron2_pickle(path, state, author=f"mfport init-checkpoint --preset {preset.name} --seed {seed} "
                                                f"--attention {attention}")
    return state
