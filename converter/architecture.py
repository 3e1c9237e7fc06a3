"""Detecting a MaskFormer architecture (and so its preset) from a checkpoint's keys and shapes."""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from converter.checkpoint_io import CheckpointError
from converter.naming import naming_era, to_live
from torch_reference.presets import PRESETS, RESNET_STAGE_BLOCKS, MaskFormerPreset, get_preset


@dataclasses.dataclass(frozen=True)
class DetectedArchitecture:
    naming_era: str
    backbone_depth: int | None
    pixel_decoder: str
    pixel_decoder_enc_layers: int
    num_classes: int | None
    num_queries: int | None
    dec_layers: int
    has_predictor_input_proj: bool

    def matches(self, preset: MaskFormerPreset) -> bool:
        return (self.backbone_depth == preset.backbone_depth
                and self.pixel_decoder == preset.pixel_decoder
                and self.pixel_decoder_enc_layers == preset.pixel_decoder_enc_layers
                and self.num_classes == preset.num_classes
                and self.num_queries == preset.num_queries
                and self.dec_layers == preset.dec_layers
                and self.has_predictor_input_proj == preset.has_predictor_input_proj)


def _count_indices(keys: list[str], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def detect_architecture(tensors: dict[str, np.ndarray]) -> DetectedArchitecture:
    keys = [to_live(k) for k in tensors]
    shapes = {to_live(k): tuple(v.shape) for k, v in tensors.items()}
    stage_blocks = tuple(_count_indices(keys, rf"backbone\.res{s}\.(\d+)\.") for s in (2, 3, 4, 5))
    depth = next((d for d, blocks in RESNET_STAGE_BLOCKS.items() if blocks == stage_blocks), None)
    enc_layers = _count_indices(keys, r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.")
    class_shape = shapes.get("sem_seg_head.predictor.class_embed.weight")
    query_shape = shapes.get("sem_seg_head.predictor.query_embed.weight")
    return DetectedArchitecture(
        naming_era=naming_era(tensors),
        backbone_depth=depth,
        pixel_decoder="transformer_encoder" if enc_layers else "base",
        pixel_decoder_enc_layers=enc_layers,
        num_classes=class_shape[0] - 1 if class_shape else None,
        num_queries=query_shape[0] if query_shape else None,
        dec_layers=_count_indices(keys, r"sem_seg_head\.predictor\.transformer\.decoder\.layers\.(\d+)\."),
        has_predictor_input_proj="sem_seg_head.predictor.input_proj.weight" in shapes,
    )


def detect_preset(tensors: dict[str, np.ndarray]) -> MaskFormerPreset | None:
    """The named preset whose architecture the checkpoint has, or None."""
    arch = detect_architecture(tensors)
    return next((p for p in PRESETS.values() if arch.matches(p)), None)


def resolve_preset(state: dict[str, np.ndarray], preset: MaskFormerPreset | str | None, source: str
                   ) -> MaskFormerPreset:
    """The preset asked for (name or object), else the one detected from live-named tensors."""
    if isinstance(preset, str):
        try:
            return get_preset(preset)
        except KeyError as err:
            raise CheckpointError(f"--preset: {err.args[0]}") from None
    if preset is not None:
        return preset
    detected = detect_preset(state)
    if detected is None:
        arch = detect_architecture(state)
        raise CheckpointError(f"{source}: architecture (R{arch.backbone_depth}, {arch.pixel_decoder} decoder, "
                              f"{arch.num_classes} classes) matches no preset; pass --preset")
    return detected


def is_frozen_bn_buffer(key: str) -> bool:
    """FrozenBN weight/bias/running stats are buffers in detectron2, not parameters."""
    return key.startswith("backbone.") and ".norm." in key


def parameter_count(tensors: dict[str, np.ndarray]) -> int:
    """Trainable parameters as the published counts define them: no frozen-BN or criterion buffers."""
    return int(sum(v.size for k, v in tensors.items()
                   if not is_frozen_bn_buffer(k) and not k.startswith("criterion.")))
