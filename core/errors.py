"""The one error type of the library: bad input a user can fix.

Every error mfport raises for a file, argument or data problem is an MfportError (or a subclass): str() is
one line; `parameter` names the argument at fault by its library name (the CLI shows the flag it maps to);
`report` may hold a longer, multi-line account (every mismatched key, say) that `mfport -v` prints.
"""

from __future__ import annotations


class MfportError(Exception):
    def __init__(self, message: str, *, parameter: str | None = None, report: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.report = report


class CheckpointError(MfportError):
    """A checkpoint that cannot be read, is unsafe, or does not fit the model."""


class InputError(MfportError):
    """Images (or other inputs) the model cannot take."""


class DatasetError(MfportError):
    """Bad data-set input (annotations, images, records)."""


class MissingExtraError(MfportError):
    """A feature whose optional dependencies are not installed; names the extra that brings them."""

    def __init__(self, feature: str, extra: str, missing: str) -> None:
        super().__init__(f"{feature} needs {missing}, which is not installed: pip install 'mfport[{extra}]'")
        self.extra = extra


def require_torch(feature: str) -> object:
    """import torch, or a MissingExtraError naming the 'torch' extra."""
    try:
        import torch
    except ImportError:
        raise MissingExtraError(feature, "torch", "PyTorch") from None
    return torch
