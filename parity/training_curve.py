"""Training-curve parity: the PyTorch reference and the TF model fine-tuned side by side.

Both start from the same checkpoint, see the same batches in the same order (the TF input pipeline's, fed to
PyTorch as the original's targets: each image's non-padding segments), dropout and drop-path off, with the
same recipe: torch.optim.AdamW over detectron2's MaskFormer parameter groups (backbone lr x multiplier, no
decay on norm layers, embeddings and Swin bias tables), full-model clip_grad_norm_, WarmupPolyLR, against
the Model Garden task's own train step with MaskFormerAdamW and the configured schedule. Compared: the loss
at every step and, after the last, every parameter (through the registry), by the band rule of the tap rows:
TF's drift from a float64 run of the reference within FLOAT32_BAND_FACTOR x the float32 reference's own drift
from it. Without the float64 run (float64=False), float32's own drift is the same float32 run repeated with
another thread count, which changes nothing but summation order (and understates float32's noise: it leaves
most roundings as they were).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from mfport.core.errors import MfportError
from mfport.core.presets import MaskFormerPreset, SwinSpec
from mfport.parity.metrics import FLOAT32_BAND_FACTOR
from mfport.parity.results import Verdict

# Below these, a drift is float32 rounding whatever the other run did (relative to the loss; relative to how far
# training moved the tensor): the floors only matter when the PyTorch run repeats itself nearly bit for bit.
LOSS_FLOOR = 1e-5
PARAMETER_FLOOR = 1e-4


def _parameter_bound(own: float, value: np.ndarray, moved: float, steps: int) -> float:
    """The largest relative drift float32 explains: 4x PyTorch's own, the floor, or the rounding of the stored value.

    The last matters for tensors that move little relative to their size (a LayerNorm weight near 1.0 moving by
    5e-5): each step's assignment rounds the value to its float32 spacing, so two runs whose updates differ in the
    last bits can end up to one spacing apart per step, however exact everything else was.
    """
    spacing = float(np.spacing(np.float32(np.abs(value).max())))
    return max(PARAMETER_FLOOR, FLOAT32_BAND_FACTOR * own, steps * spacing / moved)


@dataclasses.dataclass
class CurveOptions:
    checkpoint: str
    preset: str | None = None
    train_data: str | None = None  # a TFRecord glob; None: the synthetic set for the checkpoint's label set
    steps: int = 50
    batch: int = 2
    image_size: tuple[int, int] = (128, 128)
    report_dir: str | None = None
    float64: bool = True  # judge against a float64 run of the reference (else: a float32 repeat, other threads)


@dataclasses.dataclass
class CurveStep:
    step: int
    learning_rate: float
    torch_loss: float
    tf_loss: float
    float64_loss: float | None  # the float64 reference run's (None without one)
    other_threads_loss: float | None  # the float32 run repeated on another thread count (None with float64)

    @property
    def reference_loss(self) -> float:
        """What both float32 runs are judged against: the float64 run's loss, else PyTorch's float32 one."""
        return self.torch_loss if self.float64_loss is None else self.float64_loss

    @property
    def tf_drift(self) -> float:
        return abs(self.tf_loss - self.reference_loss) / abs(self.reference_loss)

    @property
    def float32_drift(self) -> float:
        other = self.torch_loss if self.float64_loss is not None else self.other_threads_loss
        return abs(other - self.reference_loss) / abs(self.reference_loss)


@dataclasses.dataclass
class ParameterDrift:
    """One trained tensor after the last step: max |other - reference| over max |reference - start| (how far it
    moved); the reference is the float64 run (else PyTorch's float32 run), `float32_drift` PyTorch float32's."""

    name: str
    moved: float
    tf_drift: float
    float32_drift: float
    bound: float  # the band TF must stay in: see _parameter_bound
    verdict: Verdict


@dataclasses.dataclass
class Recipe:
    base_lr: float
    weight_decay: float
    backbone_multiplier: float
    clip_full_model_norm: float
    poly_power: float
    warmup_steps: int
    warmup_factor: float
    schedule_steps: int


@dataclasses.dataclass
class TrainingCurve:
    preset: str
    steps: int
    batch: int
    image_size: tuple[int, int]
    recipe: Recipe
    threads: tuple[int, int]  # PyTorch's float32 run's, and the repeat's (the same without one: float64 mode)
    rows: list[CurveStep]
    parameters: list[ParameterDrift]
    loss_verdict: Verdict
    band_factor: float
    seconds: dict[str, float]

    @property
    def passed(self) -> bool:
        return self.loss_verdict.ok and all(p.verdict.ok for p in self.parameters)

    @property
    def float64(self) -> bool:
        return self.rows[0].float64_loss is not None if self.rows else False

    @property
    def loss_drift(self) -> tuple[float, float]:
        """(TF's, float32's own) largest relative loss difference over the steps."""
        return max(r.tf_drift for r in self.rows), max(r.float32_drift for r in self.rows)

    @property
    def labels(self) -> tuple[str, str]:
        """How reports name (TF's drift, float32's own drift)."""
        if self.float64:
            return "TF vs float64", "PyTorch fp32 vs float64"
        return "TF vs PyTorch", f"PyTorch {self.threads[1]} vs {self.threads[0]} thread(s)"


# PyTorch: the original's optimiser ------------------------------------------------------------------------------
def torch_parameter_groups(model: object, recipe: Recipe) -> list[dict[str, object]]:
    """detectron2 MaskFormer's build_optimizer groups: one per parameter, named, with its lr and decay."""
    import torch

    norms = (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.SyncBatchNorm)
    groups = []
    for module_name, module in model.named_modules():
        for name, value in module.named_parameters(recurse=False):
            if not value.requires_grad:
                continue
            lr = recipe.base_lr * (recipe.backbone_multiplier if "backbone" in module_name else 1.0)
            decay = recipe.weight_decay
            if "relative_position_bias_table" in name or "absolute_pos_embed" in name:
                decay = 0.0
            if isinstance(module, norms) or isinstance(module, torch.nn.Embedding):
                decay = 0.0  # WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0
            groups.append({"params": [value], "lr": lr, "weight_decay": decay,
                           "name": f"{module_name}.{name}" if module_name else name})
    return groups


def warmup_poly_factor(step: int, recipe: Recipe) -> float:
    """detectron2's WarmupPolyLR multiplier at an iteration (linear warm-up, no constant ending)."""
    warmup = 1.0
    if step < recipe.warmup_steps:
        alpha = step / recipe.warmup_steps
        warmup = recipe.warmup_factor * (1 - alpha) + alpha
    return warmup * math.pow(1.0 - step / recipe.schedule_steps, recipe.poly_power)


def _torch_targets(labels: dict[str, np.ndarray]) -> list[dict[str, object]]:
    import torch

    targets = []
    for b in range(labels["valid"].shape[0]):
        valid = labels["valid"][b].astype(bool)
        targets.append({"labels": torch.from_numpy(labels["labels"][b][valid].astype(np.int64)),
                        "masks": torch.from_numpy(labels["masks"][b][valid].astype(np.float32))})
    return targets


def train_torch(model: object, batches: list[tuple[np.ndarray, dict]], recipe: Recipe, threads: int,
                float64: bool = False) -> tuple[list[float], list[float], dict[str, np.ndarray]]:
    """(loss per step, lr per step, trained parameters) of a copy of `model` on the batches (in float64: the
    weights widened exactly, images and target masks too; the optimiser's state follows the parameters)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    dtype = torch.float64 if float64 else torch.float32
    try:
        model = copy.deepcopy(model).to(dtype).eval()  # dropout off; FrozenBN has no training mode
        groups = torch_parameter_groups(model, recipe)
        optimizer = torch.optim.AdamW(groups, lr=recipe.base_lr)  # betas (0.9, 0.999), eps 1e-8: the original's
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_poly_factor(step, recipe))
        parameters = [p for g in groups for p in g["params"]]
        losses, rates = [], []
        for images, labels in batches:
            rates.append(max(g["lr"] for g in optimizer.param_groups))
            optimizer.zero_grad(set_to_none=True)
            outputs = model.forward_padded(torch.from_numpy(images).permute(0, 3, 1, 2).to(dtype).contiguous())
            targets = [{"labels": t["labels"], "masks": t["masks"].to(dtype)} for t in _torch_targets(labels)]
            total = sum(model.criterion.weighted(model.criterion(outputs, targets)).values())
            total.backward()
            if recipe.clip_full_model_norm:
                torch.nn.utils.clip_grad_norm_(parameters, recipe.clip_full_model_norm)
            optimizer.step()
            schedule.step()
            losses.append(float(total.detach()))
        return losses, rates, {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    finally:
        torch.set_num_threads(previous)


# TensorFlow: the Model Garden task's train step -----------------------------------------------------------------
def _without_dropout(preset: MaskFormerPreset) -> MaskFormerPreset:
    backbone = preset.backbone
    if isinstance(backbone, SwinSpec):
        backbone = dataclasses.replace(backbone, drop_path_rate=0.0)
    return preset.with_overrides(dropout=0.0, backbone=backbone)


def _experiment(preset: MaskFormerPreset, options: CurveOptions, train_data: str) -> object:
    from mfport.tf_maskformer.configs.maskformer import experiment_for

    params = experiment_for(preset, list(options.image_size), train_steps=options.steps, batch_size=options.batch)
    # The original's loss counts the padding as background (ignore_padding off).
    params.override({"task": {"losses": {"ignore_padding": False},
                              "train_data": {"input_path": train_data, "shuffle_buffer_size": 16}}})
    return params


def check_decay_groups(model: object, torch_groups: list[dict], optimizer: object) -> None:
    """The TF optimiser's decay exclusions and backbone multiplier cover the same tensors as detectron2's groups."""
    from mfport.converter.registry import map_to_tf_layout, tf_variable_path

    variables = {tf_variable_path(v.name): v for v in model.trainable_variables}
    shapes = {k: tuple(v.shape) for k, v in variables.items()}
    base = max(g["lr"] for g in torch_groups)
    for group in torch_groups:
        parameter = group["params"][0]
        for path in map_to_tf_layout({group["name"]: parameter.detach().numpy()}, shapes):
            variable = variables[path]
            decays = optimizer._do_use_weight_decay(variable.name)
            multiplier = optimizer.learning_rate_multiplier(variable)
            if decays != (group["weight_decay"] > 0) or not math.isclose(multiplier * base, group["lr"]):
                raise MfportError(f"recipe mismatch on {group['name']} -> {path}: PyTorch decay "
                                  f"{group['weight_decay']} lr {group['lr']}, TF decays={decays} lr x{multiplier}",
                                  parameter="preset")


def _synthetic_records(preset: MaskFormerPreset, root: Path, count: int) -> str:
    from mfport.tf_maskformer.dataloaders.coco_panoptic_tfrecords import write_synthetic_records
    from mfport.tf_maskformer.dataloaders.synthetic_coco_panoptic import STUFF

    if preset.labels.name not in STUFF:
        raise MfportError(f"no synthetic data for label set {preset.labels.name!r}; pass --train-data RECORDS "
                          f"(written by `mfport make-tfrecords`)", parameter="train_data")
    records = write_synthetic_records(root, {"train": (count, 0)}, dataset=preset.labels.name)
    return str(records / "train-*.tfrecord")


def run_training_curve(options: CurveOptions, progress: object | None = None) -> TrainingCurve:
    """Fine-tune both models `options.steps` steps and compare; `progress(description, fraction)` if given."""
    import tensorflow as tf
    import torch

    from mfport.converter.convert import assign_converted
    from mfport.converter.registry import tf_to_torch, tf_variable_path
    from mfport.core.architecture import resolve_preset
    from mfport.core.checkpoint_io import read_checkpoint
    from mfport.core.naming import original_live_state
    from mfport.tf_maskformer.tasks.panoptic_maskformer import PanopticMaskFormerTask
    from mfport.torch_reference.loading import load_state_strict
    from mfport.torch_reference.maskformer import MaskFormer

    report = progress or (lambda description, fraction: None)
    seconds: dict[str, float] = {}
    checkpoint = read_checkpoint(options.checkpoint)
    state = original_live_state(checkpoint).tensors
    preset = _without_dropout(resolve_preset(state, options.preset, checkpoint.path, None))
    torch_model = MaskFormer(preset).eval()
    load_state_strict(torch_model, state, checkpoint.path)

    with tempfile.TemporaryDirectory(prefix="mfport-curve-") as scratch:
        train_data = options.train_data or _synthetic_records(preset, Path(scratch), max(8, 2 * options.batch))
        params = _experiment(preset, options, train_data)
        task = PanopticMaskFormerTask(params.task)
        iterator = iter(task.build_inputs(params.task.train_data))
        batches = [tf.nest.map_structure(lambda t: t.numpy(), next(iterator)) for _ in range(options.steps)]
    schedule = params.trainer.optimizer_config
    warmup = schedule.warmup.detectron2_linear if schedule.warmup.type == "detectron2_linear" else None
    adamw = schedule.optimizer.maskformer_adamw
    recipe = Recipe(base_lr=schedule.learning_rate.polynomial.initial_learning_rate,
                    weight_decay=adamw.weight_decay_rate, backbone_multiplier=adamw.backbone_lr_multiplier,
                    clip_full_model_norm=adamw.global_clipnorm or 0.0,
                    poly_power=schedule.learning_rate.polynomial.power,
                    warmup_steps=warmup.warmup_steps if warmup else 0,
                    warmup_factor=warmup.warmup_factor if warmup else 1.0,
                    schedule_steps=schedule.learning_rate.polynomial.decay_steps)

    model = task.build_model()
    assign_converted(model, state, preset, checkpoint.path)
    optimizer = task.create_optimizer(schedule, params.runtime)
    optimizer._create_all_weights(model.trainable_variables)
    check_decay_groups(model, torch_parameter_groups(torch_model, recipe), optimizer)
    step = tf.function(lambda inputs: task.train_step(inputs, model, optimizer)["loss"])
    start = time.perf_counter()
    tf_losses, tf_rates = [], []
    for index, (images, labels) in enumerate(batches):
        tf_rates.append(float(optimizer._decayed_lr(tf.float32)))
        tf_losses.append(float(step((tf.constant(images), {k: tf.constant(v) for k, v in labels.items()}))))
        report("TensorFlow", (index + 1) / options.steps / 3)
    seconds["tensorflow_s"] = time.perf_counter() - start

    threads = torch.get_num_threads()
    other = threads if options.float64 else 1 if threads > 1 else 2
    start = time.perf_counter()
    torch_losses, torch_rates, trained = train_torch(torch_model, batches, recipe, threads)
    report("PyTorch", 2 / 3)
    seconds["torch_s"] = time.perf_counter() - start
    start = time.perf_counter()
    if options.float64:
        # The judge: float64 carries the same arithmetic ~9 digits further, so its distance from a float32 run is
        # that run's rounding error, amplified by training as much as training amplifies it.
        reference_losses, _, reference = train_torch(torch_model, batches, recipe, threads, float64=True)
        report("PyTorch, float64", 1.0)
        seconds["torch_float64_s"] = time.perf_counter() - start
    else:
        reference_losses, _, reference = train_torch(torch_model, batches, recipe, other)
        report(f"PyTorch, {other} thread(s)", 1.0)
    for index, (tf_rate, torch_rate) in enumerate(zip(tf_rates, torch_rates, strict=True)):
        if not math.isclose(tf_rate, torch_rate, rel_tol=1e-5, abs_tol=1e-12):
            raise MfportError(f"the schedules differ at step {index}: TF lr {tf_rate:.6g}, PyTorch {torch_rate:.6g}",
                              parameter="preset")

    rows = [CurveStep(i, tf_rates[i], torch_losses[i], tf_losses[i],
                      reference_losses[i] if options.float64 else None,
                      None if options.float64 else reference_losses[i]) for i in range(options.steps)]
    loss_tf, loss_own = max(r.tf_drift for r in rows), max(r.float32_drift for r in rows)
    loss_verdict = Verdict.PASS if loss_tf <= max(LOSS_FLOOR, FLOAT32_BAND_FACTOR * loss_own) else Verdict.FAIL
    tf_state = tf_to_torch({tf_variable_path(v.name): v.numpy() for v in model.variables}, preset)
    start_values = {n: p.detach().numpy() for n, p in torch_model.named_parameters()}
    parameters = []
    for name, value in trained.items():
        # Judged against the float64 run (its float32 PyTorch twin's drift the band), else against PyTorch's
        # float32 run (the repeat's drift the band).
        judge, own_run = (reference[name], value) if options.float64 else (value, reference[name])
        moved = float(np.abs(judge - start_values[name]).max())
        scale = moved if moved > 0 else 1.0
        tf_drift = float(np.abs(tf_state[name] - judge).max()) / scale
        own = float(np.abs(own_run - judge).max()) / scale
        bound = _parameter_bound(own, value, scale, options.steps)
        parameters.append(ParameterDrift(name, moved, tf_drift, own, bound,
                                         Verdict.PASS if tf_drift <= bound else Verdict.FAIL))
    return TrainingCurve(preset.name, options.steps, options.batch, tuple(options.image_size), recipe,
                         (threads, other), rows, parameters, loss_verdict, FLOAT32_BAND_FACTOR, seconds)
