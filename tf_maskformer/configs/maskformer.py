"""Model Garden configs (official.modeling.hyperparams) of the TF MaskFormer, and its experiments.

The model config spells the architecture out (backbone family and size, pixel decoder, predictor, classes),
so a params.yaml says what was trained; `preset` names the released model it started from, whose label
set, thresholds and loss weights fill what the config leaves unset. MaskFormerModel.to_preset() is the one
way from a config to the model builders.

Experiments registered with exp_factory (`mfport train --experiment NAME`; YAML files, --params_override
and runtime.* work as everywhere in the Model Garden):
  maskformer_<preset>           every released model's original recipe (e.g. maskformer_r50_6enc_coco_panoptic,
                                maskformer_swin_t_ade20k): its crop size, batch, schedule, lr, decay, warm-up
  maskformer_synthetic_smoke    COCO panoptic R50 + 6 Enc at 128x128 on the synthetic set (CPU, 40 steps)
  maskformer_synthetic_smoke_swin_t   the same with the COCO panoptic Swin-T
  maskformer_synthetic_overfit  R50 + 6 Enc memorising 4 synthetic images (300 steps; docs/training.md says why
                                these settings): the check that fine-tuning learns at all
"""

from __future__ import annotations

import dataclasses

from official.core import config_definitions as cfg
from official.core import exp_factory
from official.modeling import hyperparams, optimization
from official.modeling.optimization.configs import optimizer_config

from mfport.core.labels import LabelSet, get_label_set
from mfport.core.presets import PRESETS, MaskFormerPreset, ResNetSpec, SwinSpec, TrainingRecipe, get_preset


@dataclasses.dataclass
class ResNetBackbone(hyperparams.Config):
    depth: int = 50
    stem: str = "basic"  # "deeplab": R101c's three 3x3 convs
    stem_out_channels: int = 64
    res5_multi_grid: list[int] = dataclasses.field(default_factory=lambda: [1, 1, 1])


@dataclasses.dataclass
class SwinBackbone(hyperparams.Config):
    embed_dim: int = 96
    depths: list[int] = dataclasses.field(default_factory=lambda: [2, 2, 6, 2])
    num_heads: list[int] = dataclasses.field(default_factory=lambda: [3, 6, 12, 24])
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3  # stochastic depth, active in training only
    pretrain_img_size: int = 224


@dataclasses.dataclass
class Backbone(hyperparams.OneOfConfig):
    type: str = "resnet"
    resnet: ResNetBackbone = dataclasses.field(default_factory=ResNetBackbone)
    swin: SwinBackbone = dataclasses.field(default_factory=SwinBackbone)


@dataclasses.dataclass
class MaskFormerModel(hyperparams.Config):
    preset: str = "r50_6enc_coco_panoptic"  # the released model this architecture was taken from
    backbone: Backbone = dataclasses.field(default_factory=Backbone)
    pixel_decoder: str = "transformer_encoder"  # or "base" (BasePixelDecoder)
    pixel_decoder_enc_layers: int = 6
    transformer_in_feature: str = "transformer_encoder"  # or "res5"
    enforce_input_proj: bool = False
    num_classes: int = 133
    dataset: str = ""  # label set of the classes; "" keeps the preset's (generic class_i for another count)
    num_queries: int = 100
    hidden_dim: int = 256
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 6
    conv_dim: int = 256
    mask_dim: int = 256
    dropout: float = 0.1
    # Fixed input size [H, W] for compiled (XLA/TPU) execution; empty means any size (eager, serving).
    input_size: list[int] = dataclasses.field(default_factory=list)
    size_divisibility: int = 0
    panoptic_on: bool = True
    semantic_on: bool | None = None  # None: the semantic map when panoptic_on is off
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8

    def to_preset(self) -> MaskFormerPreset:
        base = PRESETS.get(self.preset) or get_preset("r50_6enc_coco_panoptic")
        if self.backbone.type == "swin":
            s = self.backbone.swin
            backbone = SwinSpec(s.embed_dim, tuple(s.depths), tuple(s.num_heads), s.window_size, s.patch_size,
                                s.mlp_ratio, s.drop_path_rate, s.pretrain_img_size)
        else:
            r = self.backbone.resnet
            backbone = ResNetSpec(r.depth, r.stem, r.stem_out_channels, tuple(r.res5_multi_grid))
        if self.dataset:
            labels = get_label_set(self.dataset)
        elif self.num_classes == base.num_classes:
            labels = base.labels
        else:
            labels = LabelSet.generic(self.num_classes)
        fields = ("pixel_decoder", "pixel_decoder_enc_layers", "transformer_in_feature", "enforce_input_proj",
                  "num_classes", "num_queries", "hidden_dim", "nheads", "dim_feedforward", "dec_layers", "conv_dim",
                  "mask_dim", "dropout", "size_divisibility", "panoptic_on", "object_mask_threshold",
                  "overlap_threshold")
        name = self.preset if self.preset in PRESETS else "custom"
        semantic_on = self.semantic_on if self.semantic_on is not None else not self.panoptic_on
        return base.with_overrides(name=name, backbone=backbone, labels=labels, semantic_on=semantic_on,
                                   **{field: getattr(self, field) for field in fields})


def model_config(preset: MaskFormerPreset, input_size: list[int] | None = None) -> MaskFormerModel:
    """The config that builds `preset`'s model (the inverse of MaskFormerModel.to_preset)."""
    spec = preset.backbone
    if isinstance(spec, SwinSpec):
        backbone = Backbone(type="swin", swin=SwinBackbone(
            embed_dim=spec.embed_dim, depths=list(spec.depths), num_heads=list(spec.num_heads),
            window_size=spec.window_size, patch_size=spec.patch_size, mlp_ratio=spec.mlp_ratio,
            drop_path_rate=spec.drop_path_rate, pretrain_img_size=spec.pretrain_img_size))
    else:
        backbone = Backbone(type="resnet", resnet=ResNetBackbone(
            depth=spec.depth, stem=spec.stem, stem_out_channels=spec.stem_out_channels,
            res5_multi_grid=list(spec.res5_multi_grid)))
    return MaskFormerModel(
        preset=preset.name, backbone=backbone, pixel_decoder=preset.pixel_decoder,
        pixel_decoder_enc_layers=preset.pixel_decoder_enc_layers, transformer_in_feature=preset.transformer_in_feature,
        enforce_input_proj=preset.enforce_input_proj, num_classes=preset.num_classes,
        dataset=preset.labels.name if preset.labels.name != "generic" else "", num_queries=preset.num_queries,
        hidden_dim=preset.hidden_dim, nheads=preset.nheads, dim_feedforward=preset.dim_feedforward,
        dec_layers=preset.dec_layers, conv_dim=preset.conv_dim, mask_dim=preset.mask_dim, dropout=preset.dropout,
        input_size=list(input_size or []), size_divisibility=preset.size_divisibility, panoptic_on=preset.panoptic_on,
        semantic_on=preset.semantic_on, object_mask_threshold=preset.object_mask_threshold,
        overlap_threshold=preset.overlap_threshold)


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
    # A fixed seed: every worker shuffles the file list alike before taking its shard (different seeds would
    # make the hosts' shards overlap), and each host's stream (order and augmentation) is reproducible.
    seed: int | None = 0
    deterministic: bool | None = True


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
class MaskFormerRuntime(cfg.RuntimeConfig):
    # With distribution_strategy "mirrored" and no GPU: MirroredStrategy over this many logical CPUs (the
    # multi-replica arithmetic, checked on a machine without accelerators).
    num_cpu_replicas: int = 1


@dataclasses.dataclass
class MaskFormerAdamWConfig(optimizer_config.AdamWeightDecayConfig):
    """The original recipe's AdamW: backbone lr x multiplier, no decay on norms, embeddings, bias tables."""

    name: str = "MaskFormerAdamW"
    epsilon: float = 1e-8  # torch.optim.AdamW's
    weight_decay_rate: float = 1e-4
    exclude_from_weight_decay: list[str] | None = dataclasses.field(
        default_factory=lambda: list(TrainingRecipe().no_decay_patterns))
    gradient_clip_norm: float = 0.0  # per-replica clipping off: global_clipnorm clips the reduced gradient
    global_clipnorm: float | None = 0.01  # full-model clipping of the original (CLIP_TYPE full_model)
    backbone_lr_multiplier: float = 0.1
    backbone_pattern: str = "/backbone/"


@dataclasses.dataclass
class OptimizerConfig(optimization.OptimizerConfig):
    maskformer_adamw: MaskFormerAdamWConfig = dataclasses.field(default_factory=MaskFormerAdamWConfig)


@dataclasses.dataclass
class Detectron2LinearWarmupConfig(hyperparams.Config):
    """detectron2's linear warm-up: lr x (f (1 - a) + a), a = step / warmup_steps (tf_maskformer.optimization)."""

    name: str = "detectron2_linear_warmup"
    warmup_steps: int = 0
    warmup_factor: float = 1.0


@dataclasses.dataclass
class WarmupConfig(optimization.WarmupConfig):
    detectron2_linear: Detectron2LinearWarmupConfig = dataclasses.field(default_factory=Detectron2LinearWarmupConfig)


@dataclasses.dataclass
class OptimizationConfig(optimization.OptimizationConfig):
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    warmup: WarmupConfig = dataclasses.field(default_factory=WarmupConfig)


@dataclasses.dataclass
class MaskFormerExperiment(cfg.ExperimentConfig):
    task: MaskFormerTask = dataclasses.field(default_factory=MaskFormerTask)
    runtime: MaskFormerRuntime = dataclasses.field(default_factory=MaskFormerRuntime)


def optimization_config(recipe: TrainingRecipe, train_steps: int | None = None) -> OptimizationConfig:
    """detectron2's WarmupPolyLR + full-model-clipped AdamW of a recipe, as Model Garden configs."""
    steps = train_steps or recipe.max_iter
    config = {"optimizer": {"type": "maskformer_adamw", "maskformer_adamw": {
                  "weight_decay_rate": recipe.weight_decay, "backbone_lr_multiplier": recipe.backbone_multiplier,
                  "exclude_from_weight_decay": list(recipe.no_decay_patterns),
                  "global_clipnorm": recipe.clip_full_model_norm or None}},
              "learning_rate": {"type": "polynomial", "polynomial": {
                  "initial_learning_rate": recipe.base_lr, "decay_steps": steps, "end_learning_rate": 0.0,
                  "power": recipe.poly_power}}}
    if recipe.warmup_steps:
        config["warmup"] = {"type": "detectron2_linear", "detectron2_linear": {
            "warmup_steps": min(recipe.warmup_steps, steps), "warmup_factor": recipe.warmup_factor}}
    return OptimizationConfig(config)


def experiment_for(preset: MaskFormerPreset, input_size: list[int] | None = None, train_steps: int | None = None,
                   batch_size: int | None = None, interval: int = 5000) -> MaskFormerExperiment:
    """A preset's original recipe as a Model Garden experiment (the crop size is the fixed input size)."""
    recipe = preset.recipe
    size = list(input_size or recipe.crop_size)
    steps = train_steps or recipe.max_iter
    max_segments = 150 if preset.num_classes >= 150 else 100
    short = preset.name.replace("_", "-")
    return MaskFormerExperiment(
        task=MaskFormerTask(
            model=model_config(preset, size),
            train_data=DataConfig(input_path=f"{short}/train-*.tfrecord", global_batch_size=batch_size or
                                  recipe.batch_size, shuffle_buffer_size=1000, max_segments=max_segments),
            validation_data=DataConfig(input_path=f"{short}/val-*.tfrecord", global_batch_size=8, is_training=False,
                                       drop_remainder=False, max_segments=max_segments)),
        trainer=cfg.TrainerConfig(
            train_steps=steps, validation_steps=-1, steps_per_loop=min(interval, steps), summary_interval=interval,
            checkpoint_interval=interval, validation_interval=interval, max_to_keep=3,
            optimizer_config=optimization_config(recipe, steps)),
        restrictions=["task.train_data.is_training != None", "task.validation_data.is_training != None"])


def _register(preset_name: str) -> None:
    exp_factory.register_config_factory(f"maskformer_{preset_name}")(
        lambda: experiment_for(get_preset(preset_name)))


for _name in PRESETS:
    _register(_name)


def _synthetic_smoke(preset_name: str) -> MaskFormerExperiment:
    """A CPU fine-tune on the synthetic set (`mfport synthetic-data`): 128x128, batch 2, 40 steps, the preset's
    recipe; every step's loss in the summaries (the loss curve), a checkpoint every 10 steps."""
    experiment = experiment_for(get_preset(preset_name), input_size=[128, 128], train_steps=40, batch_size=2,
                                interval=10)
    experiment.task.train_data.override({"input_path": "synthetic/records/train-*.tfrecord", "max_segments": 16,
                                         "shuffle_buffer_size": 64, "aug_scale_min": 0.8, "aug_scale_max": 1.25})
    experiment.task.validation_data.override({"input_path": "synthetic/records/val-*.tfrecord", "max_segments": 16,
                                              "global_batch_size": 2})
    experiment.trainer.steps_per_loop = 1
    experiment.trainer.summary_interval = 1
    experiment.trainer.validation_interval = 40
    return experiment


exp_factory.register_config_factory("maskformer_synthetic_smoke")(lambda: _synthetic_smoke("r50_6enc_coco_panoptic"))
exp_factory.register_config_factory("maskformer_synthetic_smoke_swin_t")(
    lambda: _synthetic_smoke("swin_t_coco_panoptic"))


def _synthetic_overfit() -> MaskFormerExperiment:
    """Does fine-tuning learn? Memorise 4 images (`mfport synthetic-data --train 4 --val 0`), evaluated on the same 4.

    The smoke recipe cannot show it, for reasons measured in docs/training.md: dropout 0.1 makes the train-mode
    loss far lower than the eval-mode one on the same images (so training "converges" while eval does not), and
    random scale/flip means the evaluated images are never the trained ones. Here: dropout off, no augmentation,
    all 4 images in every batch, the preset's lr (1e-4, backbone x0.1, full-model clipping 0.01) over 300 steps.
    """
    experiment = _synthetic_smoke("r50_6enc_coco_panoptic")
    experiment.task.model.dropout = 0.0
    experiment.task.train_data.override({"input_path": "overfit/records/train-*.tfrecord", "global_batch_size": 4,
                                         "aug_rand_hflip": False, "aug_scale_min": 1.0, "aug_scale_max": 1.0})
    experiment.task.validation_data.override({"input_path": "overfit/records/train-*.tfrecord",
                                              "global_batch_size": 4})
    steps = 300
    experiment.trainer.override({"train_steps": steps, "steps_per_loop": 20, "summary_interval": 20,
                                 "checkpoint_interval": 100, "validation_interval": steps})
    experiment.trainer.optimizer_config.learning_rate.polynomial.decay_steps = steps
    return experiment


exp_factory.register_config_factory("maskformer_synthetic_overfit")(_synthetic_overfit)
