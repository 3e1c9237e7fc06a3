"""Reading and writing MaskFormer checkpoints as flat {name: numpy array} dicts, never trusting a pickle.

Formats, detected from the file's bytes (the extension is only a hint):
- detectron2 pickle (.pkl): {"model": {name: ndarray}, "__author__": ...}; read with a restricted
  unpickler that admits only containers, scalars and numpy arrays, from a private memory map of the
  file: large arrays are views of the mapped bytes, never copied on the way in.
- torch zip/legacy file (.pth/.pt): a state dict or {"model": state_dict, ...}; torch.load(weights_only=True).
- safetensors.
Every failure is a CheckpointError whose message is one line naming the file.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mfport.core.errors import CheckpointError, require_torch

# Everything a model-zoo pickle may reference: numpy's array reconstruction under both numpy 1.x
# and 2.x module names, its dtype/ndarray/scalar classes, OrderedDict, and _codecs.encode (protocol-2
# pickles rebuild byte buffers with it; it only turns a str into bytes). Nothing else loads.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something other than numpy arrays, containers and scalars."""


# Payloads at least this long come back from the mapped file as views; pickle's writer puts such
# payloads outside its 64 KiB frames when it writes to a file, so they are not copied through a frame.
_VIEW_MIN_BYTES = 1 << 16


class _MappedFile:
    """The read/readline a pickle reader needs, over a memory map: short reads are bytes, long ones views."""

    def __init__(self, mapped: mmap.mmap) -> None:
        self._mapped = mapped
        self._view = memoryview(mapped)
        self._pos = 0

    def read(self, size: int) -> bytes | memoryview:
        start, end = self._pos, self._pos + size
        if end > len(self._mapped):
            if start >= len(self._mapped):
                return b""  # end of file: the unpickler raises EOFError
            raise pickle.UnpicklingError(f"pickle data was truncated ({size} bytes wanted at {start})")
        self._pos = end
        return self._view[start:end] if size >= _VIEW_MIN_BYTES else self._mapped[start:end]

    def readline(self) -> bytes:
        end = self._mapped.find(b"\n", self._pos)
        end = len(self._mapped) if end < 0 else end + 1
        line, self._pos = self._mapped[self._pos:end], end
        return line


class _PendingArray:
    """Stands for an ndarray while a mapped pickle loads: the pickle's BUILD hands it the array's state
    (version, shape, dtype, Fortran order, data), and `materialize` turns it into the array."""

    def __setstate__(self, state: tuple) -> None:
        self.state = state

    def materialize(self) -> np.ndarray:
        state = getattr(self, "state", None)
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("an ndarray without a valid state")
        shape, dtype, fortran, data = state[-4:]
        # Plain numbers in native byte order become views; numpy's own unpickling also swaps the rest.
        if isinstance(data, memoryview) and isinstance(dtype, np.dtype) and dtype.kind in "biufc" and dtype.isnative:
            count = int(np.prod(shape, dtype=np.int64))
            if count * dtype.itemsize != len(data):
                raise ValueError(f"array data of {len(data)} bytes for shape {tuple(shape)} of {dtype}")
            flat = np.frombuffer(data, dtype=dtype, count=count)
            return flat.reshape(tuple(shape)[::-1]).T if fortran else flat.reshape(shape)
        # Python 2 str payloads, short payloads, other dtypes: numpy's own unpickling of the state.
        array = np.ndarray.__new__(np.ndarray, (0,), "b")
        array.__setstate__(tuple(bytes(p) if isinstance(p, memoryview) else p for p in state))
        return array


def _pending_array(subtype: type, shape: tuple, dtype: object) -> _PendingArray:
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refused to rebuild an array of type '{subtype!r}' (only numpy.ndarray)")
    return _PendingArray()


class _MappedUnpickler(pickle._Unpickler):
    """The restricted unpickler over a memory-mapped file: only _ALLOWED_GLOBALS and numpy 2's dtype classes
    load. Python's pure-Python unpickler, because the C one copies every payload into a new bytes object:
    here numpy's _reconstruct yields a _PendingArray, and long payloads stay views of the mapping, so a
    170 MB checkpoint is read without being copied."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED_GLOBALS:
            return _pending_array if name == "_reconstruct" else super().find_class(module, name)
        if module == "numpy.dtypes" and name.endswith("DType"):  # numpy 2 dtype classes
            return super().find_class(module, name)
        raise UnsafePickleError(f"refused to load global '{module}.{name}' (only numpy arrays, "
                                     "containers and scalars are allowed)")

    def _decode_string(self, value: bytes | memoryview) -> object:  # Python 2 str payloads
        return super()._decode_string(bytes(value) if isinstance(value, memoryview) else value)


def _materialized(obj: object, done: dict[int, object]) -> object:
    """The unpickled object with every _PendingArray made an array (and stray views made bytes)."""
    if id(obj) in done:
        return done[id(obj)]
    if isinstance(obj, _PendingArray):
        state = getattr(obj, "state", None)
        if isinstance(state, tuple) and state and isinstance(state[-1], list):  # an object array's items
            obj.state = (*state[:-1], _materialized(state[-1], done))
        done[id(obj)] = obj.materialize()
    elif isinstance(obj, memoryview):
        done[id(obj)] = obj.tobytes()
    elif isinstance(obj, dict):
        done[id(obj)] = obj  # containers are filled in place (a self-reference finds the same object)
        for key, value in obj.items():
            obj[key] = _materialized(value, done)
    elif isinstance(obj, list):
        done[id(obj)] = obj
        obj[:] = [_materialized(value, done) for value in obj]
    elif isinstance(obj, tuple):
        done[id(obj)] = tuple(_materialized(value, done) for value in obj)
    else:
        return obj
    return done[id(obj)]


def unpickle_mapped(path: str | os.PathLike[str]) -> object:
    """Unpickle a file through a private (copy-on-write) memory map: arrays of 64 KiB and more are views
    of the file's pages (read on first touch, from the page cache), writable without touching the file.
    Only allowed globals load. As with any memory map, the file must not be rewritten while they live."""
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # the map outlives the descriptor
    loaded = _MappedUnpickler(_MappedFile(mapped), encoding="latin1").load()
    return _materialized(loaded, {})


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint's tensors (flat names, numpy) and what was learned while reading it."""

    path: str
    format: str  # "detectron2-pkl", "torch", "safetensors"
    tensors: dict[str, np.ndarray]
    metadata: dict[str, object]
    file_size: int
    source_dtypes: set[str] = dataclasses.field(default_factory=set)  # as stored (bfloat16 is widened on read)


def _detect_format(path: Path, head: bytes) -> str:
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len < 100_000_000:
            return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol 2+: a detectron2 pkl or a legacy torch.save file
        return "torch" if path.suffix in (".pth", ".pt") else "detectron2-pkl"
    raise CheckpointError(f"{path}: not a checkpoint (unrecognised format; expected a detectron2 .pkl, "
                          "a torch .pth/.pt or a .safetensors file)")


def _flatten_state(obj: object, path: Path) -> tuple[dict[str, object], dict[str, object]]:
    """Split a loaded object into its state dict and metadata ({"model": sd, ...} or sd itself)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint (top level is {type(obj).__name__}, not a dict)")
    if "model" in obj and isinstance(obj["model"], dict):
        return obj["model"], {k: v for k, v in obj.items() if k != "model"}
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    return obj, {}


def _dtype_name(value: object) -> str:
    return str(value.dtype).removeprefix("torch.")


def _to_numpy(name: str, value: object, path: Path) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch"):
        import torch

        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu()
            if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: widen exactly
                tensor = tensor.float()
            return tensor.numpy()
    raise CheckpointError(f"{path}: entry '{name}' is a {type(value).__name__}, not a tensor")


def _read_pickle(path: Path) -> object:
    try:
        return unpickle_mapped(path)
    except UnsafePickleError as err:
        raise CheckpointError(f"{path}: unsafe pickle, nothing executed: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt pickle ({type(err).__name__}: {err})") from None


def _read_torch(path: Path) -> object:
    torch = require_torch(f"reading the torch file {path}")

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: refused by torch.load(weights_only=True): {first}") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: truncated or corrupt torch file ({first})") from None


def _read_safetensors(path: Path) -> dict[str, object]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({err})") from None


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read any supported checkpoint into numpy arrays (dtype kept) without running any code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"{path}: empty file")
    fmt = _detect_format(path, head)
    if fmt == "detectron2-pkl":
        obj = _read_pickle(path)
    elif fmt == "torch":
        obj = _read_torch(path)
    else:
        obj = _read_safetensors(path)
    state, metadata = _flatten_state(obj, path)
    tensors = {str(k): _to_numpy(str(k), v, path) for k, v in state.items()}
    if not tensors:
        raise CheckpointError(f"{path}: checkpoint holds no tensors")
    dtypes = {_dtype_name(v) for v in state.values()}
    return Checkpoint(str(path), fmt, tensors, metadata, path.stat().st_size, dtypes)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Write through `write(tmp_path)` into a temporary file beside `path`, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_detectron2_pickle(path: str | os.PathLike[str], tensors: dict[str, np.ndarray],
                            author: str) -> None:
    """Model-zoo layout: {"model": {name: ndarray}, "__author__": str}, written atomically."""
    payload = {"model": {k: np.ascontiguousarray(v) for k, v in tensors.items()}, "__author__": author}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(payload, f, protocol=4)

    atomic_write(path, write)


def nonfinite_counts(tensors: dict[str, np.ndarray]) -> dict[str, int]:
    """Per tensor holding NaN or infinite values, how many."""
    counts = {}
    for key, value in tensors.items():
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            counts[key] = int(value.size - np.count_nonzero(np.isfinite(value)))
    return counts
