"""Named tap points the TF model offers to the parity harness (no model code is copied there).

Inside `with record_taps() as taps:` every `tap(name, value)` the model passes stores its value in
`taps`; outside, tap() just returns the value (eager, graph and XLA alike).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import tensorflow as tf

_RECORDERS: list[dict[str, tf.Tensor]] = []


@contextlib.contextmanager
def record_taps() -> Iterator[dict[str, tf.Tensor]]:
    recorded: dict[str, tf.Tensor] = {}
    _RECORDERS.append(recorded)
    try:
        yield recorded
    finally:
        _RECORDERS.pop()


def tap(name: str, value: tf.Tensor) -> tf.Tensor:
    if _RECORDERS:
        _RECORDERS[-1][name] = value
    return value
