"""The rule language of the mapping registry: source key pattern -> TF variable path(s) -> transform.

A pattern is a name with `{field:regex}` placeholders, e.g. "backbone.{block:res\\d\\.\\d+}.conv2.weight";
the same field in the target template is written with "/" for ".": "backbone/{block}/conv2/kernel".
A transform converts one PyTorch tensor into the values of its TF variable(s) and back; it may reshape
only as its rule declares (e.g. in_proj split into per-head q/k/v kernels).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from mfport.core.patterns import PLACEHOLDER, pattern_fields, pattern_regex

Forward = Callable[[np.ndarray, list[tuple[int, ...]]], list[np.ndarray]]
Backward = Callable[[list[np.ndarray], tuple[int, ...]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Transform:
    name: str
    forward: Forward  # torch tensor, target shapes -> one array per target
    backward: Backward  # target arrays, source shape -> torch tensor
    description: str


def _single(fn: Callable[[np.ndarray], np.ndarray], inverse: Callable[[np.ndarray], np.ndarray]
            ) -> tuple[Forward, Backward]:
    return (lambda value, shapes: [fn(value)]), (lambda values, shape: inverse(values[0]))


IDENTITY = Transform("identity", *_single(lambda v: v, lambda v: v), "copied as is")
CONV_OIHW_TO_HWIO = Transform("conv_oihw_to_hwio", *_single(lambda v: np.transpose(v, (2, 3, 1, 0)),
                                                             lambda v: np.transpose(v, (3, 2, 0, 1))),
                              "conv kernel [out, in, kh, kw] -> [kh, kw, in, out]")
LINEAR_TRANSPOSE = Transform("linear_transpose", *_single(np.transpose, np.transpose),
                             "linear weight [out, in] -> kernel [in, out]")


def _heads_forward(value: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Packed in_proj [3d, d] or bias [3d] -> q, k, v in Keras MHA layout [d, h, hd] / [h, hd]."""
    parts = np.split(value, 3, axis=0)
    if value.ndim == 2:  # rows [0:d] = q, [d:2d] = k, [2d:3d] = v; each W [d_out, d_in] -> W.T per head
        return [np.ascontiguousarray(p.T).reshape(shape) for p, shape in zip(parts, shapes, strict=True)]
    return [p.reshape(shape) for p, shape in zip(parts, shapes, strict=True)]


def _heads_backward(values: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    if values[0].ndim == 3:  # kernels [d, h, hd]; biases are [h, hd]
        return np.concatenate([v.reshape(v.shape[0], -1).T for v in values], axis=0)
    return np.concatenate([v.reshape(-1) for v in values], axis=0)


IN_PROJ_SPLIT = Transform("in_proj_split_qkv", _heads_forward, _heads_backward,
                          "packed in_proj [3d, d] (rows q|k|v) -> query/key/value kernels [d, heads, d/heads] "
                          "(bias [3d] -> 3 x [heads, d/heads])")
OUT_PROJ_HEADS = Transform(
    "out_proj_to_heads",
    lambda value, shapes: [np.ascontiguousarray(value.T).reshape(shapes[0])],
    lambda values, shape: values[0].reshape(-1, values[0].shape[-1]).T.copy(),
    "out_proj weight [d, d] -> attention_output kernel [heads, d/heads, d]")
NOT_A_VARIABLE = Transform("not_a_variable", lambda value, shapes: [], lambda values, shape: np.zeros(shape),
                           "no TF variable: derived from the preset (checked against it on the way in)")


@dataclasses.dataclass(frozen=True)
class Derived:
    """A source tensor with no TF variable (its rule's transform is NOT_A_VARIABLE): its value follows from the
    preset. On the way in a checkpoint's value is checked against it (bit for bit, or to `rtol` for a float
    setting a half-precision file rounds); on the way back it is regenerated."""

    source: str  # a key pattern, as a Rule's
    value: Callable[[object], np.ndarray]  # preset -> the expected value
    keys: Callable[[object], list[str]]  # preset -> every source key it has
    setting: Callable[[object], str]  # preset -> what the value follows from, for the error message
    rtol: float = 0.0


@dataclasses.dataclass(frozen=True)
class Rule:
    """source pattern -> target templates (one per TF variable) via transform."""

    source: str
    targets: tuple[str, ...]
    transform: Transform

    @property
    def source_regex(self) -> re.Pattern[str]:
        return pattern_regex(self.source)

    def target_regexes(self) -> list[re.Pattern[str]]:
        """Targets as regexes: fields match anything with "/" where the source had "."."""
        fields = {name: regex.replace(chr(92) + ".", "/") for name, regex in pattern_fields(self.source).items()}
        return [pattern_regex(re.sub(r"\{(\w+)\}", lambda m: "{" + m.group(1) + ":" + fields[m.group(1)] + "}",
                                     template)) for template in self.targets]

    def target_names(self, fields: dict[str, str]) -> list[str]:
        return [t.format(**{k: v.replace(".", "/") for k, v in fields.items()}) for t in self.targets]

    def source_name(self, fields: dict[str, str]) -> str:
        return PLACEHOLDER.sub(lambda m: fields[m.group(1)].replace("/", "."), self.source)


def conv(source_prefix: str, target_prefix: str, bias: bool = False) -> tuple[Rule, ...]:
    rules = (Rule(f"{source_prefix}.weight", (f"{target_prefix}/kernel",), CONV_OIHW_TO_HWIO),)
    return rules + ((Rule(f"{source_prefix}.bias", (f"{target_prefix}/bias",), IDENTITY),) if bias else ())


def norm(source_prefix: str, target_prefix: str) -> tuple[Rule, ...]:
    """GroupNorm / LayerNorm: weight -> gamma, bias -> beta."""
    return (Rule(f"{source_prefix}.weight", (f"{target_prefix}/gamma",), IDENTITY),
            Rule(f"{source_prefix}.bias", (f"{target_prefix}/beta",), IDENTITY))


def linear(source_prefix: str, target_prefix: str) -> tuple[Rule, ...]:
    return (Rule(f"{source_prefix}.weight", (f"{target_prefix}/kernel",), LINEAR_TRANSPOSE),
            Rule(f"{source_prefix}.bias", (f"{target_prefix}/bias",), IDENTITY))


def attention(source_prefix: str, target_prefix: str) -> tuple[Rule, ...]:
    """nn.MultiheadAttention (packed in_proj) -> tf_keras MultiHeadAttention (query/key/value/attention_output)."""
    qkv = ("query", "key", "value")
    return (
        Rule(f"{source_prefix}.in_proj_weight", tuple(f"{target_prefix}/{n}/kernel" for n in qkv), IN_PROJ_SPLIT),
        Rule(f"{source_prefix}.in_proj_bias", tuple(f"{target_prefix}/{n}/bias" for n in qkv), IN_PROJ_SPLIT),
        Rule(f"{source_prefix}.out_proj.weight", (f"{target_prefix}/attention_output/kernel",), OUT_PROJ_HEADS),
        Rule(f"{source_prefix}.out_proj.bias", (f"{target_prefix}/attention_output/bias",), IDENTITY),
    )
