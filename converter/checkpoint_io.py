"""Reading and writing MaskFormer checkpoints as flat {name: numpy array} dicts, never trusting a pickle.

Formats, detected from the file's bytes (the extension is only a hint):
- detectron2 pickle (.pkl): {"model": {name: ndarray}, "__author__": ...}; read with a restricted
  unpickler that admits only containers, scalars and numpy arrays.
- torch zip/legacy file (.pth/.pt): a state dict or {"model": state_dict, ...}; torch.load(weights_only=True).
- safetensors.
Every failure is a CheckpointError whose message is one line naming the file.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not fit; str() is a one-line message."""


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


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "numpy.dtypes" and name.endswith("DType"):  # numpy 2 dtype classes
            return super().find_class(module, name)
        raise UnsafePickleError(f"refused to load global '{module}.{name}' (only numpy arrays, "
                                     "containers and scalars are allowed)")


def safe_unpickle(data: bytes | io.BufferedIOBase) -> object:
    """Unpickle bytes or a binary file; latin1 lets Python 2 pickles (older model-zoo files) decode."""
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    return RestrictedUnpickler(stream, encoding="latin1").load()


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
        with open(path, "rb") as f:  # streamed: the file's bytes are never held whole beside the arrays
            return safe_unpickle(f)
    except UnsafePickleError as err:
        raise CheckpointError(f"{path}: unsafe pickle, nothing executed: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt pickle ({type(err).__name__}: {err})") from None


def _read_torch(path: Path) -> object:
    import torch

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
