"""The Model Garden task of MaskFormer: model, data, losses, train and validation steps, PQ and mIoU.

train_step: the normalisers (num_masks, CE weight sum) are summed over the replicas first; then
forward, in-graph matching, all losses and the backward pass run as ONE XLA-compiled function
(jit_compile, the TPU requirement: static shapes, no host op); the optimiser applies the gradients
after the strategy's all-reduce (full-model clipping at global_clipnorm happens on the reduced
gradient). Under TPUStrategy the whole step is compiled anyway.
validation_step: losses, the original's panoptic and semantic inference in the graph, and the Model
Garden's PanopticQualityV2 and a mean-IoU metric accumulated over the whole data set (reset only after
reduce_aggregated_logs reports them).
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
import tf_keras
from official.common import dataset_fn
from official.core import base_task, task_factory
from official.vision.dataloaders import input_reader_factory
from official.vision.evaluation import panoptic_quality

import mfport.tf_maskformer.optimization  # noqa: F401  (registers the "maskformer_adamw" optimizer)
from mfport.core.errors import MfportError
from mfport.core.model_dir import MANIFEST, TF_CHECKPOINT, Manifest
from mfport.tf_maskformer.configs import maskformer as exp_cfg
from mfport.tf_maskformer.dataloaders.maskformer_input import Decoder, Parser, augmentation_seeds
from mfport.tf_maskformer.losses.maskformer_losses import LOSS_TERMS, MaskFormerLoss
from mfport.tf_maskformer.modeling.factory import build_maskformer
from mfport.tf_maskformer.modeling.inference import postprocess


class InitCheckpointError(MfportError):
    """An init checkpoint that does not fit the model; the message names the file and the problem."""


def resolve_init_checkpoint(path: str) -> tuple[str, Manifest | None]:
    """A converted model directory (manifest.json + tf_checkpoint/) or a TF checkpoint prefix/directory."""
    candidate = Path(path)
    manifest = None
    if (candidate / MANIFEST).is_file():
        manifest = Manifest.read(candidate)
        candidate = candidate / TF_CHECKPOINT
    if candidate.is_dir():
        found = tf.train.latest_checkpoint(str(candidate))
        if found is None:
            indexes = sorted(candidate.glob("*.index"))
            found = str(indexes[-1].with_suffix("")) if indexes else None
        if found is None:
            raise InitCheckpointError(f"{path}: no TF checkpoint inside (expected {TF_CHECKPOINT}/ckpt*.index)",
                                      parameter="init_checkpoint")
        return found, manifest
    if not Path(str(candidate) + ".index").is_file():
        raise InitCheckpointError(f"{path}: neither a converted model directory nor a TF checkpoint prefix",
                                  parameter="init_checkpoint")
    return str(candidate), manifest


@task_factory.register_task_cls(exp_cfg.MaskFormerTask)
class PanopticMaskFormerTask(base_task.Task):
    def __init__(self, params: exp_cfg.MaskFormerTask, logging_dir: str | None = None, name: str | None = None
                 ) -> None:
        super().__init__(params, logging_dir, name)
        self.preset = params.model.to_preset()
        self.criterion = MaskFormerLoss(self.preset, params.losses.matcher)
        self._compiled_gradients = None
        self.panoptic_quality = None
        self.mean_iou = None

    # Model and weights -------------------------------------------------------------------------------
    def build_model(self) -> tf_keras.Model:
        size = self.task_config.model.input_size
        model = build_maskformer(self.preset, build=False)
        return model.build_for(*(size or [64, 64]))

    def initialize(self, model: tf_keras.Model) -> None:
        path = self.task_config.init_checkpoint
        if not path:
            return
        prefix, manifest = resolve_init_checkpoint(path)
        if manifest is not None and self.task_config.init_checkpoint_modules == "all":
            classes = manifest.preset.num_classes
            if classes != self.preset.num_classes:
                raise InitCheckpointError(f"{path}: converted with {classes} classes, the model has "
                                          f"{self.preset.num_classes}; use init_checkpoint_modules=backbone",
                                          parameter="init_checkpoint")
        modules = self.task_config.init_checkpoint_modules
        if modules == "all":
            status = tf.train.Checkpoint(model=model).read(prefix)
            status.assert_existing_objects_matched()
            status.expect_partial()  # a training checkpoint also holds the optimiser's slots
        elif modules == "backbone":
            tf.train.Checkpoint(model=tf.train.Checkpoint(backbone=model.backbone)).read(prefix).expect_partial()
        else:
            raise InitCheckpointError(f"init_checkpoint_modules: {modules!r}; choose all or backbone")

    # Data ----------------------------------------------------------------------------------------------
    def build_inputs(self, params: exp_cfg.DataConfig, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        size = self.task_config.model.input_size
        if len(size) != 2:
            raise ValueError("task.model.input_size: training needs a fixed [H, W]")
        parser = Parser(size, params.max_segments, ignore_label=self.preset.num_classes,
                        pixel_mean=self.preset.pixel_mean, pixel_std=self.preset.pixel_std,
                        aug_scale_min=params.aug_scale_min, aug_scale_max=params.aug_scale_max,
                        aug_rand_hflip=params.aug_rand_hflip)
        reader = input_reader_factory.input_reader_generator(
            params, dataset_fn=dataset_fn.pick_dataset_fn(params.file_type), decoder_fn=Decoder().decode,
            sample_fn=augmentation_seeds(params.seed or 0, input_context),
            parser_fn=parser.parse_fn(params.is_training))
        return reader.read(input_context=input_context)

    # Losses --------------------------------------------------------------------------------------------
    def _targets(self, labels: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        keys = ["labels", "masks", "valid"] + (["pixel_valid"] if self.task_config.losses.ignore_padding else [])
        return {k: labels[k] for k in keys}

    def build_losses(self, labels: dict[str, tf.Tensor], model_outputs: dict[str, tf.Tensor],
                     aux_losses: list | None = None, normalisers: tuple[tf.Tensor, tf.Tensor] | None = None
                     ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """(weighted total, every unweighted term); the total is what the original sums."""
        targets = self._targets(labels)
        losses, _ = self.criterion(model_outputs, targets, normalisers=normalisers)
        total = self.criterion.weighted_total(losses)
        if aux_losses:
            total += tf.add_n(aux_losses)
        return total, losses

    def build_metrics(self, training: bool = True) -> list[tf_keras.metrics.Metric]:
        names = ["total_loss", *LOSS_TERMS, "dropped_segments"]
        metrics = [tf_keras.metrics.Mean(name, dtype=tf.float32) for name in names]
        if not training:
            classes = self.preset.num_classes
            self.panoptic_quality = panoptic_quality.PanopticQualityV2(
                num_categories=classes + 1, ignored_label=classes, max_num_instances=255,
                is_thing=tuple(i in self.preset.thing_ids for i in range(classes + 1)))
            self.mean_iou = tf_keras.metrics.MeanIoU(num_classes=classes + 1, ignore_class=classes,
                                                     name="semantic_mean_iou")
        return metrics

    def _update_loss_metrics(self, metrics: list, total: tf.Tensor, losses: dict[str, tf.Tensor],
                             labels: dict[str, tf.Tensor]) -> None:
        values = {"total_loss": total, **{k: losses[k] for k in LOSS_TERMS},
                  "dropped_segments": tf.reduce_sum(tf.cast(labels["num_dropped_segments"], tf.float32))}
        for metric in metrics or []:
            metric.update_state(values[metric.name])

    # Steps ---------------------------------------------------------------------------------------------
    def _gradients(self, model: tf_keras.Model, images: tf.Tensor, labels: dict[str, tf.Tensor],
                   normalisers: tuple[tf.Tensor, tf.Tensor]) -> tuple[list[tf.Tensor], tf.Tensor, dict]:
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            total, losses = self.build_losses(labels, outputs, normalisers=normalisers)
            # Gradients are summed over replicas by the all-reduce; the normalisers are global already.
            scaled = total / replicas
        gradients = tape.gradient(scaled, model.trainable_variables)
        # Gathers (the Swin bias tables, the query embedding) give IndexedSlices, whose all-reduce and sparse
        # optimiser update have data-dependent shapes (Unique, UnsortedSegmentSum): densify here, in the
        # compiled step, so the all-reduce and the update see static shapes (what a TPU needs).
        gradients = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in gradients]
        return gradients, total, losses

    def train_step(self, inputs: tuple[tf.Tensor, dict[str, tf.Tensor]], model: tf_keras.Model,
                   optimizer: tf_keras.optimizers.Optimizer, metrics: list | None = None) -> dict[str, tf.Tensor]:
        images, labels = inputs
        normalisers = self.criterion.normalisers(self._targets(labels), self.preset.num_queries)
        if self._compiled_gradients is None:
            # autograph off: the step has no data-dependent Python control flow (the matcher builds its own
            # tf.while_loop), and tracing the whole model with it takes about twice as long.
            self._compiled_gradients = tf.function(self._gradients, jit_compile=self.task_config.jit_compile,
                                                   autograph=False)
        grads, total, losses = self._compiled_gradients(model, images, labels, normalisers)
        optimizer.apply_gradients(list(zip(grads, model.trainable_variables, strict=True)))
        self._update_loss_metrics(metrics, total, losses, labels)
        return {self.loss: total}

    def validation_step(self, inputs: tuple[tf.Tensor, dict[str, tf.Tensor]], model: tf_keras.Model,
                        metrics: list | None = None) -> dict[str, tf.Tensor]:
        images, labels = inputs
        outputs = model(images, training=False)
        total, losses = self.build_losses(labels, outputs)
        self._update_loss_metrics(metrics, total, losses, labels)
        size = tuple(self.task_config.model.input_size)
        result = postprocess(outputs, self.preset, size, size)  # in float32 whatever the compute dtype
        self.panoptic_quality.update_state(
            {"category_mask": labels["category_mask"], "instance_mask": labels["instance_mask"]},
            panoptic_prediction(result, self.preset.num_classes))
        ignore = labels["category_mask"] == self.preset.num_classes
        self.mean_iou.update_state(labels["category_mask"], result["semantic_map"], sample_weight=tf.cast(~ignore,
                                                                                                           tf.float32))
        return {self.loss: total}

    def aggregate_logs(self, state: list | None = None, step_outputs: dict | None = None) -> list:
        return state or [self.panoptic_quality, self.mean_iou]

    def reduce_aggregated_logs(self, aggregated_logs: list, global_step: tf.Tensor | None = None
                               ) -> dict[str, float]:
        """PQ (all, things, stuff), SQ, RQ over the classes present, and semantic mIoU; then reset."""
        result = {k: v.numpy() for k, v in self.panoptic_quality.result().items()}
        out = {}
        for suffix, valid in (("", result["valid_thing_classes"] | result["valid_stuff_classes"]),
                              ("_things", result["valid_thing_classes"]), ("_stuff", result["valid_stuff_classes"])):
            for key in ("pq", "sq", "rq"):
                values = result[f"{key}_per_class"][valid]
                out[f"panoptic_{key}{suffix}"] = float(values.mean()) if values.size else 0.0
        out["semantic_miou"] = float(self.mean_iou.result().numpy())
        self.panoptic_quality.reset_state()
        self.mean_iou.reset_state()
        return out


def panoptic_prediction(result: dict[str, tf.Tensor], num_classes: int) -> dict[str, tf.Tensor]:
    """The inference's segment map -> category_mask / instance_mask (void pixels: num_classes, 0)."""
    segment_id, category = result["segment_id"], result["category"]
    slots = tf.shape(segment_id)[1] + 1
    # Category of each segment id (0 = void): the category of the queries carrying that id.
    table = tf.reduce_max(tf.one_hot(segment_id, slots, dtype=tf.int32) * (category[..., None] + 1), axis=1) - 1
    table = tf.where(tf.range(slots)[None] == 0, num_classes, table)
    panoptic = result["panoptic_seg"]
    return {"category_mask": tf.gather(table, panoptic, batch_dims=1), "instance_mask": panoptic}
