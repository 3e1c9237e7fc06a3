"""Run as one worker of a two-worker cluster (the caller sets TF_CONFIG): one training step of the tiny model
under MultiWorkerMirroredStrategy, each worker reading its own shard of the records through
distribute_datasets_from_function and the input context, as on a pod. Plain SGD at lr 1 without clipping: the
weight change is minus the all-reduced gradient.

Worker 0 then builds both hosts' batches itself (input pipelines 0 and 1, which must equal what each worker
read), concatenates them into the global batch, and runs the same step in this process without a strategy.
Prints JSON: both losses, the largest weight change, the largest difference of the two runs' weights, the
weights' digest (equal on both workers), and whether the host batches were reproduced.
Arguments: records glob, experiment YAML (the model), converted model directory (the initial weights).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tensorflow as tf

from mfport.tf_maskformer.tasks.panoptic_maskformer import PanopticMaskFormerTask
from mfport.tf_maskformer.train import build_params, build_strategy, weights_digest

HOSTS = 2


def one_step(task: PanopticMaskFormerTask, model: object, optimizer: object, strategy: tf.distribute.Strategy,
             inputs: object) -> float:
    @tf.function
    def step(batch: object) -> tf.Tensor:
        logs = strategy.run(lambda x: task.train_step(x, model, optimizer), args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, logs["loss"], axis=None)

    return float(step(inputs))


def build(params: object) -> tuple[PanopticMaskFormerTask, object, object]:
    task = PanopticMaskFormerTask(params.task)
    model = task.build_model()
    task.initialize(model)
    return task, model, task.create_optimizer(params.trainer.optimizer_config, params.runtime)


def main() -> None:
    records, config, init = sys.argv[1:4]
    params = build_params("maskformer_synthetic_smoke", [config], params_override=(
        f"task.train_data.input_path={records},task.init_checkpoint={init},task.model.dropout=0.0,"
        "task.model.backbone.swin.drop_path_rate=0.0,"
        "task.jit_compile=false,task.train_data.global_batch_size=2,"
        "trainer.optimizer_config.optimizer.type=sgd,trainer.optimizer_config.optimizer.sgd.momentum=0.0,"
        "trainer.optimizer_config.learning_rate.type=constant,"
        "trainer.optimizer_config.learning_rate.constant.learning_rate=1.0,"
        "runtime.distribution_strategy=multi_worker_mirrored"))
    strategy = build_strategy(params.runtime)
    worker = strategy.cluster_resolver.task_id
    with strategy.scope():
        task, model, optimizer = build(params)
    before = [v.numpy() for v in model.trainable_variables]
    dataset = strategy.distribute_datasets_from_function(lambda ctx: task.build_inputs(params.task.train_data, ctx))
    inputs = next(iter(dataset))
    loss = one_step(task, model, optimizer, strategy, inputs)
    after = [v.numpy() for v in model.trainable_variables]
    result = {"worker": worker, "replicas": strategy.num_replicas_in_sync, "loss": loss,
              "digest": weights_digest(model.trainable_variables),
              "max_weight_update": max(float(np.abs(a - b).max()) for a, b in zip(before, after, strict=True))}
    if worker == 0:
        local = strategy.experimental_local_results(inputs)[0]
        hosts = []
        for host in range(HOSTS):
            context = tf.distribute.InputContext(num_input_pipelines=HOSTS, input_pipeline_id=host,
                                                 num_replicas_in_sync=HOSTS)
            hosts.append(next(iter(task.build_inputs(params.task.train_data, context))))
        result["host_batch_reproduced"] = bool(np.array_equal(hosts[0][0].numpy(), local[0].numpy()))
        result["hosts_differ"] = not np.array_equal(hosts[0][0].numpy(), hosts[1][0].numpy())
        global_batch = tf.nest.map_structure(lambda *parts: tf.concat(parts, axis=0), *hosts)
        single = tf.distribute.get_strategy()  # the default strategy: one device, this process alone
        single_task, single_model, single_optimizer = build(params)
        result["one_process_loss"] = one_step(single_task, single_model, single_optimizer, single, global_batch)
        result["max_weight_difference"] = max(float(np.abs(a - b.numpy()).max())
                                              for a, b in zip(after, single_model.trainable_variables, strict=True))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
