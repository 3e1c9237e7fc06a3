"""The engine behind the mapping registry: PyTorch state dict <-> TF variable values, with accounting.

Both directions read the same rule tables (converter/mappings). Every source tensor is consumed exactly
once and every TF variable assigned exactly once, or a ConversionError names each missing, unexpected
and mis-shaped key (with the closest name).
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Callable

import numpy as np

from mfport.converter.mappings import DERIVED, FAMILIES
from mfport.converter.rules import Derived, Rule
from mfport.core.errors import CheckpointError
from mfport.core.model_dir import TensorRecord
from mfport.core.naming import KeyMismatch, compare_keys
from mfport.core.patterns import pattern_regex
from mfport.core.presets import MaskFormerPreset


class ConversionError(CheckpointError):
    """Accounting failed; str() is one line, `.report` names every key."""

    def __init__(self, message: str, report: str, mismatch: KeyMismatch | None = None) -> None:
        super().__init__(message, report=report)
        self.mismatch = mismatch


@functools.cache
def _compiled() -> list[tuple[str, Rule, re.Pattern[str], list[re.Pattern[str]]]]:
    return [(family, rule, rule.source_regex, rule.target_regexes())
            for family, rules in FAMILIES.items() for rule in rules]


def match_derived(key: str) -> Derived | None:
    """The Derived entry of a source key with no TF variable, if it is one."""
    return next((d for d in DERIVED if pattern_regex(d.source).match(key)), None)


def match_source(key: str) -> tuple[str, Rule, dict[str, str]] | None:
    for family, rule, regex, _ in _compiled():
        if match := regex.match(key):
            return family, rule, match.groupdict()
    return None


def match_target(name: str) -> tuple[str, Rule, dict[str, str], int] | None:
    for family, rule, _, regexes in _compiled():
        for index, regex in enumerate(regexes):
            if match := regex.match(name):
                return family, rule, match.groupdict(), index
    return None


def tf_variable_path(variable_name: str) -> str:
    """'maskformer/backbone/res3/0/conv2/kernel:0' -> 'backbone/res3/0/conv2/kernel'."""
    name = variable_name.split(":")[0]
    return name.split("/", 1)[1] if name.startswith("maskformer/") else name


def expected_source_shapes(tf_shapes: dict[str, tuple[int, ...]], preset: MaskFormerPreset
                           ) -> dict[str, tuple[int, ...]]:
    """The PyTorch keys and shapes a TF model's variables correspond to (derived via the rules)."""
    zeros = {name: np.zeros(shape, np.float32) for name, shape in tf_shapes.items()}
    return {k: v.shape for k, v in tf_to_torch(zeros, preset).items()}


def _map_tensor(key: str, value: np.ndarray, tf_shapes: dict[str, tuple[int, ...]]
                ) -> tuple[str, Rule, list[str], list[np.ndarray]] | None:
    """One source tensor through its rule: (family, rule, TF variables, values), or None when it has no
    rule, a target the model lacks, or a shape the rule cannot turn into the targets'."""
    found = match_source(key)
    if found is None:
        return None
    family, rule, fields = found
    targets = rule.target_names(fields)
    if any(t not in tf_shapes for t in targets):
        return None
    target_shapes = [tuple(tf_shapes[t]) for t in targets]
    try:
        converted = rule.transform.forward(value, target_shapes)
    except ValueError:  # a reshape the rule declares could not preserve the element count
        return None
    if [c.shape for c in converted] != target_shapes:
        return None
    return family, rule, targets, converted


def torch_to_tf(state: dict[str, np.ndarray], tf_shapes: dict[str, tuple[int, ...]], preset: MaskFormerPreset,
                source: str = "checkpoint", keep_dtype: bool = False,
                sink: Callable[[str, np.ndarray], None] | None = None, consume: bool = False
                ) -> tuple[dict[str, np.ndarray], list[TensorRecord]]:
    """Live-named PyTorch tensors -> {TF variable path: value}, or ConversionError with a full report.

    With `sink`, each converted value (maybe a non-contiguous view, such as a transposed kernel) goes to
    sink(TF variable path, value) as soon as it exists instead of into the returned dict; with `consume`,
    each source tensor leaves `state` once converted. Together they stream: memory holds the checkpoint
    plus one converted tensor, not two copies of the model.
    """
    values: dict[str, np.ndarray] = {}
    assigned: set[str] = set()
    records: list[TensorRecord] = []
    source_shapes = {k: tuple(v.shape) for k, v in state.items()}  # for the report, after consumption
    rejected = False
    for key in list(state):
        tensor = state.pop(key) if consume else state[key]
        data = tensor if keep_dtype else np.asarray(tensor, dtype=np.float32)
        mapped = _map_tensor(key, data, tf_shapes)
        if mapped is None:
            rejected = True  # named, with its expected shape or closest name, by the report below
            continue
        family, rule, targets, converted = mapped
        derived = match_derived(key)
        if derived is not None:
            expected = derived.value(preset)
            if expected.shape != data.shape:  # another class count or window: reported with the other keys
                rejected = True
                continue
            actual = np.asarray(data, np.float64)
            same = (np.array_equal(expected, actual) if derived.rtol == 0
                    else np.allclose(expected, actual, rtol=derived.rtol, atol=0))
            if not same:
                raise ConversionError(f"{source}: '{key}' is not {derived.setting(preset)} of preset '{preset.name}' "
                                      "(the file's architecture differs, or the tensor is corrupted)",
                                      f"{key}: values differ from the preset's")
        for target, value in zip(targets, converted, strict=True):
            if target in assigned:
                raise ConversionError(f"{source}: TF variable '{target}' assigned twice (second by '{key}')",
                                      "mapping registry error: two rules map onto one variable")
            assigned.add(target)
            if sink is None:
                values[target] = np.ascontiguousarray(value)
            else:
                sink(target, value)  # possibly a transposed view: the sink lays it out
        records.append(TensorRecord(key, family, targets, rule.transform.name, list(tensor.shape),
                                    [list(tf_shapes[t]) for t in targets], str(tensor.dtype),
                                    f"{zlib.crc32(np.ascontiguousarray(data)):08x}"))
    if rejected or len(assigned) != len(tf_shapes):
        # Missing, unexpected and mis-shaped keys, all against the source names the TF model implies.
        mismatch = compare_keys(source_shapes, expected_source_shapes(tf_shapes, preset))
        raise ConversionError(f"{source}: does not fit preset '{preset.name}': {mismatch.summary()}",
                              mismatch.report(), mismatch)
    return values, records


def map_to_tf_layout(tensors: dict[str, np.ndarray], tf_shapes: dict[str, tuple[int, ...]]
                     ) -> dict[str, np.ndarray]:
    """Some live-named tensors (e.g. gradients of the trainable parameters) through their rules into TF
    layout, without the whole-checkpoint accounting of torch_to_tf."""
    mapped = {}
    for key, value in tensors.items():
        result = _map_tensor(key, value, tf_shapes)
        if result is None:
            raise ConversionError(f"'{key}' matches no rule or no variable of the model", key)
        mapped.update(zip(result[2], result[3], strict=True))
    return mapped


def tf_to_torch(values: dict[str, np.ndarray], preset: MaskFormerPreset) -> dict[str, np.ndarray]:
    """{TF variable path: value} -> live-named PyTorch state dict, through the same rules reversed."""
    grouped: dict[str, tuple[Rule, dict[int, np.ndarray]]] = {}
    unknown = []
    for name, value in values.items():
        found = match_target(name)
        if found is None:
            unknown.append(name)
            continue
        _, rule, fields, index = found
        source = rule.source_name(fields)
        entry = grouped.setdefault(source, (rule, {}))
        if index in entry[1]:
            raise ConversionError(f"TF variable for '{source}' seen twice ('{name}')", name)
        entry[1][index] = value
    if unknown:
        raise ConversionError(f"{len(unknown)} TF variables match no rule; first '{unknown[0]}'",
                              "\n".join(f"  unknown TF variable {n}" for n in unknown))
    state = {}
    for source, (rule, parts) in grouped.items():
        if len(parts) != len(rule.targets):
            raise ConversionError(f"'{source}' needs {len(rule.targets)} TF variables, found {len(parts)}",
                                  f"{source}: targets {rule.targets}")
        state[source] = rule.transform.backward([parts[i] for i in range(len(rule.targets))], ())
    for derived in DERIVED:
        state.update({key: derived.value(preset) for key in derived.keys(preset)})
    return state
