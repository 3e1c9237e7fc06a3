"""A MaskFormer architecture read off a checkpoint's keys and shapes, and the preset it is.

Everything that shapes weights is visible in a checkpoint: backbone family and size (ResNet depth and
stem; Swin width, depths, heads and window), pixel decoder and its encoder layers, class and query counts,
decoder layers, the predictor's input projection. What is not (attention heads of the heads' transformer,
thresholds, panoptic on/off, input padding, res5's multi-grid) comes from the matching released preset, or
for a custom architecture from the released models' defaults, which `mfport inspect` prints.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from mfport.core.errors import CheckpointError, MfportError
from mfport.core.labels import LabelSet, get_label_set
from mfport.core.naming import naming_era, to_live
from mfport.core.presets import (
    PRESETS,
    RESNET_STAGE_BLOCKS,
    BackboneSpec,
    MaskFormerPreset,
    ResNetSpec,
    SwinSpec,
    get_preset,
)

# Settings no key shows, for architectures that match no released preset (the released models' values).
CUSTOM_DEFAULTS = {"nheads": 8, "size_divisibility": 32, "panoptic_on": False, "object_mask_threshold": 0.8,
                   "overlap_threshold": 0.8}


@dataclasses.dataclass(frozen=True)
class DetectedArchitecture:
    """What a checkpoint's keys and shapes say about the model (None where they say nothing)."""

    naming_era: str
    backbone: BackboneSpec | None
    pixel_decoder: str
    pixel_decoder_enc_layers: int
    num_classes: int | None
    num_queries: int | None
    dec_layers: int
    has_predictor_input_proj: bool
    hidden_dim: int | None
    conv_dim: int | None
    mask_dim: int | None
    dim_feedforward: int | None

    @property
    def backbone_label(self) -> str:
        return self.backbone.label if self.backbone is not None else "unknown"

    def summary(self) -> str:
        decoder = "BasePixelDecoder" if self.pixel_decoder == "base" else f"+{self.pixel_decoder_enc_layers} Enc"
        return (f"{self.backbone_label}, {decoder}, {self.num_classes} classes, {self.num_queries} queries, "
                f"{self.dec_layers} decoder layers")

    def matches(self, preset: MaskFormerPreset) -> bool:
        """The preset builds exactly these weights (settings no key shows are not compared)."""
        return (_weight_signature(self.backbone) == _weight_signature(preset.backbone)
                and self.pixel_decoder == preset.pixel_decoder
                and self.pixel_decoder_enc_layers == preset.pixel_decoder_enc_layers
                and self.num_classes == preset.num_classes
                and self.num_queries == preset.num_queries
                and self.dec_layers == preset.dec_layers
                and self.has_predictor_input_proj == preset.has_predictor_input_proj
                and (self.hidden_dim, self.conv_dim, self.mask_dim, self.dim_feedforward)
                == (preset.hidden_dim, preset.conv_dim, preset.mask_dim, preset.dim_feedforward))


def _weight_signature(spec: BackboneSpec | None) -> tuple | None:
    """The parts of a backbone spec that shape its weights (not dilations, drop path or pretrain size)."""
    if isinstance(spec, ResNetSpec):
        return ("resnet", spec.depth, spec.stem, spec.stem_out_channels)
    if isinstance(spec, SwinSpec):
        return ("swin", spec.embed_dim, spec.depths, spec.num_heads, spec.window_size, spec.patch_size, spec.mlp_ratio)
    return None


def _count_indices(keys: list[str], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def _detect_resnet(keys: list[str], shapes: dict[str, tuple[int, ...]]) -> ResNetSpec | None:
    stage_blocks = tuple(_count_indices(keys, rf"backbone\.res{s}\.(\d+)\.") for s in (2, 3, 4, 5))
    depth = next((d for d, blocks in RESNET_STAGE_BLOCKS.items() if blocks == stage_blocks), None)
    if depth is None:
        return None
    if "backbone.stem.conv3.weight" in shapes:  # DeepLab stem: R101c's multi-grid (1, 2, 4) in every config
        return ResNetSpec(depth, stem="deeplab", stem_out_channels=shapes["backbone.stem.conv3.weight"][0],
                          res5_multi_grid=(1, 2, 4))
    stem = shapes.get("backbone.stem.conv1.weight")
    return ResNetSpec(depth, stem_out_channels=stem[0]) if stem is not None else None


def _detect_swin(keys: list[str], shapes: dict[str, tuple[int, ...]]) -> SwinSpec | None:
    patch = shapes.get("backbone.patch_embed.proj.weight")
    if patch is None:
        return None
    depths = tuple(_count_indices(keys, rf"backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(4))
    heads, windows = [], set()
    for stage in range(4):
        table = shapes.get(f"backbone.layers.{stage}.blocks.0.attn.relative_position_bias_table")
        if table is None:
            return None
        heads.append(table[1])
        windows.add((math.isqrt(table[0]) + 1) // 2)  # (2w - 1)^2 rows
    fc1 = shapes.get("backbone.layers.0.blocks.0.mlp.fc1.weight")
    if len(windows) != 1 or fc1 is None or 0 in depths:
        return None
    try:
        return SwinSpec(embed_dim=patch[0], depths=depths, num_heads=tuple(heads), window_size=windows.pop(),
                        patch_size=patch[-1], mlp_ratio=fc1[0] / fc1[1])
    except ValueError:
        return None


def detect_architecture(tensors: dict[str, np.ndarray]) -> DetectedArchitecture:
    keys = [to_live(k) for k in tensors]
    shapes = {to_live(k): tuple(v.shape) for k, v in tensors.items()}
    enc_layers = _count_indices(keys, r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.")
    class_shape = shapes.get("sem_seg_head.predictor.class_embed.weight")
    query_shape = shapes.get("sem_seg_head.predictor.query_embed.weight")
    layer_4 = shapes.get("sem_seg_head.pixel_decoder.layer_4.weight")
    mask_features = shapes.get("sem_seg_head.pixel_decoder.mask_features.weight")
    linear1 = shapes.get("sem_seg_head.predictor.transformer.decoder.layers.0.linear1.weight")
    return DetectedArchitecture(
        naming_era=naming_era(tensors),
        backbone=_detect_resnet(keys, shapes) or _detect_swin(keys, shapes),
        pixel_decoder="transformer_encoder" if enc_layers else "base",
        pixel_decoder_enc_layers=enc_layers,
        num_classes=class_shape[0] - 1 if class_shape else None,
        num_queries=query_shape[0] if query_shape else None,
        dec_layers=_count_indices(keys, r"sem_seg_head\.predictor\.transformer\.decoder\.layers\.(\d+)\."),
        has_predictor_input_proj="sem_seg_head.predictor.input_proj.weight" in shapes,
        hidden_dim=query_shape[1] if query_shape else None,
        conv_dim=layer_4[0] if layer_4 else None,
        mask_dim=mask_features[0] if mask_features else None,
        dim_feedforward=linear1[0] if linear1 else None,
    )


def detect_preset(tensors: dict[str, np.ndarray]) -> MaskFormerPreset | None:
    """The named (released) preset whose architecture the checkpoint has, or None."""
    arch = detect_architecture(tensors)
    return next((p for p in PRESETS.values() if arch.matches(p)), None)


def custom_preset(arch: DetectedArchitecture, source: str, labels: LabelSet | None = None,
                  **settings: object) -> MaskFormerPreset:
    """A preset for an architecture no released model has, built from what the keys show; the rest from
    CUSTOM_DEFAULTS (or `settings`). Raises when the keys do not determine a model."""
    missing = [name for name, value in (("backbone", arch.backbone), ("class head", arch.num_classes),
                                        ("query embedding", arch.num_queries), ("pixel decoder layer_4", arch.conv_dim),
                                        ("mask_features", arch.mask_dim), ("decoder layers", arch.dec_layers or None),
                                        ("decoder FFN", arch.dim_feedforward)) if value is None]
    if missing:
        raise CheckpointError(f"{source}: not a MaskFormer checkpoint this tool knows: no {missing[0]} found "
                              f"(architecture: {arch.summary()})")
    labels = labels or LabelSet.generic(arch.num_classes)
    if len(labels) != arch.num_classes:
        raise CheckpointError(f"{source}: the class head has {arch.num_classes} classes but the class names "
                              f"({labels.name}) list {len(labels)}", parameter="dataset")
    backbone_channels = arch.backbone.channels[-1]
    transformer_in = "transformer_encoder" if arch.pixel_decoder == "transformer_encoder" else "res5"
    predictor_in = arch.conv_dim if transformer_in == "transformer_encoder" else backbone_channels
    enforce = arch.has_predictor_input_proj and predictor_in == arch.hidden_dim
    values = {**CUSTOM_DEFAULTS, **settings}
    return MaskFormerPreset(
        name="custom", description=f"custom: {arch.summary()}", original_config="", labels=labels,
        num_classes=arch.num_classes, backbone=arch.backbone, pixel_decoder=arch.pixel_decoder,
        pixel_decoder_enc_layers=arch.pixel_decoder_enc_layers, transformer_in_feature=transformer_in,
        conv_dim=arch.conv_dim, mask_dim=arch.mask_dim, hidden_dim=arch.hidden_dim, num_queries=arch.num_queries,
        dim_feedforward=arch.dim_feedforward, dec_layers=arch.dec_layers, enforce_input_proj=enforce,
        semantic_on=not values["panoptic_on"], **values)


STEM_KERNELS = {"basic": (7, 7), "deeplab": (3, 3)}


def check_stem(state: dict[str, np.ndarray], source: str) -> None:
    """A ResNet stem is detectron2's basic stem (one 7x7 conv) or the DeepLab stem (three 3x3 convs)."""
    conv1 = state.get("backbone.stem.conv1.weight")
    if conv1 is None:
        return
    stem = "deeplab" if "backbone.stem.conv3.weight" in state else "basic"
    if tuple(conv1.shape[2:]) != STEM_KERNELS[stem] or conv1.shape[1] != 3:
        raise CheckpointError(f"{source}: 'backbone.stem.conv1.weight' is {tuple(conv1.shape)}: the stem is neither "
                              "the basic stem (one 7x7 conv) nor the DeepLab stem (three 3x3 convs)")


def resolve_preset(state: dict[str, np.ndarray], preset: MaskFormerPreset | str | None, source: str,
                   labels: LabelSet | None = None) -> MaskFormerPreset:
    """The preset asked for (name or object), else the released one the keys match, else a custom one built
    from the keys (class names from `labels`, generic class_0.. otherwise)."""
    check_stem(state, source)
    if isinstance(preset, str):
        preset = get_preset(preset)
    if preset is not None:
        return preset if labels is None else _relabelled(preset, labels, source)
    arch = detect_architecture(state)
    detected = next((p for p in PRESETS.values() if arch.matches(p)), None)
    if detected is not None:
        return detected if labels is None else _relabelled(detected, labels, source)
    return custom_preset(arch, source, labels)


def _relabelled(preset: MaskFormerPreset, labels: LabelSet, source: str) -> MaskFormerPreset:
    if len(labels) != preset.num_classes:
        raise MfportError(f"{source}: the class head has {preset.num_classes} classes but data set {labels.name!r} "
                          f"has {len(labels)}", parameter="dataset")
    return preset.with_overrides(labels=labels)


def labels_for(dataset: str | None = None, class_names: str | None = None) -> LabelSet | None:
    """The label set a user names (a released data set, or a class-names JSON), or None."""
    from mfport.core.labels import read_class_names

    if dataset and class_names:
        raise MfportError("give a data set or a class-names file, not both", parameter="dataset")
    if dataset:
        return get_label_set(dataset)
    return read_class_names(class_names) if class_names else None


def is_frozen_bn_buffer(key: str) -> bool:
    """FrozenBN weight/bias/running stats are buffers in detectron2, not parameters (ResNet backbones only:
    a Swin backbone's `norm` entries are LayerNorm parameters)."""
    return key.startswith("backbone.") and (".norm." in key or key.endswith(".norm")) \
        and re.match(r"backbone\.(stem|res[2-5])\.", key) is not None


def is_buffer(key: str) -> bool:
    """Entries of a state dict that are not trainable parameters."""
    return is_frozen_bn_buffer(key) or key.startswith("criterion.") or key.endswith("relative_position_index")


def parameter_count(tensors: dict[str, np.ndarray]) -> int:
    """Trainable parameters as the published counts define them: no buffers (frozen BN, criterion, index)."""
    return int(sum(v.size for k, v in tensors.items() if not is_buffer(k)))
