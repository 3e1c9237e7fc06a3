"""The thin train driver, as the Model Garden's own (official/vision/train.py, projects/detr/train.py):

experiment config (+ YAML files, + --params_override) -> params.yaml in the model dir -> mixed precision
and distribution strategy from params.runtime -> task_factory.get_task -> train_lib (Orbit: steps,
TensorBoard summaries, checkpoints; a rerun with the same model dir resumes from its newest checkpoint).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import tensorflow as tf
from absl import logging
from official.common import distribute_utils
from official.core import config_definitions as cfg
from official.core import exp_factory, task_factory, train_lib, train_utils
from official.modeling import hyperparams, performance

import mfport.tf_maskformer.configs.maskformer
import mfport.tf_maskformer.tasks.panoptic_maskformer  # noqa: F401  (registers the task)
from mfport.core.errors import MfportError

MODES = ("train", "eval", "train_and_eval")


def build_params(experiment: str, config_files: list[str] | None = None, params_override: str | None = None,
                 overrides: dict | None = None) -> cfg.ExperimentConfig:
    """The registered experiment, overridden by YAML files in order, then by a params_override string, then
    by `overrides` (a nested dict: what the CLI's convenience flags set)."""
    try:
        params = exp_factory.get_exp_config(experiment)
    except KeyError:
        known = sorted(n for n in exp_factory._REGISTERED_CONFIGS if n.startswith("maskformer"))
        raise MfportError(f"unknown {experiment!r}; registered: {', '.join(known)}", parameter="experiment") from None
    for path in config_files or []:
        if not Path(path).is_file():
            raise MfportError(f"{path} does not exist", parameter="config_file")
        params = _override(params, path, "config_file")
    if params_override:
        params = _override(params, params_override, "params_override")
    if overrides:
        params = _override(params, overrides, "params_override")
    try:
        params.validate()
    except (KeyError, ValueError) as err:
        raise MfportError(str(err).splitlines()[0], parameter="params_override") from None
    params.lock()
    return params


def _override(params: cfg.ExperimentConfig, source: object, parameter: str) -> cfg.ExperimentConfig:
    try:
        return hyperparams.override_params_dict(params, source, is_strict=True)
    except (KeyError, ValueError, AttributeError, TypeError) as err:
        message = str(err.args[0] if err.args else err).splitlines()[0]
        raise MfportError(message, parameter=parameter) from None


def build_strategy(runtime: cfg.RuntimeConfig) -> tf.distribute.Strategy:
    """The strategy params.runtime names, as the Model Garden's drivers build it (TPUStrategy for "tpu",
    MirroredStrategy over runtime.num_gpus GPUs, MultiWorkerMirroredStrategy from TF_CONFIG, ...), plus
    mfport's check on machines without accelerators: "mirrored" with no GPU and runtime.num_cpu_replicas > 1
    mirrors over that many logical CPUs (must run before TF initialises its devices)."""
    cpu_replicas = getattr(runtime, "num_cpu_replicas", 1)
    if runtime.distribution_strategy == "mirrored" and not runtime.num_gpus and cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])
    return distribute_utils.get_distribution_strategy(
        distribution_strategy=runtime.distribution_strategy, all_reduce_alg=runtime.all_reduce_alg,
        num_gpus=runtime.num_gpus, tpu_address=runtime.tpu)


def check_data(params: cfg.ExperimentConfig, mode: str) -> None:
    """One line naming the config field when a data glob matches no file (before TF builds anything)."""
    for name, data in (("task.train_data.input_path", params.task.train_data),
                       ("task.validation_data.input_path", params.task.validation_data)):
        needed = mode.startswith("train") if "train_data" in name else mode != "train"
        if needed and not any(glob.glob(p) for p in data.input_path.split(",")):
            raise MfportError(f"no file matches {data.input_path!r}", parameter=name)


def run(params: cfg.ExperimentConfig, model_dir: str | os.PathLike[str], mode: str = "train") -> dict[str, object]:
    """Train and/or evaluate as params say; returns the last evaluation's logs (empty when none ran)."""
    if mode not in MODES:
        raise MfportError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}", parameter="mode")
    model_dir = str(model_dir)
    check_data(params, mode)
    if mode == "eval" and tf.train.latest_checkpoint(model_dir) is None:
        raise MfportError(f"{model_dir} holds no checkpoint to evaluate", parameter="model_dir")
    if "train" in mode:  # pure evaluation writes no params.yaml: it would race the training job's
        train_utils.serialize_config(params, model_dir)
    performance.set_mixed_precision_policy(params.runtime.mixed_precision_dtype or "float32")
    strategy = build_strategy(params.runtime)
    logging.info("distribution: %s, %d replica(s) in sync", type(strategy).__name__, strategy.num_replicas_in_sync)
    print(f"distribution: {type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s) in sync", flush=True)
    with strategy.scope():
        task = task_factory.get_task(params.task, logging_dir=model_dir)
        trainer = train_utils.create_trainer(params, task, train="train" in mode, evaluate="eval" in mode)
        if "train" in mode and hasattr(trainer.optimizer, "_create_all_weights"):
            # The optimizer's slots now, not inside the first traced step: a tf.function that creates variables
            # on its first call is traced twice (~20 s of the CPU smoke run's start-up).
            trainer.optimizer._create_all_weights(trainer.model.trainable_variables)
    if mode == "eval":  # the runner's own eval mode discards the logs; its controller returns them
        runner = train_lib.OrbitExperimentRunner(distribution_strategy=strategy, task=task, mode=mode,
                                                 params=params, model_dir=model_dir, trainer=trainer)
        with strategy.scope():
            eval_logs = runner.controller.evaluate(steps=params.trainer.validation_steps)
    else:
        _, eval_logs = train_lib.run_experiment(distribution_strategy=strategy, task=task, mode=mode, params=params,
                                                model_dir=model_dir, trainer=trainer)
    return {k: float(v) if hasattr(v, "__float__") else v for k, v in (eval_logs or {}).items()}
