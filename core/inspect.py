"""What `mfport inspect` reports about a checkpoint: format, naming era, architecture and the preset it is
(or that it is a custom one, with the defaults assumed for what its keys do not show), tensors, parameters,
dtypes, size, and tensors holding NaN or infinite values."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from mfport.core.architecture import (
    CUSTOM_DEFAULTS,
    DetectedArchitecture,
    detect_architecture,
    labels_for,
    parameter_count,
    resolve_preset,
)
from mfport.core.checkpoint_io import nonfinite_counts, read_checkpoint
from mfport.core.naming import original_live_state
from mfport.core.presets import MaskFormerPreset


@dataclasses.dataclass
class CheckpointSummary:
    path: str
    format: str
    naming_era: str
    architecture: DetectedArchitecture
    preset: MaskFormerPreset  # the released preset, or a custom one built from the keys
    tensor_count: int
    parameter_count: int
    element_count: int
    dtypes: list[str]
    tensor_bytes: int
    file_bytes: int
    nonfinite: dict[str, int]
    metadata: dict[str, str]

    @property
    def is_custom(self) -> bool:
        return self.preset.name == "custom"

    def to_dict(self) -> dict[str, object]:
        arch = self.architecture
        return {
            "path": self.path, "format": self.format, "naming_era": self.naming_era,
            "detected_preset": None if self.is_custom else self.preset.name,
            "custom_architecture": self.is_custom,
            "assumed_defaults": dict(CUSTOM_DEFAULTS) if self.is_custom else {},
            "architecture": {"backbone": arch.backbone_label, "pixel_decoder": arch.pixel_decoder,
                             "encoder_layers": arch.pixel_decoder_enc_layers, "num_classes": arch.num_classes,
                             "num_queries": arch.num_queries, "decoder_layers": arch.dec_layers},
            "class_names": self.preset.labels.name, "tensor_count": self.tensor_count,
            "parameter_count": self.parameter_count, "published_parameter_count_m": self.preset.published_params_m,
            "element_count": self.element_count, "dtypes": self.dtypes, "tensor_bytes": self.tensor_bytes,
            "file_bytes": self.file_bytes, "nonfinite": self.nonfinite, "metadata": self.metadata}

    def rows(self) -> list[tuple[str, str]]:
        """(field, value) rows of the human-readable table."""
        published = self.preset.published_params_m
        preset = (f"{self.preset.name} ({self.preset.original_config}, {self.preset.published_result})"
                  if not self.is_custom else "none: a custom architecture (settings its keys do not show: "
                  + ", ".join(f"{k} {v}" for k, v in CUSTOM_DEFAULTS.items()) + ")")
        rows = [
            ("format", self.format), ("naming era", self.naming_era), ("preset", preset),
            ("architecture", self.architecture.summary()),
            ("class names", f"{self.preset.labels.name} ({self.preset.num_classes})"),
            ("tensors", str(self.tensor_count)),
            ("parameters", f"{self.parameter_count:,} ({self.parameter_count / 1e6:.2f}M"
                           + (f"; published {published:.2f}M)" if published else ")")),
            ("elements (incl. buffers)", f"{self.element_count:,}"),
            ("dtype", ", ".join(self.dtypes)),
            ("size", f"{self.file_bytes / 2**20:.1f} MiB file, {self.tensor_bytes / 2**20:.1f} MiB tensors"),
            ("non-finite values", "none" if not self.nonfinite else
             f"{sum(self.nonfinite.values())} in {len(self.nonfinite)} tensor(s)"),
        ]
        return rows + [(f"metadata: {k}", v) for k, v in self.metadata.items()]


def inspect_checkpoint(path: str | os.PathLike[str], dataset: str | None = None,
                       class_names: str | None = None) -> CheckpointSummary:
    labels = labels_for(dataset, class_names)
    checkpoint = read_checkpoint(path)
    live = original_live_state(checkpoint)
    state, era = live.tensors, live.naming
    preset = resolve_preset(state, None, checkpoint.path, labels)
    return CheckpointSummary(
        path=str(path), format=checkpoint.format, naming_era=era, architecture=detect_architecture(state),
        preset=preset, tensor_count=len(state), parameter_count=parameter_count(state),
        element_count=int(sum(v.size for v in state.values())),
        dtypes=sorted({str(v.dtype) for v in checkpoint.tensors.values()}),
        tensor_bytes=int(sum(v.nbytes for v in state.values())), file_bytes=checkpoint.file_size,
        nonfinite=nonfinite_counts(state),
        metadata={k: str(v) for k, v in checkpoint.metadata.items() if isinstance(v, (str, int, float, np.generic))})
