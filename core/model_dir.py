"""The directory `mfport convert` writes, and its manifest.

  tf_checkpoint/ckpt-*   tf.train.Checkpoint(model=...): what fine-tuning and predict start from (default)
  model.weights.h5       Keras weights (--format keras)
  saved_model/           serving SavedModel (--saved-model), mfport_model.json beside its graph
  manifest.json          source sha256, the full preset (a custom architecture included), mapping version,
                         and per tensor: source key, TF variables, transform, shapes, crc32
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from mfport.core.errors import CheckpointError
from mfport.core.presets import MaskFormerPreset, get_preset

MANIFEST = "manifest.json"
TF_CHECKPOINT = "tf_checkpoint"
KERAS_WEIGHTS = "model.weights.h5"
SAVED_MODEL = "saved_model"
MANIFEST_SCHEMA = 2  # 2: the whole preset under "preset_config" (1 held its name only)


@dataclasses.dataclass
class TensorRecord:
    """One source tensor's journey into the TF model."""

    source_key: str
    family: str
    tf_variables: list[str]
    transform: str
    source_shape: list[int]
    tf_shapes: list[list[int]]
    source_dtype: str
    crc32: str  # of the source tensor's bytes as converted (float32 unless the dtype was kept)


@dataclasses.dataclass
class SourceInfo:
    path: str
    sha256: str
    format: str
    naming: str
    dtypes: list[str]
    cast_to_float32: bool
    tf_variable_dtype: str = "float32"
    dropped_keys: list[str] = dataclasses.field(default_factory=list)  # no counterpart (e.g. HF Swin's layernorm)


@dataclasses.dataclass
class Manifest:
    mapping_version: str
    source: SourceInfo
    preset: MaskFormerPreset
    architecture: dict[str, object]
    formats: list[str]
    saved_model: bool
    tensors: list[TensorRecord]
    schema: int = MANIFEST_SCHEMA

    def to_json(self) -> str:
        return json.dumps({
            "schema": self.schema, "mapping_version": self.mapping_version,
            "source": dataclasses.asdict(self.source), "preset": self.preset.name,
            "preset_config": self.preset.to_dict(), "architecture": self.architecture,
            "outputs": {"formats": self.formats, "saved_model": self.saved_model},
            "tensors": [dataclasses.asdict(t) for t in self.tensors]}, indent=1)

    @classmethod
    def read(cls, model_dir: str | os.PathLike[str]) -> Manifest:
        path = Path(model_dir) / MANIFEST
        if not path.is_file():
            raise CheckpointError(f"{model_dir}: not a converted model directory (no {MANIFEST})")
        try:
            data = json.loads(path.read_text())
            preset = (MaskFormerPreset.from_dict(data["preset_config"]) if "preset_config" in data
                      else get_preset(data["preset"]))
            return cls(mapping_version=str(data["mapping_version"]), source=SourceInfo(**data["source"]),
                       preset=preset, architecture=data.get("architecture", {}),
                       formats=list(data["outputs"]["formats"]), saved_model=bool(data["outputs"]["saved_model"]),
                       tensors=[TensorRecord(**t) for t in data["tensors"]], schema=int(data["schema"]))
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{path}: corrupt manifest ({type(err).__name__}: {err})") from None
