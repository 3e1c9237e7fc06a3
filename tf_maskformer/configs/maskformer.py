"""Model Garden configs (official.modeling.hyperparams) of the TF MaskFormer, and its experiments.

A model config names a preset (torch_reference.presets, the single definition of every architecture) and
may override the settings a user changes when fine-tuning; None keeps the preset's value.

Experiments registered with exp_factory (`mfport train --experiment NAME`, YAML files and
--params_override work as everywhere in the Model Garden):
  maskformer_coco_panoptic_r50_6enc   the original COCO panoptic R50 + 6 Enc recipe
  maskformer_ade20k_r50               the original ADE20K-150 R50 recipe
  maskformer_synthetic_smoke          COCO panoptic R50 + 6 Enc at a small size on the synthetic set (CPU)
"""

from __future__ import annotations

import dataclasses

from official.core import config_definitions as cfg
from official.core import exp_factory
from official.modeling import hyperparams, optimization
from official.modeling.optimization.configs import optimizer_config

from torch_reference.presets import MaskFormerPreset, get_preset


@dataclasses.dataclass
class MaskFormerModel(hyperparams.Config):
    preset: str = "r50_6enc_coco_panoptic"
    # Fixed input size [H, W] for compiled (XLA/TPU) execution; empty means any size (eager, serving).
    input_size: list[int] = dataclasses.field(default_factory=list)
    num_classes: int | None = None
    num_queries: int | None = None
    dropout: float | None = None
    size_divisibility: int | None = None
    object_mask_threshold: float | None = None
    overlap_threshold: float | None = None

    def to_preset(self) -> MaskFormerPreset:
        overrides = {field: getattr(self, field)
                     for field in ("num_classes", "num_queries", "dropout", "size_divisibility",
                                   "object_mask_threshold", "overlap_threshold")
                     if getattr(self, field) is not None}
        return get_preset(self.preset).with_overrides(**overrides)


@dataclasses.dataclass
class DataConfig(cfg.DataConfig):
    """TFRecords written by `mfport make-tfrecords` (label_map.json beside them)."""

    input_path: str = ""
    global_batch_size: int = 2
    is_training: bool = True
    dtype: str = "float32"
    shuffle_buffer_size: int = 64
    file_type: str = "tfrecord"
    drop_remainder: bool = True
    # Static number of target segments per image; beyond it the largest are kept (the task logs drops).
    max_segments: int = 100
    aug_scale_min: float = 0.5
    aug_scale_max: float = 2.0
    aug_rand_hflip: bool = True


@dataclasses.dataclass
class Losses(hyperparams.Config):
    # "hungarian": the in-graph solver (XLA, TPU); "scipy": linear_sum_assignment on the host (CPU/GPU).
    matcher: str = "hungarian"
    # Leave the padding the input pipeline adds out of the mask costs and losses (the original has no
    # fixed-size padding; its batch padding counts as background).
    ignore_padding: bool = True


@dataclasses.dataclass
class MaskFormerTask(cfg.TaskConfig):
    model: MaskFormerModel = dataclasses.field(default_factory=MaskFormerModel)
    train_data: DataConfig = dataclasses.field(default_factory=DataConfig)
    validation_data: DataConfig = dataclasses.field(
        default_factory=lambda: DataConfig(is_training=False, drop_remainder=False))
    losses: Losses = dataclasses.field(default_factory=Losses)
    # A directory written by `mfport convert` (or a TF checkpoint prefix); modules: "all" or "backbone".
    init_checkpoint: str = ""
    init_checkpoint_modules: str = "all"
    # Compile forward, matching, losses and backward with XLA (the TPU requirement; also on CPU/GPU).
    jit_compile: bool = True


@dataclasses.dataclass
class MaskFormerAdamWConfig(optimizer_config.AdamWeightDecayConfig):
    """The original recipe's AdamW: backbone lr x multiplier, no decay on norms and the query embedding."""

    name: str = "MaskFormerAdamW"
    epsilon: float = 1e-8  # torch.optim.AdamW's
    weight_decay_rate: float = 1e-4
    exclude_from_weight_decay: list[str] | None = dataclasses.field(
        default_factory=lambda: ["norm", "query_embed"])
    gradient_clip_norm: float = 0.0  # per-replica clipping off: global_clipnorm clips the reduced gradient
    global_clipnorm: float | None = 0.01  # full-model clipping of the original (CLIP_TYPE full_model)
    backbone_lr_multiplier: float = 0.1
    backbone_pattern: str = "/backbone/"


@dataclasses.dataclass
class OptimizerConfig(optimization.OptimizerConfig):
    maskformer_adamw: MaskFormerAdamWConfig = dataclasses.field(default_factory=MaskFormerAdamWConfig)


@dataclasses.dataclass
class OptimizationConfig(optimization.OptimizationConfig):
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)


def _recipe(base_lr: float, train_steps: int, warmup_steps: int = 0) -> OptimizationConfig:
    config = {"optimizer": {"type": "maskformer_adamw"},
              "learning_rate": {"type": "polynomial",
                                "polynomial": {"initial_learning_rate": base_lr, "decay_steps": train_steps,
                                               "end_learning_rate": 0.0, "power": 0.9}}}
    if warmup_steps:
        config["warmup"] = {"type": "linear", "linear": {"warmup_steps": warmup_steps, "warmup_learning_rate": 0.0}}
    return OptimizationConfig(config)


def _experiment(task: MaskFormerTask, train_steps: int, base_lr: float = 1e-4, interval: int = 5000,
                warmup_steps: int = 0) -> cfg.ExperimentConfig:
    return cfg.ExperimentConfig(
        task=task,
        trainer=cfg.TrainerConfig(
            train_steps=train_steps, validation_steps=-1, steps_per_loop=interval, summary_interval=interval,
            checkpoint_interval=interval, validation_interval=interval, max_to_keep=3,
            optimizer_config=_recipe(base_lr, train_steps, warmup_steps)),
        restrictions=["task.train_data.is_training != None", "task.validation_data.is_training != None"])


@exp_factory.register_config_factory("maskformer_coco_panoptic_r50_6enc")
def maskformer_coco_panoptic_r50_6enc() -> cfg.ExperimentConfig:
    """coco-panoptic/maskformer_panoptic_R50_bs64_554k: batch 64, 554k steps, lr 1e-4, fixed 1024 crops."""
    size = [1024, 1024]
    return _experiment(MaskFormerTask(
        model=MaskFormerModel(preset="r50_6enc_coco_panoptic", input_size=size),
        train_data=DataConfig(input_path="coco/train-*.tfrecord", global_batch_size=64, shuffle_buffer_size=1000),
        validation_data=DataConfig(input_path="coco/val-*.tfrecord", global_batch_size=8, is_training=False,
                                   drop_remainder=False)), train_steps=554_000)


@exp_factory.register_config_factory("maskformer_ade20k_r50")
def maskformer_ade20k_r50() -> cfg.ExperimentConfig:
    """ade20k-150/maskformer_R50_bs16_160k: batch 16, 160k steps, lr 1e-4, 512x512 crops."""
    size = [512, 512]
    return _experiment(MaskFormerTask(
        model=MaskFormerModel(preset="r50_ade20k", input_size=size),
        train_data=DataConfig(input_path="ade20k/train-*.tfrecord", global_batch_size=16, shuffle_buffer_size=1000,
                              max_segments=150),
        validation_data=DataConfig(input_path="ade20k/val-*.tfrecord", global_batch_size=8, is_training=False,
                                   drop_remainder=False, max_segments=150)), train_steps=160_000)


@exp_factory.register_config_factory("maskformer_synthetic_smoke")
def maskformer_synthetic_smoke() -> cfg.ExperimentConfig:
    """A CPU fine-tune on the synthetic set (`mfport synthetic-data`): 128x128, batch 2, 40 steps."""
    size = [128, 128]
    experiment = _experiment(MaskFormerTask(
        model=MaskFormerModel(preset="r50_6enc_coco_panoptic", input_size=size),
        train_data=DataConfig(input_path="synthetic/records/train-*.tfrecord", global_batch_size=2,
                              max_segments=16, aug_scale_min=0.8, aug_scale_max=1.25),
        validation_data=DataConfig(input_path="synthetic/records/val-*.tfrecord", global_batch_size=2,
                                   is_training=False, drop_remainder=False, max_segments=16)),
        train_steps=40, base_lr=1e-4, interval=10)
    # Every step's loss in the summaries (the loss curve); a checkpoint every 10 steps.
    experiment.trainer.steps_per_loop = 1
    experiment.trainer.summary_interval = 1
    experiment.trainer.validation_interval = 40
    return experiment
