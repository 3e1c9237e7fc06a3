"""`mfport convert`: a PyTorch MaskFormer checkpoint -> a TF model directory, and back.

Output directory (written to a temporary sibling, then renamed into place):
  tf_checkpoint/ckpt-*   tf.train.Checkpoint(model=...) — what fine-tuning starts from (default)
  model.weights.h5       Keras weights (--format keras)
  saved_model/           serving SavedModel (--saved-model)
  manifest.json          source sha256, detected architecture, mapping version, per-tensor records
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from converter.architecture import detect_architecture, resolve_preset
from converter.checkpoint_io import CheckpointError, read_checkpoint, write_detectron2_pickle
from converter.mappings import MAPPING_VERSION
from converter.naming import original_live_state, to_released
from converter.registry import TensorRecord, tf_to_torch, tf_variable_path, torch_to_tf
from torch_reference.presets import MaskFormerPreset, get_preset

MANIFEST_SCHEMA = 1
OUTPUT_FORMATS = ("tf-checkpoint", "keras")


@dataclasses.dataclass
class ConversionResult:
    output: str
    preset: str
    source_format: str
    naming_era: str
    tensors: int
    tensor_bytes: int
    cast_to_float32: bool
    timings_s: dict[str, float]
    records: list[TensorRecord]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass
class OutputDir:
    """A directory written under a temporary name beside its destination and renamed on commit."""

    final: Path
    force: bool = False

    def __post_init__(self) -> None:
        if self.final.exists() and not self.force:
            raise CheckpointError(f"{self.final}: exists; pass --force to overwrite")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", suffix=".partial", dir=self.final.parent))

    def commit(self) -> None:
        backup = None
        if self.final.exists():
            backup = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, backup)
        os.replace(self.tmp, self.final)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Mapping and checkpoint writing free their arrays by reference count and make few cycles; a full
    collection over the just-built model's Python objects, which they would otherwise trigger now and
    then, costs ~0.2 s."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def convert_to_tf(source: str | os.PathLike[str], output: str | os.PathLike[str],
                  preset: MaskFormerPreset | str | None = None, formats: Iterable[str] = ("tf-checkpoint",),
                  saved_model: bool = False, keep_dtype: bool = False, force: bool = False,
                  progress: Callable[[str], None] = lambda step: None) -> ConversionResult:
    """PyTorch checkpoint (any supported format) -> TF model directory; nothing half-written on failure."""
    from tf_maskformer.modeling.factory import build_maskformer

    formats = tuple(formats)
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if unknown:
        raise CheckpointError(f"--format: unknown {unknown[0]!r}; choose from {', '.join(OUTPUT_FORMATS)}")
    out = OutputDir(Path(output), force)
    source_digest = concurrent.futures.ThreadPoolExecutor(1)  # hashlib releases the GIL: overlaps the rest
    try:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        progress("read")
        sha256 = source_digest.submit(_sha256, str(source))
        checkpoint = read_checkpoint(source)
        state, era = original_live_state(checkpoint)
        checkpoint.tensors = {}  # `state` holds them now; mapping frees each one as it is converted
        timings["read"] = time.perf_counter() - start
        resolved = resolve_preset(state, preset, checkpoint.path)
        architecture = dataclasses.asdict(detect_architecture(state))
        tensor_bytes = int(sum(v.nbytes for v in state.values()))
        progress("build")
        start = time.perf_counter()
        source_dtypes = set(checkpoint.source_dtypes)
        kept_dtype = None
        if keep_dtype and len(source_dtypes) == 1 and source_dtypes != {"float32"}:
            kept_dtype = next(iter(source_dtypes))  # the TF variables take the source's (half) precision
        model = build_maskformer(resolved, dtype=kept_dtype)
        timings["build_model"] = time.perf_counter() - start
        progress("map")
        start = time.perf_counter()
        with _without_cyclic_gc():
            records = assign_converted(model, state, resolved, checkpoint.path, keep_dtype, consume=True)
        timings["map"] = time.perf_counter() - start
        progress("write")
        start = time.perf_counter()
        write_model(model, out.tmp, formats, saved_model)
        cast = kept_dtype is None and source_dtypes != {"float32"}
        manifest = {
            "schema": MANIFEST_SCHEMA,
            "mapping_version": MAPPING_VERSION,
            "source": {"path": str(source), "sha256": sha256.result(), "format": checkpoint.format,
                       "naming": era, "dtypes": sorted(source_dtypes),
                       "cast_to_float32": cast, "tf_variable_dtype": kept_dtype or "float32"},
            "preset": resolved.name,
            "architecture": architecture,
            "outputs": {"formats": list(formats), "saved_model": saved_model},
            "tensors": [dataclasses.asdict(r) for r in records],
        }
        (out.tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        timings["write"] = time.perf_counter() - start
        out.commit()
    except BaseException:
        out.abort()
        raise
    finally:
        source_digest.shutdown(wait=True)
    return ConversionResult(str(output), resolved.name, checkpoint.format, era, len(records),
                            tensor_bytes, cast, timings, records)


def tf_model_from_checkpoint(source: str | os.PathLike[str], preset: MaskFormerPreset | str | None = None,
                             policy: str | None = None) -> tuple[object, MaskFormerPreset]:
    """An in-memory converted TF MaskFormer (no files written), and its preset. `policy` is a Keras
    mixed-precision policy for it ("mixed_bfloat16": float32 variables, bfloat16 compute, as on TPU)."""
    from tf_maskformer.modeling.factory import build_maskformer

    checkpoint = read_checkpoint(source)
    state, _ = original_live_state(checkpoint)
    resolved = resolve_preset(state, preset, checkpoint.path)
    model = build_maskformer(resolved, dtype=policy)
    assign_converted(model, state, resolved, checkpoint.path)
    return model, resolved


def assign_converted(model: object, state: dict[str, np.ndarray], preset: MaskFormerPreset, source: str,
                     keep_dtype: bool = False, consume: bool = False) -> list[TensorRecord]:
    """Map live-named tensors through the registry into a built TF model's variables (with accounting),
    each assigned as soon as it is converted; `consume` empties `state` on the way (lower peak memory)."""
    import tensorflow as tf

    variables = {tf_variable_path(v.name): v for v in model.variables}

    def assign(name: str, value: np.ndarray) -> None:
        variables[name].assign(tf.cast(_laid_out(value), variables[name].dtype))

    _, records = torch_to_tf(state, {k: tuple(v.shape) for k, v in variables.items()}, preset,
                             source=source, keep_dtype=keep_dtype, sink=assign, consume=consume)
    return records


def _laid_out(value: np.ndarray) -> np.ndarray | object:
    """A contiguous array as it is; a transposed view of one (a conv or linear kernel) transposed by TF,
    whose kernel uses every core where numpy's strided copy uses one (~0.05 s of the R50 map step)."""
    if value.flags.c_contiguous:
        return value
    import tensorflow as tf

    # The axes in memory order of the array the view was taken of (size-1 axes may go anywhere).
    memory_order = sorted(range(value.ndim), key=lambda axis: -value.strides[axis])
    source = value.transpose(memory_order)
    if not source.flags.c_contiguous:  # not a pure transpose (e.g. a slice): numpy lays it out
        return np.ascontiguousarray(value)
    return tf.transpose(source, np.argsort(memory_order))


def write_model(model: object, directory: Path, formats: tuple[str, ...], saved_model: bool) -> None:
    import tensorflow as tf

    with _without_cyclic_gc():  # not around the SavedModel export: tracing leaves cyclic garbage
        if "tf-checkpoint" in formats:
            tf.train.Checkpoint(model=model).write(str(directory / "tf_checkpoint" / "ckpt"))
        if "keras" in formats:
            model.save_weights(str(directory / "model.weights.h5"))
    if saved_model:
        from tf_maskformer.serving.export import export_saved_model

        export_saved_model(model, directory / "saved_model")


def read_manifest(model_dir: str | os.PathLike[str]) -> dict[str, object]:
    path = Path(model_dir) / "manifest.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: not a converted model directory (no manifest.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: corrupt manifest ({err})") from None


def load_tf_model(model_dir: str | os.PathLike[str]) -> object:
    """The TF MaskFormer of a converted model directory, weights restored from its TF checkpoint."""
    import tensorflow as tf

    from tf_maskformer.modeling.factory import build_maskformer

    manifest = read_manifest(model_dir)
    dtype = manifest["source"].get("tf_variable_dtype", "float32")
    model = build_maskformer(get_preset(manifest["preset"]), dtype=None if dtype == "float32" else dtype)
    checkpoint_path = Path(model_dir) / "tf_checkpoint" / "ckpt"
    if Path(model_dir, "tf_checkpoint").is_dir():
        tf.train.Checkpoint(model=model).read(str(checkpoint_path)).assert_existing_objects_matched()
    elif Path(model_dir, "model.weights.h5").is_file():
        model.load_weights(str(Path(model_dir) / "model.weights.h5"))
    else:
        raise CheckpointError(f"{model_dir}: holds neither tf_checkpoint/ nor model.weights.h5")
    return model


def convert_to_torch(model_dir: str | os.PathLike[str], output: str | os.PathLike[str], force: bool = False
                     ) -> dict[str, np.ndarray]:
    """TF model directory -> PyTorch checkpoint in original naming (.pkl released era, .pth/.safetensors live)."""
    output = Path(output)
    if output.exists() and not force:
        raise CheckpointError(f"{output}: exists; pass --force to overwrite")
    model = load_tf_model(model_dir)
    values = {tf_variable_path(v.name): v.numpy() for v in model.variables}
    state = tf_to_torch(values, model.preset)
    if output.suffix == ".pkl":
        write_detectron2_pickle(output, {to_released(k): v for k, v in state.items()},
                                author=f"mfport convert --to torch ({model_dir})")
    elif output.suffix in (".pth", ".pt"):
        import torch

        from converter.checkpoint_io import atomic_write

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
        atomic_write(output, lambda tmp: torch.save({"model": tensors}, tmp))
    elif output.suffix == ".safetensors":
        from safetensors.numpy import save_file

        from converter.checkpoint_io import atomic_write

        atomic_write(output, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp)))
    else:
        raise CheckpointError(f"{output}: choose a .pkl, .pth/.pt or .safetensors output")
    return state
