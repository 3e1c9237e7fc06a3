"""`mfport parity`: load both models from one checkpoint, run the forward parity (and matcher, loss and gradient
parity), write report.json/md/html and print the console table."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from mfport.core.errors import MfportError
from mfport.parity.results import ParityResult


@dataclasses.dataclass
class ParityOptions:
    checkpoint: str
    preset: str | None = None
    dataset: str | None = None
    class_names: str | None = None
    image_size: tuple[int, int] = (480, 640)
    batch: int = 2
    seed: int = 0
    images: list[str] | None = None
    mode: str = "both"
    profile: str = "fp32"
    report_dir: str | None = None
    gradients: bool = True
    float64: bool = True
    float64_gradients: bool | None = None  # None: as float64


def _images(options: ParityOptions) -> tuple[np.ndarray, object]:
    from mfport.core.synthetic_images import synthetic_images

    if not options.images:
        return synthetic_images(options.seed, options.batch, *options.image_size), f"synthetic seed {options.seed}"
    from mfport.tf_maskformer.serving.predict import read_image

    loaded = [read_image(p) for p in options.images]
    if len({im.shape for im in loaded}) != 1:
        raise MfportError("all images must have the same size (one batch)", parameter="images")
    return np.stack(loaded), [str(p) for p in options.images]


def run_parity_command(options: ParityOptions, console: object) -> tuple[ParityResult, dict[str, Path]]:
    from mfport.converter.convert import tf_model_from_checkpoint
    from mfport.core.architecture import labels_for
    from mfport.parity.harness import run_parity
    from mfport.parity.metrics import PROFILES
    from mfport.parity.report import render_console, write_reports
    from mfport.torch_reference.loading import load_maskformer

    images, source = _images(options)
    profile = PROFILES[options.profile]
    labels = labels_for(options.dataset, options.class_names)
    torch_model, _ = load_maskformer(options.checkpoint, options.preset, labels=labels)
    tf_model, _ = tf_model_from_checkpoint(options.checkpoint, torch_model.preset, policy=profile.policy)
    modes = ("cumulative", "isolated") if options.mode == "both" else (options.mode,)
    with console.status("running both models tap by tap" + (" (and the float64 reference)" if options.float64 else "")):
        result = run_parity(torch_model, tf_model, images, profile, modes, float64=options.float64)
    if options.gradients and not profile.training:
        console.print(f"profile {profile.name}: matcher, loss and gradient parity run in the fp32 profile only")
    elif options.gradients:
        from mfport.parity.training import run_training_parity

        float64_gradients = options.float64 if options.float64_gradients is None else options.float64_gradients
        start = time.perf_counter()
        with console.status("matcher, loss and gradient parity" + (" (with a float64 backward)"
                                                                   if float64_gradients else "")):
            result.training = run_training_parity(torch_model, tf_model, images, seed=options.seed,
                                                  float64_reference=float64_gradients)
        result.timings_s["training_parity_s"] = time.perf_counter() - start
        result.passed = result.passed and result.training.passed
    meta = {"checkpoint": str(options.checkpoint), "images": source, "seed": options.seed,
            "bounds": {"cumulative": profile.cumulative_rel_max, "isolated": profile.isolated_rel_max}}
    report_dir = Path(options.report_dir or f"reports/parity_{result.preset}")
    paths = write_reports(result, report_dir, meta)
    render_console(result, console)
    console.print(f"reports: {', '.join(str(p) for p in paths.values())}")
    return result, paths
