"""Shared fixtures: seeded original-format checkpoints, converted model directories and models, written or
built once per test session; the CLI run in-process; the tiny architecture the training tests use.

Markers (pyproject.toml): `slow` (training runs, processes of their own) and `heavy` (released-size models and
checkpoints), both left out of `scripts/test.sh --fast`; `numerics` (outcomes that depend on float32 rounding;
scripts/test.sh runs those not `slow` a second time under other CPU kernels).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # as the mfport command: tf.keras is tf_keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest
import torch

# XLA programs compiled once per test command, not once per process: the training tests start the same train
# step in several processes (a resumed run and the `--require` run after it; the killed run before them goes
# without the cache, see below), and the second kernel pass re-runs the
# XLA tests. TF keys each executable by its HLO's fingerprint, so a cache hit is the same program.
# scripts/test.sh shares one directory between its two pytest runs; a bare pytest gets its own, removed after.
# TF writes a cache file in place and fails on one it cannot parse, so no two processes may compile into one
# directory at once: each pytest-xdist worker gets its own, and a process that is killed mid-run, or runs beside
# another compiling the same program (the workers of one cluster), gets none (`without_xla_cache`).
XLA_CACHE_FLAG = "--tf_xla_persistent_cache_directory"
_OWN_XLA_CACHE = None
_flags = os.environ.get("TF_XLA_FLAGS", "")
if XLA_CACHE_FLAG not in _flags:
    _OWN_XLA_CACHE = tempfile.mkdtemp(prefix="mfport-xla-cache-")
    _flags = f"{_flags} {XLA_CACHE_FLAG}={_OWN_XLA_CACHE}".strip()
if os.environ.get("PYTEST_XDIST_WORKER"):
    _flags = " ".join(f"{f}/{os.environ['PYTEST_XDIST_WORKER']}" if f.startswith(XLA_CACHE_FLAG) else f
                      for f in _flags.split())
os.environ["TF_XLA_FLAGS"] = _flags


def without_xla_cache(environment: dict[str, str]) -> dict[str, str]:
    """The environment minus the XLA cache (see above)."""
    flags = [f for f in environment.get("TF_XLA_FLAGS", "").split() if not f.startswith(XLA_CACHE_FLAG)]
    return {**environment, "TF_XLA_FLAGS": " ".join(flags)}


def pytest_unconfigure(config: object) -> None:
    if _OWN_XLA_CACHE:
        shutil.rmtree(_OWN_XLA_CACHE, ignore_errors=True)


torch.set_num_threads(min(2, os.cpu_count() or 1))
REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
REFERENCE_KEYS = DATA / "reference_keys"


def resolve_preset(preset: object) -> object:
    """A preset, or the released preset of that name."""
    from mfport.core.presets import get_preset

    return get_preset(preset) if isinstance(preset, str) else preset


def seeded_label(preset: object, seed: int, attention: str) -> str:
    """How errors and reports name a seeded state that has no file."""
    return f"seeded {preset.name} (seed {seed}, {attention} attention)"


def tiny_preset(num_classes: int = 133, dataset: str | None = "coco_panoptic_133") -> object:
    """A custom architecture of released-model shape but toy size (Swin C=16, one block per stage, 32-wide heads,
    two decoder layers, 10 queries): what the trainer, driver and multi-worker tests fine-tune, where the
    mechanics matter and an R50's XLA compilation (~70 s here) would not add to them."""
    from mfport.core.labels import LabelSet, get_label_set
    from mfport.core.presets import MaskFormerPreset, SwinSpec

    labels = get_label_set(dataset) if dataset else LabelSet.generic(num_classes)
    return MaskFormerPreset(
        name="custom", description="test: tiny Swin", original_config="", labels=labels, num_classes=len(labels),
        backbone=SwinSpec(16, (1, 1, 1, 1), (1, 2, 4, 8), window_size=4, drop_path_rate=0.1),
        pixel_decoder="base", conv_dim=32, mask_dim=32, hidden_dim=32, nheads=8, dim_feedforward=64, dec_layers=2,
        num_queries=10, size_divisibility=32, panoptic_on=True, object_mask_threshold=0.8, overlap_threshold=0.8)


@dataclasses.dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """The mfport command in this process (its output captured): no interpreter and TF start-up per call."""
    from mfport.cli import main

    out, err = io.StringIO(), io.StringIO()
    # Output to a pipe, as in CI: tables 200 columns wide unless COLUMNS says otherwise, and pytest-xdist's workers
    # run with COLUMNS=80 and LINES=24 set: the width is pinned here.
    width = mock.patch.dict(os.environ, {"COLUMNS": "200"})
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), width:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse usage errors
            code = exit_.code if isinstance(exit_.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def mfport_command() -> list[str]:
    """The installed console script (for the tests that need a process of their own)."""
    script = Path(sys.executable).parent / "mfport"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mfport"]


def one_line_error(result: CliResult, *needles: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def seeded_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """seeded_checkpoint(preset or name, seed=0, attention="default") -> path of a released-naming .pkl."""
    from mfport.torch_reference.seeded_init import write_seeded_checkpoint

    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("seeded")

    def make(preset: object, seed: int = 0, attention: str = "default") -> Path:
        preset = resolve_preset(preset)
        key = (preset, seed, attention)
        if key not in cache:
            path = root / f"{preset.name}_{len(cache)}_seed{seed}_{attention}.pkl"
            write_seeded_checkpoint(preset, seed, path, attention=attention)
            cache[key] = path
        return cache[key]

    return make


@pytest.fixture(scope="session")
def converted_dir(seeded_checkpoint, tmp_path_factory: pytest.TempPathFactory):
    """converted_dir(preset or name, seed=0, attention="default") -> a directory written by convert_to_tf."""
    from mfport.converter.convert import convert_to_tf

    cache: dict[Path, Path] = {}
    root = tmp_path_factory.mktemp("converted")

    def make(preset: object, seed: int = 0, attention: str = "default") -> Path:
        source = seeded_checkpoint(preset, seed, attention)
        if source not in cache:
            cache[source] = root / source.stem
            convert_to_tf(source, cache[source])
        return cache[source]

    return make


INPUT = 64  # the tiny model trains on 64x64 crops


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic COCO panoptic set (8 train, 4 val images) and its records, two shards per split."""
    from mfport.tf_maskformer.dataloaders.coco_panoptic_tfrecords import write_synthetic_records

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_records(root, {"train": (8, 0), "val": (4, 1)}, num_shards=2)
    return root


@pytest.fixture(scope="session")
def tiny(converted_dir, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(converted directory, experiment YAML) of the tiny custom architecture: its task.model spelled out as the
    Model Garden config takes it, 64x64 crops, few segments."""
    import yaml

    from mfport.tf_maskformer.configs.maskformer import model_config

    preset = tiny_preset()
    config = model_config(preset, [INPUT, INPUT]).as_dict()
    yaml_path = tmp_path_factory.mktemp("tiny") / "tiny.yaml"
    yaml_path.write_text(yaml.safe_dump({
        "task": {"model": config, "train_data": {"max_segments": 8}, "validation_data": {"max_segments": 8}},
        "trainer": {"validation_steps": 2}}))
    return converted_dir(preset), yaml_path


@functools.cache
def _released_state(preset: object) -> dict:
    from mfport.core.naming import to_released
    from mfport.torch_reference.seeded_init import seeded_state_dict

    preset = resolve_preset(preset)
    return {to_released(k): v for k, v in seeded_state_dict(preset, 0).items()}


def light_variant(preset: object, directory: Path, name: str,
                  edit: Callable[[dict], object] = lambda tensors: None) -> Path:
    """A checkpoint of a released (or user-changed) architecture for tests of names, shapes and buffer values, a
    few MB rather than a 170 MB copy: the seeded tensors (released names) edited, then each tensor of more than
    2**16 elements written as a broadcast zero (a .pth keeps a view's one-element storage). The wrong-input errors
    these files are for, and architecture detection, read no value of such a tensor."""
    tensors = dict(_released_state(preset))
    edit(tensors)
    path = directory / f"{name}.pth"
    torch.save({"model": lightened(tensors)}, path)
    return path


def lightened(tensors: dict) -> dict:
    """Tensors (numpy or torch) for a light .pth: each of more than 2**16 elements a broadcast zero of its shape
    and dtype, which torch.save stores as one element; the small ones as they are."""
    import numpy as np

    light = {}
    for key, value in tensors.items():
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        light[key] = torch.zeros((), dtype=tensor.dtype).expand(tensor.shape) if tensor.numel() > 2**16 else tensor
    return light


def seeded_reference(preset: object, seed: int = 0, attention: str = "default") -> tuple[object, dict]:
    """(PyTorch reference, its state) of the seeded weights, in memory: no checkpoint file."""
    from mfport.torch_reference.loading import load_state_strict
    from mfport.torch_reference.maskformer import MaskFormer
    from mfport.torch_reference.seeded_init import seeded_state_dict

    preset = resolve_preset(preset)
    state = seeded_state_dict(preset, seed, attention)
    torch_model = MaskFormer(preset).eval()
    load_state_strict(torch_model, state, seeded_label(preset, seed, attention))
    return torch_model, state


@pytest.fixture(scope="session")
def models():
    """models(preset or name, seed=0, attention="default") -> (PyTorch reference, converted TF model) of the
    seeded weights, built once per session in memory (the file formats are the checkpoint and converter tests').
    Tests that change a model restore it (see `changed`)."""
    from mfport.converter.convert import assign_converted
    from mfport.tf_maskformer.modeling.factory import build_maskformer

    cache: dict[tuple, tuple] = {}

    def make(preset: object, seed: int = 0, attention: str = "default") -> tuple:
        preset = resolve_preset(preset)
        key = (preset, seed, attention)
        if key not in cache:
            torch_model, state = seeded_reference(preset, seed, attention)
            tf_model = build_maskformer(preset)
            assign_converted(tf_model, state, preset, seeded_label(preset, seed, attention), consume=True)
            cache[key] = (torch_model, tf_model)
        return cache[key]

    return make


@contextlib.contextmanager
def changed(obj: object, attribute: str, value: object):
    """Set an attribute (a layer's epsilon, a padding) for the duration of a block."""
    before = getattr(obj, attribute)
    setattr(obj, attribute, value)
    try:
        yield
    finally:
        setattr(obj, attribute, before)


@contextlib.contextmanager
def assigned(variable: object, value: object):
    """Assign a TF variable for the duration of a block (an injected fault), then restore it."""
    before = variable.numpy()
    variable.assign(value)
    try:
        yield
    finally:
        variable.assign(before)
