"""The thin train driver: experiment config (+ YAML files, + --params_override) -> strategy -> train_lib.

As the Model Garden's own drivers (official/vision/train.py, projects/detr/train.py): Orbit runs the
task's steps, writes TensorBoard summaries and checkpoints under MODEL_DIR, and a rerun with the same
MODEL_DIR resumes from the newest checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf
from official.common import distribute_utils
from official.core import config_definitions as cfg
from official.core import exp_factory, train_lib
from official.modeling import hyperparams, performance

import tf_maskformer.configs.maskformer  # (registers the experiments)
import tf_maskformer.tasks.panoptic_maskformer  # (registers the task)


def build_params(experiment: str, config_files: list[str] | None = None, params_override: str | None = None,
                 overrides: dict | None = None) -> cfg.ExperimentConfig:
    """The registered experiment, overridden by YAML files in order, then by a params_override string, then
    by `overrides` (a nested dict, what the CLI's convenience flags set)."""
    try:
        params = exp_factory.get_exp_config(experiment)
    except KeyError:
        raise ValueError(f"--experiment: unknown {experiment!r}; registered: "
                         f"{', '.join(sorted(n for n in exp_factory._REGISTERED_CONFIGS if 'maskformer' in n))}"
                         ) from None
    for path in config_files or []:
        if not Path(path).is_file():
            raise ValueError(f"--config_file: {path} does not exist")
        params = hyperparams.override_params_dict(params, path, is_strict=True)
    if params_override:
        params = hyperparams.override_params_dict(params, params_override, is_strict=True)
    if overrides:
        params = hyperparams.override_params_dict(params, overrides, is_strict=True)
    params.validate()
    params.lock()
    return params


def build_strategy(tpu: str | None = None, num_gpus: int | None = None, cpu_replicas: int = 1
                   ) -> tf.distribute.Strategy:
    """TPUStrategy for --tpu, MirroredStrategy for several GPUs (or several logical CPUs), else the default."""
    if tpu:
        return distribute_utils.get_distribution_strategy("tpu", tpu_address=tpu)
    gpus = len(tf.config.list_physical_devices("GPU")) if num_gpus is None else num_gpus
    if gpus > 1:
        return distribute_utils.get_distribution_strategy("mirrored", num_gpus=gpus)
    if cpu_replicas > 1:  # for multi-replica checks without accelerators (must run before TF starts its devices)
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])
    if gpus == 1:
        return distribute_utils.get_distribution_strategy("one_device", num_gpus=1)
    return tf.distribute.get_strategy()


def run(params: cfg.ExperimentConfig, model_dir: str | os.PathLike[str], mode: str = "train",
        strategy: tf.distribute.Strategy | None = None) -> dict[str, object]:
    """Train and/or evaluate; returns the last evaluation's logs (empty when none ran)."""
    performance.set_mixed_precision_policy(params.runtime.mixed_precision_dtype or "float32")
    strategy = strategy or build_strategy()
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    with strategy.scope():
        task = tf_maskformer.tasks.panoptic_maskformer.PanopticMaskFormerTask(params.task, logging_dir=str(model_dir))
    if mode == "eval" and tf.train.latest_checkpoint(str(model_dir)) is None:
        raise ValueError(f"--model-dir: {model_dir} holds no checkpoint to evaluate")
    runner = train_lib.OrbitExperimentRunner(distribution_strategy=strategy, task=task, mode=mode, params=params,
                                             model_dir=str(model_dir))
    if mode == "eval":  # the runner's own eval mode discards the logs; the controller returns them
        with strategy.scope():
            eval_logs = runner.controller.evaluate(steps=params.trainer.validation_steps)
    else:
        _, eval_logs = runner.run()
    return {k: float(v) if hasattr(v, "__float__") else v for k, v in (eval_logs or {}).items()}


def read_scalars(log_dir: str | os.PathLike[str], tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar summary in the event files under log_dir, in step order."""
    points = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    points[int(event.step)] = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                        else float(value.simple_value)
    return sorted(points.items())


def plot_loss_curve(model_dir: str | os.PathLike[str], png: str | os.PathLike[str], title: str) -> Path:
    """The training loss terms per step (from the TensorBoard summaries) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from converter.checkpoint_io import atomic_write

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    total = read_scalars(Path(model_dir) / "train", "total_loss")
    if not total:
        raise ValueError(f"{model_dir}/train: no total_loss summaries to plot")
    axes[0].plot(*zip(*total, strict=True), marker=".", label="total (weighted, final + aux)")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].set_title(title)
    axes[0].legend()
    for term in ("loss_ce", "loss_mask", "loss_dice"):
        points = read_scalars(Path(model_dir) / "train", term)
        if points:
            axes[1].plot(*zip(*points, strict=True), marker=".", label=term)
    axes[1].set_xlabel("step")
    axes[1].set_yscale("log")
    axes[1].set_title("final-layer terms (unweighted)")
    axes[1].legend()
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return png
