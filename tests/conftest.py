"""Shared fixtures: seeded original-format checkpoints, written once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def seeded_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """seeded_checkpoint(preset_name, seed=0) -> path of a released-naming model-zoo .pkl."""
    from torch_reference.presets import get_preset
    from torch_reference.seeded_init import write_seeded_checkpoint

    cache: dict[tuple[str, int], Path] = {}
    root = tmp_path_factory.mktemp("seeded")

    def make(preset_name: str, seed: int = 0) -> Path:
        if (preset_name, seed) not in cache:
            path = root / f"{preset_name}_seed{seed}.pkl"
            write_seeded_checkpoint(get_preset(preset_name), seed, path)
            cache[(preset_name, seed)] = path
        return cache[(preset_name, seed)]

    return make


def mfport_command() -> list[str]:
    """The installed console script, or the module when running from a plain checkout."""
    script = Path(sys.executable).parent / "mfport"
    return [str(script)] if script.exists() else [sys.executable, str(REPO / "cli.py")]
