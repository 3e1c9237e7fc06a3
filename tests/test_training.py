"""Fine-tuning: data in COCO panoptic format, records, parser, task, recipe optimiser, strategies, resume."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
import yaml
from conftest import mfport_command, one_line_error, run_cli, without_xla_cache
from PIL import Image

from mfport.core.errors import MfportError
from mfport.core.presets import PIXEL_MEAN, PIXEL_STD
from mfport.tf_maskformer.dataloaders.coco_panoptic_tfrecords import read_label_map
from mfport.tf_maskformer.dataloaders.maskformer_input import Decoder, Parser
from mfport.tf_maskformer.optimization import MaskFormerAdamW
from mfport.tf_maskformer.summaries import read_scalars
from mfport.tf_maskformer.tasks.panoptic_maskformer import panoptic_prediction
from mfport.tf_maskformer.train import build_params

ROOT = Path(__file__).resolve().parents[1]


def run_mfport(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command in a process of its own (what a kill, or TF's device set-up, needs)."""
    return subprocess.run([*mfport_command(), *map(str, args)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


def test_label_map_is_generated_from_the_categories(dataset: Path) -> None:
    categories = json.loads((dataset / "annotations" / "panoptic_train2017.json").read_text())["categories"]
    label_map = read_label_map(dataset / "records")
    ids = sorted(c["id"] for c in categories)
    assert [e["category_id"] for e in label_map] == ids and [e["id"] for e in label_map] == list(range(len(ids)))
    assert len(label_map) == 133 and ids[:3] == [1, 2, 3] and ids[-1] == 200 and 12 not in ids  # COCO's gaps
    by_id = {c["id"]: c for c in categories}
    assert all(e["name"] == by_id[e["category_id"]]["name"] and e["isthing"] == by_id[e["category_id"]]["isthing"]
               for e in label_map)


def _examples(dataset: Path, split: str) -> list[bytes]:
    files = sorted(str(p) for p in (dataset / "records").glob(f"{split}-*.tfrecord"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def test_eval_parser_against_the_annotation(dataset: Path) -> None:
    """Labels, masks, padding and ignore regions equal what numpy reads from the PNG and JSON."""
    document = json.loads((dataset / "annotations" / "panoptic_train2017.json").read_text())
    contiguous = {e["category_id"]: e["id"] for e in read_label_map(dataset / "records")}
    annotations = {a["image_id"]: a for a in document["annotations"]}
    parser = Parser([96, 128], max_segments=12, ignore_label=133, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)
    checked_crowd = False
    for serialized in _examples(dataset, "train"):
        decoded = Decoder().decode(tf.constant(serialized))
        image, labels = parser.parse_fn(False)(decoded)
        annotation = annotations[int(decoded["source_id"].numpy())]
        png = np.asarray(Image.open(dataset / "annotations" / "panoptic_train2017" / annotation["file_name"]),
                         np.int64)
        ids = png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2]
        np.testing.assert_array_equal(decoded["segment_id_map"].numpy(), ids)
        # Scale to fit (the Model Garden's rule), image top-left, zero padding after normalisation.
        height, width = ids.shape
        scale = min(96 / height, 128 / width)
        valid_h, valid_w = round(height * scale), round(width * scale)
        expected_valid = np.zeros((96, 128), bool)
        expected_valid[:valid_h, :valid_w] = True
        np.testing.assert_array_equal(labels["pixel_valid"].numpy(), expected_valid)
        assert np.all(image.numpy()[~expected_valid] == 0)
        # Targets: the non-crowd segments, largest first, masks disjoint and inside the image.
        kept = [s for s in annotation["segments_info"] if not s["iscrowd"]]
        valid = labels["valid"].numpy()
        assert valid.sum() == len(kept) and not valid[len(kept):].any()
        assert sorted(labels["labels"].numpy()[valid].tolist()) == sorted(contiguous[s["category_id"]] for s in kept)
        masks = labels["masks"].numpy()[valid].astype(bool)
        areas = masks.sum((1, 2))
        assert (np.diff(areas) <= 0).all() and masks.sum(0).max() <= 1 and not masks[:, ~expected_valid].any()
        # Ground truth for PQ: crowd, void and padding pixels carry the ignore label, i.e. every labelled
        # pixel lies in a target of its class.
        category = labels["category_mask"].numpy()
        checked_crowd |= any(s["iscrowd"] for s in annotation["segments_info"])
        assert (category[masks.sum(0) == 0] == 133).all() and (category[~expected_valid] == 133).all()
        for label, segment_mask in zip(labels["labels"].numpy()[valid], masks, strict=True):
            assert (category[segment_mask] == label).all()
    assert checked_crowd


def test_max_segments_keeps_the_largest_and_counts_the_rest(dataset: Path) -> None:
    serialized = _examples(dataset, "train")[0]
    decoded = Decoder().decode(tf.constant(serialized))
    _, full = Parser([96, 96], 12, 133, PIXEL_MEAN, PIXEL_STD).parse_fn(False)(decoded)
    _, cut = Parser([96, 96], 2, 133, PIXEL_MEAN, PIXEL_STD).parse_fn(False)(decoded)
    total = int(full["valid"].numpy().sum())
    assert total > 2 and int(cut["valid"].numpy().sum()) == 2
    assert int(cut["num_dropped_segments"]) == total - 2
    np.testing.assert_array_equal(cut["masks"].numpy(), full["masks"].numpy()[:2])


def test_train_parser_augments_consistently(dataset: Path) -> None:
    """Flip/scale/crop move image and masks together: each target's pixels keep their class colour."""
    decoded = Decoder().decode(tf.constant(_examples(dataset, "train")[1]))
    parser = Parser([96, 96], 12, 133, PIXEL_MEAN, PIXEL_STD, aug_scale_min=0.5, aug_scale_max=2.0)
    tf.random.set_seed(3)
    for _ in range(3):
        image, labels = parser.parse_fn(True)(decoded)
        assert image.shape == (96, 96, 3) and labels["masks"].shape == (12, 96, 96)
        image = image.numpy() * np.asarray(PIXEL_STD) + np.asarray(PIXEL_MEAN)
        for mask in labels["masks"].numpy()[labels["valid"].numpy()].astype(bool):
            if mask.sum() > 40:  # the segment's mean colour is uniform-ish: textures vary < 60 per channel
                assert image[mask].std(0).max() < 60


def test_make_tfrecords_errors_name_the_file(dataset: Path, tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("not json")
    train_json = dataset / "annotations" / "panoptic_train2017.json"
    one_line_error(run_cli("make-tfrecords", "--images", dataset / "train2017", "--panoptic-json", bad_json,
                           "--panoptic-dir", tmp_path, "-o", tmp_path / "out"), str(bad_json))
    one_line_error(run_cli("make-tfrecords", "--images", dataset / "train2017", "--panoptic-json", train_json,
                           "--panoptic-dir", tmp_path, "-o", tmp_path / "out"), ".png: missing")
    assert not (tmp_path / "out").exists()
    one_line_error(run_cli("make-tfrecords", "--images", dataset / "train2017", "--panoptic-json", train_json,
                           "--panoptic-dir", dataset / "annotations" / "panoptic_train2017", "-o",
                           dataset / "records"), "--force")


def test_recipe_optimizer_is_torch_adamw_with_the_originals_param_groups() -> None:
    """Twelve steps against torch.optim.AdamW with detectron2's groups (backbone lr x0.1, no decay on norms), on
    gradients of 1e-7..1e-5 (what full-model clipping at 0.01 leaves per parameter), where Keras's epsilon-hat
    placement would be off by up to 25 % of a step; the schedule is the poly decay the recipe configures."""
    import torch

    rng = np.random.default_rng(0)
    names = ["maskformer/backbone/res2/w", "maskformer/head/w", "maskformer/head/norm/gamma"]
    start = [rng.normal(size=5).astype(np.float32) for _ in names]
    grads = [[(rng.normal(size=5) * 10.0 ** rng.uniform(-7, -5, size=5)).astype(np.float32) for _ in names]
             for _ in range(12)]
    schedule = tf_keras.optimizers.schedules.PolynomialDecay(1e-2, 12, 0.0, power=0.9)
    variables = [tf.Variable(v, name=n) for n, v in zip(names, start, strict=True)]
    optimizer = MaskFormerAdamW(learning_rate=schedule, weight_decay_rate=0.5, epsilon=1e-8, gradient_clip_norm=0.0,
                                exclude_from_weight_decay=["norm"], backbone_lr_multiplier=0.1)
    params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in start]
    reference = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-3, "weight_decay": 0.5},
                                   {"params": [params[1]], "lr": 1e-2, "weight_decay": 0.5},
                                   {"params": [params[2]], "lr": 1e-2, "weight_decay": 0.0}], eps=1e-8)
    poly = torch.optim.lr_scheduler.LambdaLR(reference, lambda step: (1 - step / 12) ** 0.9)  # WarmupPolyLR, no warm-up
    for step_grads in grads:
        optimizer.apply_gradients(zip([tf.constant(g) for g in step_grads], variables, strict=True))
        for param, g in zip(params, step_grads, strict=True):
            param.grad = torch.from_numpy(g)
        reference.step()
        poly.step()
    for variable, param, first in zip(variables, params, start, strict=True):
        moved = np.abs(param.detach().numpy() - first).max()
        # float32 rounding of the two formulas: a few ulp of the weights, far below the ~1e-3 .. 1e-2 moved.
        np.testing.assert_allclose(variable.numpy(), param.detach().numpy(), rtol=0, atol=1e-6, err_msg=variable.name)
        assert moved > 1e-3


def test_warmup_poly_schedule_is_detectron2s() -> None:
    """The Swin recipe's schedule from the optimizer factory against detectron2's WarmupPolyLR formula."""
    from official.modeling.optimization import optimizer_factory

    import mfport.tf_maskformer.optimization  # noqa: F401  (registers the warm-up)

    params = build_params("maskformer_swin_b_ade20k")
    config = params.trainer.optimizer_config
    schedule = optimizer_factory.OptimizerFactory(config).build_learning_rate()
    base, warmup, factor, total = 6e-5, 1500, 1e-6, 160_000
    for step in (0, 1, 700, 1499, 1500, 80_000, 150_000):  # float32 steps: 1 - step / total loses bits at the end
        alpha = step / warmup
        ramp = factor * (1 - alpha) + alpha if step < warmup else 1.0
        expected = base * ramp * (1 - step / total) ** 0.9
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-13), step


def test_steps_flag_sets_the_schedule_length_too(tmp_path: Path) -> None:
    """--steps is detectron2's MAX_ITER: the run's length and the poly schedule's. A schedule that ends before the
    run (trainer.train_steps alone) trains the remaining steps at lr 0, and the driver says so."""
    from mfport.cli import _training_params, build_parser
    from mfport.tf_maskformer.train import schedule_warning

    args = build_parser().parse_args(["train", "--model-dir", str(tmp_path), "--steps", "300"])
    params = _training_params(args)
    assert params.trainer.train_steps == 300
    assert params.trainer.optimizer_config.learning_rate.polynomial.decay_steps == 300
    assert schedule_warning(params) is None
    short = build_params("maskformer_synthetic_smoke", params_override="trainer.train_steps=300")
    assert "reaches 0 at step 40 of 300" in schedule_warning(short)


def test_experiments_yaml_and_overrides(tmp_path: Path) -> None:
    from mfport.core.presets import PRESETS

    for name in [f"maskformer_{preset}" for preset in PRESETS] + ["maskformer_synthetic_smoke",
                                                                   "maskformer_synthetic_smoke_swin_t"]:
        params = build_params(name)
        assert params.trainer.optimizer_config.optimizer.type == "maskformer_adamw"
        assert params.trainer.optimizer_config.optimizer.maskformer_adamw.global_clipnorm == 0.01
    swin = build_params("maskformer_swin_b_ade20k")
    adamw = swin.trainer.optimizer_config.optimizer.maskformer_adamw
    assert (adamw.weight_decay_rate, adamw.backbone_lr_multiplier) == (0.01, 1.0)
    assert swin.trainer.optimizer_config.learning_rate.polynomial.initial_learning_rate == 6e-5
    assert swin.trainer.optimizer_config.warmup.detectron2_linear.warmup_steps == 1500
    assert "relative_position_bias_table" in adamw.exclude_from_weight_decay
    assert swin.task.model.backbone.swin.window_size == 12 and swin.task.model.input_size == [640, 640]
    yaml_path = tmp_path / "override.yaml"
    yaml_path.write_text("task:\n  train_data:\n    global_batch_size: 8\ntrainer:\n  train_steps: 7\n")
    params = build_params("maskformer_r50_ade20k", [str(yaml_path)], "task.model.dropout=0.0")
    assert (params.task.train_data.global_batch_size, params.trainer.train_steps) == (8, 7)
    assert params.task.model.to_preset().dropout == 0.0 and params.task.model.to_preset().num_classes == 150
    with pytest.raises(MfportError, match="no_such_field"):
        build_params("maskformer_r50_ade20k", params_override="task.no_such_field=1")


def test_panoptic_prediction_maps_segments_to_classes() -> None:
    result = {"segment_id": tf.constant([[1, 0, 2, 2]]), "category": tf.constant([[5, 9, 100, 100]]),
              "panoptic_seg": tf.constant([[[0, 1], [2, 2]]])}
    out = panoptic_prediction(result, num_classes=133)
    np.testing.assert_array_equal(out["category_mask"].numpy(), [[[133, 5], [100, 100]]])
    np.testing.assert_array_equal(out["instance_mask"].numpy(), [[[0, 1], [2, 2]]])


@pytest.mark.slow
def test_multi_replica_loss_equals_one_device_and_bfloat16_runs(dataset: Path, tiny) -> None:
    """MirroredStrategy over 2 logical CPUs (batch 1 each) vs one device (batch 2): same loss, same gradient."""
    _, config = tiny
    completed = subprocess.run([sys.executable, str(ROOT / "tests" / "replica_check.py"),
                                str(dataset / "records" / "train-*"), str(config), "--bfloat16"],
                               capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    # The two strategies sum the same terms in another order: float32 summation error, ~1e-7 relative.
    assert result["mirrored_loss"] == pytest.approx(result["one_device_loss"], rel=1e-5)
    # The step is minus the all-reduced gradient: equal across strategies up to float summation order.
    assert result["max_weight_difference"] <= 1e-5 * result["max_weight_update"], result
    # bfloat16 keeps 8 significant bits (2^-8 = 0.4 % per rounding); the loss sums many such terms: ~0.2 % seen,
    # 5 % tells a bfloat16 run from a broken one (a loss off by a factor, NaN).
    assert result["bfloat16_finite"] and result["bfloat16_loss"] == pytest.approx(result["one_device_loss"], rel=0.05)


def _latest_checkpoint_step(model_dir: Path) -> int:
    """Step of the latest checkpoint a resume would restore (Orbit numbers them by global step: ckpt-9,
    ckpt-17, ...). Read from the checkpoint state file, which is updated only after a checkpoint's files
    are complete: an .index file on disk may belong to a save that a kill interrupts."""
    latest = tf.train.latest_checkpoint(str(model_dir))
    return 0 if latest is None else int(latest.rsplit("-", 1)[1])


@pytest.mark.slow
def test_finetune_falls_resumes_after_a_kill_and_evaluates(dataset: Path, tmp_path: Path, tiny) -> None:
    """The driver as a user runs it (XLA train step, the in-graph matcher): params.yaml, a SIGKILL mid-way, the
    rerun restoring the last checkpoint and logging exactly the steps after it, the loss falling, evaluation.
    The first run takes its runtime from a YAML file alone (MirroredStrategy over two logical CPUs, no flag)."""
    converted, config = tiny
    model_dir = tmp_path / "run"
    common = ["--model-dir", str(model_dir), "--config_file", str(config),
              "--train-data", str(dataset / "records" / "train-*"), "--val-data", str(dataset / "records" / "val-*"),
              "--params_override", "trainer.checkpoint_interval=8"]
    train = ["train", *common, "--init-from", str(converted), "--steps", "24"]
    runtime = tmp_path / "runtime.yaml"
    runtime.write_text("runtime:\n  distribution_strategy: mirrored\n  num_gpus: 0\n  num_cpu_replicas: 2\n")
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen([*mfport_command(), *train, "--config_file", str(runtime)], stdout=log,
                                  stderr=subprocess.STDOUT,
                                  env=without_xla_cache(dict(os.environ)))  # a kill must not cut a cache file
        deadline = time.monotonic() + 600  # the first checkpoint at step >= 8
        while _latest_checkpoint_step(model_dir) < 8:
            assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
    saved = _latest_checkpoint_step(model_dir)
    assert saved < 24, "the run finished before it could be interrupted"
    assert "distribution: MirroredStrategy, 2 replica(s) in sync" in (tmp_path / "killed.log").read_text()
    params = yaml.safe_load((model_dir / "params.yaml").read_text())  # the resolved config, as the Model Garden's
    assert params["task"]["model"]["backbone"]["type"] == "swin" and params["trainer"]["train_steps"] == 24
    assert params["task"]["init_checkpoint"] == str(converted)
    assert params["runtime"]["num_cpu_replicas"] == 2 and params["runtime"]["distribution_strategy"] == "mirrored"
    killed_logs = tmp_path / "train_killed"  # the killed run's summaries, kept apart from the rerun's
    (model_dir / "train").rename(killed_logs)

    resumed = run_mfport(*train, "--loss-curve", tmp_path / "loss.png")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"ckpt-{saved}" in resumed.stdout + resumed.stderr  # restored, not re-initialised from --init-from
    assert (model_dir / "ckpt-24.index").is_file() and (tmp_path / "loss.png").stat().st_size > 10_000
    rerun = read_scalars(model_dir / "train", "total_loss")
    assert [step for step, _ in rerun] == list(range(saved + 1, 25))  # went on from the saved step
    losses = dict(read_scalars(killed_logs, "total_loss")) | dict(rerun)
    assert sorted(losses) == list(range(1, 25))
    values = np.array([losses[step] for step in sorted(losses)])
    # The loss falls to a plateau (~30 of a first loss of ~92 here). The last six steps' mean over the first six's
    # was 0.482 in two runs on this VM, and 0.501 once with the resumed run on two replicas: kernels move it by a
    # few per cent. A run that does not learn stays near 1; 0.6 tells the two apart on any CPU.
    assert values[-6:].mean() < 0.6 * values[:6].mean(), values
    evaluation = run_cli("evaluate", *common, "--json")  # in this process: it needs no device set-up of its own
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    logs = json.loads(evaluation.stdout.strip().splitlines()[-1])
    assert 0.0 <= logs["panoptic_pq"] <= 1.0 and 0.0 <= logs["semantic_miou"] <= 1.0
    assert np.isfinite(logs["total_loss"])
    png = Image.open(io.BytesIO((tmp_path / "loss.png").read_bytes()))
    assert png.size[0] > 600
    # train --evaluate on a finished run evaluates (Orbit's loop would not) and --require checks that evaluation:
    # mIoU can never exceed 1, so this must fail, naming the value the evaluation gave.
    required = run_cli(*train, "--evaluate", "--require", "semantic_miou=1.01")  # no device set-up of its own
    assert required.returncode == 1, required.stderr[-3000:]
    gave = re.search(r"--require semantic_miou=1.01: the evaluation gave ([0-9.]+)$", required.stderr.strip())
    assert gave, required.stderr[-3000:]
    assert float(gave.group(1)) == pytest.approx(logs["semantic_miou"], abs=1e-3)  # the same checkpoint and data

