"""What a TPU needs of the train step and the input, checked without a TPU: the traced step (forward, in-graph
matching, losses, backward, optimiser update) has a static shape on every tensor under the per-replica input
spec and no op that goes back to the host; under mixed_bfloat16 the heavy ops compute in bfloat16 while every
variable stays float32; each host's dataset is a function of the data seed and the host id alone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import tensorflow as tf
from official.modeling import performance

from mfport.tf_maskformer.tasks.panoptic_maskformer import PanopticMaskFormerTask
from mfport.tf_maskformer.train import build_params

# Ops that leave the compiled program for the host (Python callbacks, host-side queues and prints).
HOST_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc", "PrintV2", "Print", "OutfeedEnqueue",
            "OutfeedEnqueueTuple"}
MATMUL_OPS = {"Conv2D", "MatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum"}


def _params(dataset: Path, config: Path, overrides: str = "") -> object:
    return build_params("maskformer_synthetic_smoke", [str(config)], params_override=(
        f"task.train_data.input_path={dataset / 'records' / 'train-*'}" + overrides))


def _graphs(graph: tf.Graph, seen: set[str] | None = None) -> list[tf.Graph]:
    """The graph and every function graph it calls (the XLA-compiled gradient function, while-loop bodies)."""
    seen = set() if seen is None else seen
    found = [graph]
    for name, function in getattr(graph, "_functions", {}).items():
        if name in seen or not hasattr(function, "graph"):
            continue
        seen.add(name)
        found += _graphs(function.graph, seen)
    return found


@pytest.fixture(scope="module")
def traced_step(dataset: Path, tiny) -> tuple[list[tf.Graph], object, dict]:
    """The bfloat16 train step of the tiny model traced under its per-replica TPU input spec."""
    _, config = tiny
    params = _params(dataset, config)
    performance.set_mixed_precision_policy("bfloat16")
    try:
        task = PanopticMaskFormerTask(params.task)
        model = task.build_model()
        optimizer = task.create_optimizer(params.trainer.optimizer_config, params.runtime)
        optimizer._create_all_weights(model.trainable_variables)
        spec = task.build_inputs(params.task.train_data).element_spec
        step = tf.function(lambda inputs: task.train_step(inputs, model, optimizer))
        graph = step.get_concrete_function(spec).graph
        graphs = _graphs(graph)
    finally:
        performance.set_mixed_precision_policy("float32")
    return graphs, model, spec


@pytest.mark.slow
def test_train_step_has_static_shapes_and_no_host_ops(traced_step) -> None:
    graphs, _, spec = traced_step
    assert all(s.shape.is_fully_defined() for s in tf.nest.flatten(spec)), spec  # drop_remainder: static batch
    ops = [op for graph in graphs for op in graph.get_operations()]
    assert len(graphs) >= 2 and len(ops) > 1000  # the compiled gradient function was reached, not just a call
    # Every value the step computes (variable handles and unused "redundant" loop-condition placeholders, which
    # TF adds for inputs a while loop's condition ignores, carry no data).
    dynamic = [(op.type, op.name, t.shape) for op in ops for t in op.outputs
               if t.dtype not in (tf.resource, tf.variant) and not t.shape.is_fully_defined()
               and not (op.type == "Placeholder" and not t.consumers())]
    assert not dynamic, dynamic[:10]
    host = [(op.type, op.name) for op in ops if op.type in HOST_OPS]
    assert not host, host


@pytest.mark.slow
def test_bfloat16_activations_with_float32_variables(traced_step) -> None:
    graphs, model, _ = traced_step
    assert {v.dtype for v in model.variables} == {tf.float32}
    heavy = [op for graph in graphs for op in graph.get_operations() if op.type in MATMUL_OPS]
    dtypes = {op.outputs[0].dtype for op in heavy}
    # Every convolution and matmul of forward and backward in bfloat16, except the losses' own float32 sums
    # (the criterion casts logits to float32 first, as the original's autocast-free loss).
    in_bf16 = sum(op.outputs[0].dtype == tf.bfloat16 for op in heavy)
    assert tf.bfloat16 in dtypes and in_bf16 / len(heavy) > 0.8, (in_bf16, len(heavy), dtypes)
    convolutions = [op for op in heavy if op.type == "Conv2D"]
    assert convolutions and all(op.outputs[0].dtype == tf.bfloat16 for op in convolutions)


def _host_stream(task: PanopticMaskFormerTask, params: object, host: int, hosts: int, batches: int) -> list[str]:
    context = tf.distribute.InputContext(num_input_pipelines=hosts, input_pipeline_id=host,
                                         num_replicas_in_sync=hosts)
    iterator = iter(task.build_inputs(params.task.train_data, context))
    digests = []
    for _ in range(batches):
        images, labels = next(iterator)
        digests.append(hashlib.sha256(images.numpy().tobytes() + labels["masks"].numpy().tobytes()).hexdigest())
    return digests


@pytest.mark.slow
def test_each_hosts_dataset_is_deterministic_given_its_id(dataset: Path, tiny) -> None:
    """Two builds of host 0's pipeline (shuffle, augmentation and all) give the same batches; host 1's differ;
    without augmentation the two hosts read disjoint halves of the records (file sharding, same file order)."""
    _, config = tiny
    params = _params(dataset, config, ",task.train_data.global_batch_size=2")
    task = PanopticMaskFormerTask(params.task)
    first = _host_stream(task, params, 0, 2, 6)
    assert _host_stream(task, params, 0, 2, 6) == first
    assert not set(_host_stream(task, params, 1, 2, 6)) & set(first)
    plain = _params(dataset, config, ",task.train_data.global_batch_size=2,task.train_data.aug_rand_hflip=false,"
                    "task.train_data.aug_scale_min=1.0,task.train_data.aug_scale_max=1.0,"
                    "task.train_data.shuffle_buffer_size=1")
    plain_task = PanopticMaskFormerTask(plain.task)
    # One epoch: 8 images in 2 shards, a batch of 1 per host, 4 batches each.
    per_host = [set(_host_stream(plain_task, plain, host, 2, 4)) for host in (0, 1)]
    assert all(len(s) == 4 for s in per_host) and not per_host[0] & per_host[1]
    assert len(per_host[0] | per_host[1]) == 8
