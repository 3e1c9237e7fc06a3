"""Run as a script (TF must configure its devices first): one train step of the same global batch under the
default strategy and under MirroredStrategy over N logical CPUs (SGD, lr 1: the step is minus the
gradient); prints JSON with both losses, the largest gradient and the largest difference of the two
strategies' steps. Arguments: a records glob, an experiment YAML (the model), optionally --bfloat16 for one
mixed_bfloat16 step as well."""

from __future__ import annotations

import json
import sys

import numpy as np
import tensorflow as tf
import tf_keras

REPLICAS = 2
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)

from official.modeling import performance  # noqa: E402

from mfport.tf_maskformer.tasks.panoptic_maskformer import PanopticMaskFormerTask  # noqa: E402
from mfport.tf_maskformer.train import build_params  # noqa: E402


def one_step(strategy: tf.distribute.Strategy, params: object, batch: tuple, init: list[np.ndarray]
             ) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
    """(loss, trainable weights before the step, after it)."""
    with strategy.scope():
        task = PanopticMaskFormerTask(params.task)
        model = task.build_model()
        for variable, value in zip(model.variables, init, strict=True):
            variable.assign(value)
        before = [v.numpy() for v in model.trainable_variables]
        optimizer = task.create_optimizer(params.trainer.optimizer_config, params.runtime)
        metrics = task.build_metrics(training=True)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch).unbatch().batch(params.task.train_data.global_batch_size))

    @tf.function
    def step(inputs: tuple) -> tf.Tensor:
        logs = strategy.run(lambda x: task.train_step(x, model, optimizer, metrics), args=(inputs,))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, logs["loss"], axis=None)

    loss = float(step(next(iter(dataset))))
    return loss, before, [v.numpy() for v in model.trainable_variables]


def main() -> None:
    records, config = sys.argv[1], sys.argv[2]
    bfloat16 = "--bfloat16" in sys.argv
    # Fixed initial weights and input order: with a fresh random model per run, a near-tie in the matching
    # costs flipped an assignment between the two strategies now and then (float summation order), and
    # the two steps then differ by far more than rounding (seen once: 109 against a step of 1.4e5).
    tf_keras.utils.set_random_seed(0)
    params = build_params("maskformer_synthetic_smoke", [config], params_override=(
        f"task.train_data.input_path={records},task.model.dropout=0.0,task.model.backbone.swin.drop_path_rate=0.0,"
        "task.jit_compile=false,"
        "task.train_data.aug_rand_hflip=false,task.train_data.aug_scale_min=1.0,task.train_data.aug_scale_max=1.0,"
        # Plain SGD at lr 1 without clipping: the weight change IS the all-reduced gradient, so the two
        # strategies' gradients are compared directly (Adam's g / (|g| + eps) would amplify rounding).
        "trainer.optimizer_config.optimizer.type=sgd,trainer.optimizer_config.optimizer.sgd.momentum=0.0,"
        "trainer.optimizer_config.learning_rate.type=constant,"
        "trainer.optimizer_config.learning_rate.constant.learning_rate=1.0"))
    single = tf.distribute.get_strategy()
    with single.scope():
        task = PanopticMaskFormerTask(params.task)
        batch = next(iter(task.build_inputs(params.task.train_data)))
        init = [v.numpy() for v in task.build_model().variables]
    one_loss, before, one_weights = one_step(single, params, batch, init)
    mirrored = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    two_loss, _, two_weights = one_step(mirrored, params, batch, init)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(before, one_weights, strict=True))
    result = {"one_device_loss": one_loss, "mirrored_loss": two_loss, "replicas": mirrored.num_replicas_in_sync,
              "max_weight_difference": max(float(np.abs(a - b).max())
                                           for a, b in zip(one_weights, two_weights, strict=True)),
              "max_weight_update": moved}
    if bfloat16:
        performance.set_mixed_precision_policy("bfloat16")
        result["bfloat16_loss"], _, weights = one_step(single, params, batch, init)
        result["bfloat16_finite"] = bool(all(np.isfinite(w).all() for w in weights))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
