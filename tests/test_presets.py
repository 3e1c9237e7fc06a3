"""The 24 released presets: key sets and shapes equal the original checkpoints', parameter counts the published
ones, every architecture detected from its keys alone (both naming eras), custom architectures built from keys."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import REFERENCE_KEYS

from mfport.core.architecture import detect_architecture, detect_preset, parameter_count, resolve_preset
from mfport.core.labels import LABEL_SET_NAMES, get_label_set, source_of
from mfport.core.naming import to_released
from mfport.core.presets import PAPER_PARAMS_M, PRESETS, SWIN_SIZES, get_preset
from mfport.core.swin import relative_position_index
from mfport.torch_reference.maskformer import MaskFormer


def reference_keys(filename: str) -> dict[str, tuple[int, ...]]:
    """The original key lists (dumped from the original models): `name (d0, d1, ...)` per line."""
    keys = {}
    for line in (REFERENCE_KEYS / filename).read_text().splitlines():
        if line.strip():
            name, shape = line.split(" ", 1)
            keys[name] = tuple(int(d) for d in re.findall(r"\d+", shape))
    return keys


def released_shapes(preset_name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = MaskFormer(get_preset(preset_name))
    return {to_released(k): tuple(v.shape) for k, v in model.state_dict().items()}


DUMPED = {"r50_ade20k": "keys_R50_ade20k_released.txt", "r50_6enc_coco_panoptic": "keys_R50_coco_panoptic_released.txt",
          "r101c_ade20k": "keys_R101c_ade20k_released.txt", "r50_6enc_ade20k_panoptic":
          "keys_R50_ade20k_panoptic_released.txt", "r101_cityscapes": "keys_R101_cityscapes_released.txt",
          "swin_t_ade20k": "keys_SwinT_ade20k_released.txt", "swin_b_coco_panoptic":
          "keys_SwinB_coco_panoptic_released.txt"}


@pytest.mark.parametrize("preset_name", list(DUMPED))
def test_key_set_and_shapes_equal_the_original_dumps(preset_name):
    expected = reference_keys(DUMPED[preset_name])
    assert released_shapes(preset_name) == expected


def _original_swin_backbone(embed: int, depths: tuple, heads: tuple, window: int) -> dict[str, tuple[int, ...]]:
    """The backbone keys of mask_former/modeling/backbone/swin.py for a config, by its construction: patch
    embedding, per block norm1/attn(qkv, proj, bias table, index buffer)/norm2/mlp, PatchMerging after stages
    0..2, norm0..3 (written from the original's structure, not from our model)."""
    keys = {"backbone.patch_embed.proj.weight": (embed, 3, 4, 4), "backbone.patch_embed.proj.bias": (embed,),
            "backbone.patch_embed.norm.weight": (embed,), "backbone.patch_embed.norm.bias": (embed,)}
    for stage, (depth, head) in enumerate(zip(depths, heads, strict=True)):
        dim = embed * 2**stage
        for block in range(depth):
            prefix = f"backbone.layers.{stage}.blocks.{block}"
            for norm in ("norm1", "norm2"):
                keys[f"{prefix}.{norm}.weight"] = keys[f"{prefix}.{norm}.bias"] = (dim,)
            keys[f"{prefix}.attn.relative_position_bias_table"] = ((2 * window - 1) ** 2, head)
            keys[f"{prefix}.attn.relative_position_index"] = (window**2, window**2)
            keys[f"{prefix}.attn.qkv.weight"], keys[f"{prefix}.attn.qkv.bias"] = (3 * dim, dim), (3 * dim,)
            keys[f"{prefix}.attn.proj.weight"], keys[f"{prefix}.attn.proj.bias"] = (dim, dim), (dim,)
            keys[f"{prefix}.mlp.fc1.weight"], keys[f"{prefix}.mlp.fc1.bias"] = (4 * dim, dim), (4 * dim,)
            keys[f"{prefix}.mlp.fc2.weight"], keys[f"{prefix}.mlp.fc2.bias"] = (dim, 4 * dim), (dim,)
        if stage < 3:
            keys[f"backbone.layers.{stage}.downsample.reduction.weight"] = (2 * dim, 4 * dim)
            keys[f"backbone.layers.{stage}.downsample.norm.weight"] = (4 * dim,)
            keys[f"backbone.layers.{stage}.downsample.norm.bias"] = (4 * dim,)
        keys[f"backbone.norm{stage}.weight"] = keys[f"backbone.norm{stage}.bias"] = (dim,)
    return keys


@pytest.mark.parametrize("preset_name", [n for n, p in PRESETS.items() if p.backbone.kind == "swin"])
def test_every_swin_preset_has_the_original_keys(preset_name):
    """The heads as in the dumped Swin lists (same data set), the backbone as the original code builds it for
    the config; the generator itself reproduces both dumped backbones."""
    preset = get_preset(preset_name)
    spec = preset.backbone
    dumped_name = "swin_t_ade20k" if preset.labels.name == "ade20k_150" else "swin_b_coco_panoptic"
    dumped = reference_keys(DUMPED[dumped_name])
    dumped_spec = get_preset(dumped_name).backbone
    assert {k: v for k, v in dumped.items() if k.startswith("backbone.")} == _original_swin_backbone(
        dumped_spec.embed_dim, dumped_spec.depths, dumped_spec.num_heads, dumped_spec.window_size)
    heads = {k: v for k, v in dumped.items() if not k.startswith("backbone.")}
    # The heads' weights that read the backbone's stages take their widths as input channels.
    reads = {"adapter_1": 0, "adapter_2": 1, "adapter_3": 2, "layer_4": 3, "predictor.input_proj": 3}
    for key, shape in heads.items():
        for module, stage in reads.items():
            if key.endswith(f"{module}.weight"):
                heads[key] = (shape[0], spec.channels[stage], *shape[2:])
    expected = {**_original_swin_backbone(spec.embed_dim, spec.depths, spec.num_heads, spec.window_size), **heads}
    assert released_shapes(preset_name) == expected
    assert (spec.embed_dim, spec.depths, spec.num_heads, spec.window_size) == next(
        (s.embed_dim, s.depths, s.num_heads, s.window_size) for s in SWIN_SIZES.values()
        if (s.embed_dim, s.depths) == (spec.embed_dim, spec.depths))


@pytest.mark.parametrize("preset_name", list(PRESETS))
def test_parameter_count_equals_published(preset_name):
    preset = PRESETS[preset_name]
    with torch.device("meta"):
        model = MaskFormer(preset)
    n_params = sum(p.numel() for p in model.parameters())
    if preset.published_params_m is not None:  # MASKFORMER.md and SWIN.md, 2 decimals
        assert round(n_params / 1e6, 2) == preset.published_params_m
    if preset_name in PAPER_PARAMS_M:  # the paper's rounded millions
        assert round(n_params / 1e6) == PAPER_PARAMS_M[preset_name]
    # The checkpoint-side count (no model: from the keys) agrees with the module's parameters.
    shapes = {k: np.empty(v.shape, np.int8) for k, v in model.state_dict().items()}
    assert parameter_count(shapes) == n_params
    if preset_name in DUMPED:  # and with the original key list's own count
        assert parameter_count({k: np.empty(s, np.int8) for k, s in reference_keys(DUMPED[preset_name]).items()}) \
            == n_params


def test_each_preset_is_detected_from_its_keys_alone_in_both_eras():
    for preset_name in PRESETS:
        shapes = {k: np.empty(s, np.int8) for k, s in released_shapes(preset_name).items()}
        live = {k.replace("sem_seg_head.", "sem_seg_head.pixel_decoder.", 1)
                if not k.startswith(("sem_seg_head.predictor", "backbone", "criterion")) else k: v
                for k, v in shapes.items()}
        assert detect_preset(shapes).name == preset_name
        assert detect_preset(live).name == preset_name
    # Architectures are distinct: no two presets share the shapes of all their weights.
    signatures = {tuple(sorted(released_shapes(n).items())) for n in PRESETS}
    assert len(signatures) == len(PRESETS)


def test_swin_sizes_and_windows_are_read_off_the_keys():
    for preset_name in ("swin_t_ade20k", "swin_s_coco_panoptic", "swin_b_ade20k", "swin_l_coco_panoptic"):
        arch = detect_architecture({k: np.empty(s, np.int8) for k, s in released_shapes(preset_name).items()})
        spec = get_preset(preset_name).backbone
        assert (arch.backbone.embed_dim, arch.backbone.depths, arch.backbone.num_heads, arch.backbone.window_size) \
            == (spec.embed_dim, spec.depths, spec.num_heads, spec.window_size)


def test_custom_architecture_from_keys():
    """37 classes and 50 queries: no released model; its preset is built from the keys, class_0.. names."""
    base = get_preset("r50_ade20k").with_overrides(num_classes=37, num_queries=50)
    with torch.device("meta"):
        state = {k: np.empty(tuple(v.shape), np.int8) for k, v in MaskFormer(base).state_dict().items()}
    assert detect_preset(state) is None
    preset = resolve_preset(state, None, "custom.pkl")
    assert preset.name == "custom" and (preset.num_classes, preset.num_queries) == (37, 50)
    assert preset.class_names[:2] == ("class_0", "class_1") and preset.backbone == base.backbone
    with torch.device("meta"):
        rebuilt = {k: tuple(v.shape) for k, v in MaskFormer(preset).state_dict().items()}
    assert rebuilt == {k: v.shape for k, v in state.items()}


def test_label_sets_come_from_the_original_registrations():
    counts = {"coco_panoptic_133": (133, 80), "ade20k_150": (150, 100), "ade20k_full_847": (847, 0),
              "coco_stuff_171": (171, 80), "cityscapes_19": (19, 8), "mapillary_vistas_65": (65, None)}
    for name in LABEL_SET_NAMES:
        labels = get_label_set(name)
        classes, things = counts[name]
        assert len(labels) == classes and len(labels.colors) == classes and len(set(labels.names)) == classes
        if things is not None:
            assert len(labels.thing_ids) == things
        assert source_of(name)["repository"] in ("facebookresearch/detectron2", "facebookresearch/MaskFormer")
    cityscapes = get_label_set("cityscapes_19")
    assert cityscapes.names[:3] == ("road", "sidewalk", "building") and cityscapes.names[-1] == "bicycle"
    assert cityscapes.thing_ids == frozenset(range(11, 19))  # person .. bicycle in trainId order
    coco = get_label_set("coco_panoptic_133")
    assert coco.category_ids[:12] == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13) and coco.category_ids[-1] == 200


def test_presets_follow_the_original_configs():
    coco, ade, swin_b = get_preset("r50_6enc_coco_panoptic"), get_preset("r50_ade20k"), get_preset("swin_b_ade20k")
    assert coco.no_object_index == 133 and ade.no_object_index == 150
    assert (coco.object_mask_threshold, coco.overlap_threshold, coco.size_divisibility) == (0.8, 0.8, 0)
    # mask_former/config.py: TEST thresholds 0.0 unless a config sets them (semantic configs do not).
    assert (ade.object_mask_threshold, ade.overlap_threshold, ade.size_divisibility) == (0.0, 0.0, 32)
    assert (get_preset("r50_6enc_ade20k_panoptic").object_mask_threshold, get_preset("r50_6enc_ade20k_panoptic")
            .overlap_threshold) == (0.7, 0.8)
    coco_swin = get_preset("swin_t_coco_panoptic")
    assert coco_swin.pixel_decoder == "base" and coco_swin.enforce_input_proj and coco_swin.size_divisibility == 0
    assert coco_swin.recipe.base_lr == 6e-5 and coco_swin.recipe.weight_decay == 0.01
    assert coco_swin.recipe.backbone_multiplier == 1.0 and coco_swin.recipe.warmup_steps == 1500
    assert (swin_b.test_min_size, swin_b.test_max_size, swin_b.backbone.window_size) == (640, 2560, 12)
    assert get_preset("r101c_ade20k").backbone.res5_multi_grid == (1, 2, 4)
    assert get_preset("ade20k-150/maskformer_R101c_bs16_160k") is get_preset("r101c_ade20k")
    assert get_preset("maskformer_panoptic_swin_large_IN21k_384_bs64_554k.yaml") is get_preset("swin_l_coco_panoptic")
    with torch.device("meta"):
        model = MaskFormer(coco)
    assert model.criterion.empty_weight.shape == (134,)


def test_preset_serialisation_round_trips():
    from mfport.core.presets import MaskFormerPreset

    for preset in [*PRESETS.values(), get_preset("r50_ade20k").with_overrides(num_classes=5, num_queries=7)]:
        assert MaskFormerPreset.from_dict(preset.to_dict()) == preset


def test_relative_position_index_is_the_offset_table():
    """Brute force: for every token pair of a window, the table row of their (dy, dx) offset."""
    for window in (2, 7):
        index = relative_position_index(window)
        for a in range(window * window):
            for b in range(window * window):
                dy, dx = a // window - b // window, a % window - b % window
                assert index[a, b] == (dy + window - 1) * (2 * window - 1) + (dx + window - 1)
