"""The thin train driver, as the Model Garden's own (official/vision/train.py, projects/detr/train.py):

experiment config (+ YAML files, + --params_override) -> params.yaml in the model dir -> mixed precision
and distribution strategy from params.runtime -> task_factory.get_task -> train_lib (Orbit: steps,
TensorBoard summaries, checkpoints; a rerun with the same model dir resumes from its newest checkpoint).

Several workers (MultiWorkerMirroredStrategy from TF_CONFIG, or a TPU pod's hosts): every worker runs this
same driver on the same model dir. The chief alone writes params.yaml, summaries and the checkpoints
there; the others take part in each save (reading a synchronised variable is a collective) into a private
temporary directory, and on start-up restore from the chief's newest checkpoint, so a job restarted after a
worker died resumes on every worker from the same step (the Model Garden's runner would restore them from
their empty temporary directories, i.e. from step 0, while the chief resumed).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import orbit
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
    except (KeyError, LookupError):
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


def schedule_warning(params: cfg.ExperimentConfig) -> str | None:
    """A poly schedule that ends before the run does: every step after it trains at the end lr (0 by default)."""
    learning_rate = params.trainer.optimizer_config.learning_rate
    if learning_rate.type != "polynomial" or learning_rate.polynomial.decay_steps >= params.trainer.train_steps:
        return None
    return (f"warning: the learning rate reaches {learning_rate.polynomial.end_learning_rate:g} at step "
            f"{learning_rate.polynomial.decay_steps} of {params.trainer.train_steps} (set "
            "trainer.optimizer_config.learning_rate.polynomial.decay_steps, or use --steps, which sets both)")


def check_data(params: cfg.ExperimentConfig, mode: str) -> None:
    """One line naming the config field when a data glob matches no file (before TF builds anything)."""
    for name, data in (("task.train_data.input_path", params.task.train_data),
                       ("task.validation_data.input_path", params.task.validation_data)):
        needed = mode.startswith("train") if "train_data" in name else mode != "train"
        if needed and not any(glob.glob(p) for p in data.input_path.split(",")):
            raise MfportError(f"no file matches {data.input_path!r}", parameter=name)


class _FollowerCheckpointManager(tf.train.CheckpointManager):
    """A non-chief worker's manager: saves into its own temporary directory, restores from the chief's."""

    def __init__(self, checkpoint: tf.train.Checkpoint, chief_directory: str, **kwargs: object) -> None:
        super().__init__(checkpoint, directory=tempfile.mkdtemp(prefix="mfport-worker-"), **kwargs)
        self.chief_directory = chief_directory

    def restore_or_initialize(self) -> str | None:
        latest = tf.train.latest_checkpoint(self.chief_directory)
        if latest is None:
            return super().restore_or_initialize()
        self._checkpoint.restore(latest)
        if self._checkpoint_interval is not None:  # the chief's interval bookkeeping after its restore, exactly
            self._last_checkpoint_step = int(self._step_counter.numpy())
        return latest


class _Runner(train_lib.OrbitExperimentRunner):
    """The Model Garden's runner with the follower checkpoint manager on non-chief workers, keeping the latest
    evaluation's logs (through an Orbit eval action: train_and_evaluate returns none)."""

    def __init__(self, **kwargs: object) -> None:
        self.latest_evaluation: dict = {}  # before super().__init__, which builds the controller
        super().__init__(**kwargs)

    def _record_evaluation(self, logs: dict | None) -> None:
        self.latest_evaluation.clear()
        self.latest_evaluation.update(tf.nest.map_structure(orbit.utils.get_value, logs or {}))

    def _build_controller(self, trainer: object, evaluator: object, **kwargs: object) -> object:
        kwargs["eval_actions"] = [*(kwargs.get("eval_actions") or []), self._record_evaluation]
        return super()._build_controller(trainer, evaluator, **kwargs)

    def _maybe_build_checkpoint_manager(self) -> tf.train.CheckpointManager | None:
        if not self.trainer.checkpoint or self.strategy.extended.should_checkpoint:
            return super()._maybe_build_checkpoint_manager()
        return _FollowerCheckpointManager(self.trainer.checkpoint, self.model_dir, max_to_keep=1,
                                          step_counter=self.trainer.global_step,
                                          checkpoint_interval=self.params.trainer.checkpoint_interval,
                                          init_fn=self.trainer.initialize)


def worker_name(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "single worker"
    return f"{resolver.task_type} {resolver.task_id}"


def weights_digest(variables: list[tf.Variable]) -> str:
    """sha256 over the variables' bytes in order: equal on every worker of a synchronous job."""
    return hashlib.sha256(b"".join(np.asarray(v.numpy()).tobytes() for v in variables)).hexdigest()


def run(params: cfg.ExperimentConfig, model_dir: str | os.PathLike[str], mode: str = "train") -> dict[str, object]:
    """Train and/or evaluate as params say; returns the last evaluation's logs (empty when none ran)."""
    if mode not in MODES:
        raise MfportError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}", parameter="mode")
    model_dir = str(model_dir)
    check_data(params, mode)
    warning = schedule_warning(params) if "train" in mode else None
    if warning:
        logging.warning(warning)
        print(warning, flush=True)
    if mode == "eval" and tf.train.latest_checkpoint(model_dir) is None:
        raise MfportError(f"{model_dir} holds no checkpoint to evaluate", parameter="model_dir")
    performance.set_mixed_precision_policy(params.runtime.mixed_precision_dtype or "float32")
    strategy = build_strategy(params.runtime)
    chief = strategy.extended.should_checkpoint
    if "train" in mode and chief:  # pure evaluation writes no params.yaml: it would race the training job's
        train_utils.serialize_config(params, model_dir)
    message = (f"distribution: {type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s) in sync "
               f"({worker_name(strategy)}{', chief' if chief and worker_name(strategy) != 'single worker' else ''})")
    logging.info(message)
    print(message, flush=True)
    with strategy.scope():
        task = task_factory.get_task(params.task, logging_dir=model_dir)
        trainer = train_utils.create_trainer(params, task, train="train" in mode, evaluate="eval" in mode)
        if "train" in mode and hasattr(trainer.optimizer, "_create_all_weights"):
            # The optimizer's slots now, not inside the first traced step: a tf.function that creates variables
            # on its first call is traced twice (~20 s of the CPU smoke run's start-up).
            trainer.optimizer._create_all_weights(trainer.model.trainable_variables)
    runner = _Runner(distribution_strategy=strategy, task=task, mode=mode, params=params, model_dir=model_dir,
                     trainer=trainer, save_summary=chief)
    try:
        with strategy.scope():
            if mode == "eval":  # the runner's own eval mode discards the logs; its controller returns them
                eval_logs = runner.controller.evaluate(steps=params.trainer.validation_steps)
            else:
                _, eval_logs = runner.run()  # its eval_logs: only those of a post-training evaluation
                if "eval" in mode and not (eval_logs or runner.latest_evaluation):
                    # Orbit evaluates inside its training loop only: a run already at train_steps would end with none.
                    runner.controller.evaluate(steps=params.trainer.validation_steps)
                eval_logs = eval_logs or runner.latest_evaluation
        step = int(trainer.global_step.numpy())
        print(f"{worker_name(strategy)}: step {step}, weights sha256 {weights_digest(trainer.model.variables)}",
              flush=True)
    finally:
        manager = runner.checkpoint_manager if "train" in mode else None
        if isinstance(manager, _FollowerCheckpointManager):
            shutil.rmtree(manager.directory, ignore_errors=True)
    return {k: float(v) if hasattr(v, "__float__") else v for k, v in (eval_logs or {}).items()}
