"""`mfport convert`: a PyTorch MaskFormer checkpoint -> a TF model directory (core/model_dir.py), and back.

The directory is written under a temporary name beside its destination (`.NAME.<pid>.<random>.partial`,
holding its owner's pid and start time) and renamed into place at the end, so a failed or killed conversion
leaves no output; the next conversion to the same output removes partials whose owner process is gone.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
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

from mfport.converter.mappings import MAPPING_VERSION
from mfport.converter.registry import tf_to_torch, tf_variable_path, torch_to_tf
from mfport.core.architecture import detect_architecture, resolve_preset
from mfport.core.checkpoint_io import (
    Checkpoint,
    atomic_write,
    nonfinite_counts,
    read_checkpoint,
    write_detectron2_pickle,
)
from mfport.core.errors import CheckpointError, MfportError, require_torch
from mfport.core.labels import LabelSet
from mfport.core.model_dir import MANIFEST, SAVED_MODEL, TF_CHECKPOINT, Manifest, SourceInfo, TensorRecord
from mfport.core.naming import original_live_state, to_released
from mfport.core.presets import MaskFormerPreset

OUTPUT_FORMATS = ("tf-checkpoint", "keras")


@dataclasses.dataclass
class ConversionResult:
    output: str
    preset: MaskFormerPreset
    source_format: str
    naming_era: str
    tensors: int
    tensor_bytes: int
    cast_to_float32: bool
    timings_s: dict[str, float]
    records: list[TensorRecord]
    removed_partials: list[str]
    dropped: list[str]  # source keys with no counterpart (BatchNorm counters, HF Swin's unused layernorm)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _process_start(pid: int) -> str | None:
    """The start time of a live process (field 22 of /proc/PID/stat), None when there is no such process:
    with the pid, it tells a partial's owner from a later process that reuses the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: only whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "unknown"
    return stat.rsplit(")", 1)[1].split()[19]


@dataclasses.dataclass
class OutputDir:
    """A directory written under a temporary name beside its destination and renamed on commit."""

    final: Path
    force: bool = False
    OWNER = ".mfport-owner.json"

    def __post_init__(self) -> None:
        if self.final.exists() and not self.force:
            raise CheckpointError(f"{self.final}: exists; pass --force to overwrite", parameter="output")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.removed = self.remove_stale_partials()
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.{os.getpid()}.", suffix=".partial",
                                         dir=self.final.parent))
        (self.tmp / self.OWNER).write_text(json.dumps({"pid": os.getpid(), "start": _process_start(os.getpid())}))

    def remove_stale_partials(self) -> list[str]:
        """Remove `.NAME.*.partial` directories of conversions whose process is gone (killed, crashed); a
        partial whose owner still runs is left alone."""
        removed = []
        for partial in self.final.parent.glob(f".{self.final.name}.*.partial"):
            try:
                owner = json.loads((partial / self.OWNER).read_text())
                alive = _process_start(int(owner["pid"])) in (owner["start"], "unknown")
            except (OSError, ValueError, KeyError, TypeError):
                alive = time.time() - partial.stat().st_mtime < 3600  # no owner file yet: only if an hour old
            if not alive:
                shutil.rmtree(partial, ignore_errors=True)
                removed.append(str(partial))
        return removed

    def commit(self) -> None:
        (self.tmp / self.OWNER).unlink(missing_ok=True)
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


def _refuse_nonfinite(tensors: dict[str, np.ndarray], source: str) -> None:
    counts = nonfinite_counts(tensors)
    if counts:
        first = ", ".join(f"'{k}' ({n})" for k, n in list(counts.items())[:3])
        more = f" and {len(counts) - 3} more" if len(counts) > 3 else ""
        raise CheckpointError(f"{source}: {sum(counts.values())} non-finite values (NaN/inf) in {len(counts)} "
                              f"tensor(s): {first}{more}; pass --allow-nonfinite to convert anyway",
                              parameter="allow_nonfinite")


def _out_of_space(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    text = str(err)
    return "No space left on device" in text or "File too large" in text or "Disk quota exceeded" in text


def convert_to_tf(source: str | os.PathLike[str], output: str | os.PathLike[str],
                  preset: MaskFormerPreset | str | None = None, formats: Iterable[str] = ("tf-checkpoint",),
                  saved_model: bool = False, keep_dtype: bool = False, force: bool = False,
                  allow_nonfinite: bool = False, labels: LabelSet | None = None,
                  progress: Callable[[str], None] = lambda step: None) -> ConversionResult:
    """PyTorch checkpoint (any supported format) -> TF model directory; nothing half-written on failure."""
    from mfport.tf_maskformer.modeling.factory import build_maskformer

    formats = tuple(formats)
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if unknown:
        raise MfportError(f"unknown {unknown[0]!r}; choose from {', '.join(OUTPUT_FORMATS)}", parameter="format")
    out = OutputDir(Path(output), force)
    source_digest = concurrent.futures.ThreadPoolExecutor(1)  # hashlib releases the GIL: overlaps the rest
    try:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        progress("read")
        sha256 = source_digest.submit(_sha256, str(source))
        checkpoint = read_checkpoint(source)
        live = original_live_state(checkpoint)
        state, era = live.tensors, live.naming
        checkpoint.tensors = {}  # `state` holds them now; mapping frees each one as it is converted
        if not allow_nonfinite:
            _refuse_nonfinite(state, checkpoint.path)
        timings["read"] = time.perf_counter() - start
        resolved = resolve_preset(state, preset, checkpoint.path, labels)
        architecture = dataclasses.asdict(detect_architecture(state))
        architecture["backbone"] = resolved.backbone.label
        tensor_bytes = int(sum(v.nbytes for v in state.values()))
        progress("build")
        start = time.perf_counter()
        source_dtypes = set(checkpoint.source_dtypes)
        # The weights' precision; integer buffers (Swin's relative_position_index) are derived, not variables.
        float_dtypes = {d for d in source_dtypes if "float" in d}
        kept_dtype = None
        if keep_dtype and len(float_dtypes) == 1 and float_dtypes != {"float32"}:
            kept_dtype = next(iter(float_dtypes))  # the TF variables take the source's (half) precision
        model = build_maskformer(resolved, dtype=kept_dtype)
        timings["build_model"] = time.perf_counter() - start
        progress("map")
        start = time.perf_counter()
        with _without_cyclic_gc():
            records = assign_converted(model, state, resolved, checkpoint.path, keep_dtype, consume=True)
        timings["map"] = time.perf_counter() - start
        progress("write")
        start = time.perf_counter()
        try:
            write_model(model, out.tmp, formats, saved_model, progress)
        except Exception as err:
            if not _out_of_space(err):
                raise
            out.abort()
            free = shutil.disk_usage(out.final.parent).free
            raise CheckpointError(f"{out.final}: no space left on the device while writing the TF model: it needs "
                                  f"about {tensor_bytes * (2 if saved_model else 1) / 2**20:.0f} MiB, "
                                  f"{free / 2**20:.0f} MiB are free there", parameter="output") from None
        cast = kept_dtype is None and float_dtypes != {"float32"}
        manifest = Manifest(
            mapping_version=MAPPING_VERSION,
            source=SourceInfo(str(source), sha256.result(), checkpoint.format, era, sorted(source_dtypes), cast,
                              kept_dtype or "float32", live.dropped),
            preset=resolved, architecture=architecture, formats=list(formats), saved_model=saved_model,
            tensors=records)
        (out.tmp / MANIFEST).write_text(manifest.to_json())
        timings["write"] = time.perf_counter() - start
        out.commit()
    except BaseException:
        out.abort()
        raise
    finally:
        source_digest.shutdown(wait=True)
    return ConversionResult(str(output), resolved, checkpoint.format, era, len(records), tensor_bytes, cast, timings,
                            records, out.removed, live.dropped)


def tf_model_from_checkpoint(source: str | os.PathLike[str] | Checkpoint,
                             preset: MaskFormerPreset | str | None = None, policy: str | None = None,
                             labels: LabelSet | None = None) -> tuple[object, MaskFormerPreset]:
    """An in-memory converted TF MaskFormer (no files written), and its preset, from a checkpoint file or from
    tensors already in memory (a `Checkpoint`: a state dict as numpy, under any naming a file may use).
    `policy` is a Keras mixed-precision policy for it ("mixed_bfloat16": float32 variables, bfloat16 compute,
    as on TPU)."""
    from mfport.tf_maskformer.modeling.factory import build_maskformer

    checkpoint = source if isinstance(source, Checkpoint) else read_checkpoint(source)
    state = original_live_state(checkpoint).tensors
    resolved = resolve_preset(state, preset, checkpoint.path, labels)
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


def write_model(model: object, directory: Path, formats: tuple[str, ...], saved_model: bool,
                progress: Callable[[str], None] = lambda step: None) -> None:
    import tensorflow as tf

    with _without_cyclic_gc():  # not around the SavedModel export: tracing leaves cyclic garbage
        if "tf-checkpoint" in formats:
            tf.train.Checkpoint(model=model).write(str(directory / TF_CHECKPOINT / "ckpt"))
        if "keras" in formats:
            model.save_weights(str(directory / "model.weights.h5"))
    if saved_model:
        from mfport.tf_maskformer.serving.export import export_saved_model

        progress("saved model")
        export_saved_model(model, directory / SAVED_MODEL)


def convert_to_torch(model_dir: str | os.PathLike[str], output: str | os.PathLike[str], force: bool = False,
                     naming: str = "original") -> dict[str, np.ndarray]:
    """TF model directory -> PyTorch checkpoint: the original naming (.pkl in the released era, .pth/.safetensors
    live), or with naming="huggingface" transformers' MaskFormer names (.safetensors/.bin/.pth)."""
    from mfport.tf_maskformer.serving.model_dir import load_converted_model

    output = Path(output)
    if naming not in ("original", "huggingface"):
        raise CheckpointError(f"unknown naming {naming!r}; choose original or huggingface", parameter="naming")
    if output.exists() and not force:
        raise CheckpointError(f"{output}: exists; pass --force to overwrite", parameter="output")
    suffixes = (".pkl", ".pth", ".pt", ".safetensors") if naming == "original" else (".safetensors", ".bin", ".pth")
    if output.suffix not in suffixes:
        raise CheckpointError(f"{output}: choose a {'/'.join(suffixes)} output for {naming} naming", parameter="output")
    model = load_converted_model(model_dir)
    values = {tf_variable_path(v.name): v.numpy() for v in model.variables}
    state = tf_to_torch(values, model.preset)
    if naming == "huggingface":
        from mfport.core.huggingface import to_hf_state

        state = to_hf_state(state, str(model_dir))
    if output.suffix == ".pkl":
        write_detectron2_pickle(output, {to_released(k): v for k, v in state.items()},
                                author=f"mfport convert --to torch ({model_dir})")
    elif output.suffix in (".pth", ".pt", ".bin"):
        torch = require_torch(f"writing {output}")
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
        payload = tensors if naming == "huggingface" else {"model": tensors}
        atomic_write(output, lambda tmp: torch.save(payload, tmp))
    else:
        from safetensors.numpy import save_file

        atomic_write(output, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp)))
    return state
