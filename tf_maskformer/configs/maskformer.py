"""Model Garden configs (official.modeling.hyperparams) of the TF MaskFormer.

A config names a preset (torch_reference.presets, the single definition of every architecture) and may
override the settings a user changes when fine-tuning; None keeps the preset's value.
"""

from __future__ import annotations

import dataclasses

from official.modeling import hyperparams

from torch_reference.presets import MaskFormerPreset, get_preset


@dataclasses.dataclass
class MaskFormerModel(hyperparams.Config):
    preset: str = "r50_6enc_coco_panoptic"
    # Fixed input size [H, W] for compiled (XLA/TPU) execution; empty means any size (eager, serving).
    input_size: list[int] = dataclasses.field(default_factory=list)
    num_classes: int | None = None
    num_queries: int | None = None
    dropout: float | None = None
    size_divisibility: int | None = None
    object_mask_threshold: float | None = None
    overlap_threshold: float | None = None

    def to_preset(self) -> MaskFormerPreset:
        overrides = {field: getattr(self, field)
                     for field in ("num_classes", "num_queries", "dropout", "size_divisibility",
                                   "object_mask_threshold", "overlap_threshold")
                     if getattr(self, field) is not None}
        return get_preset(self.preset).with_overrides(**overrides)
