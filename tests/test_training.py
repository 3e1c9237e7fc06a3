"""Fine-tuning: data in COCO panoptic format, records, parser, task, recipe optimiser, strategies, resume."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import mfport_command
from PIL import Image

from mfport.core.presets import PIXEL_MEAN, PIXEL_STD
from mfport.tf_maskformer.dataloaders.coco_panoptic_tfrecords import read_label_map, write_panoptic_tfrecords
from mfport.tf_maskformer.dataloaders.maskformer_input import Decoder, Parser
from mfport.tf_maskformer.dataloaders.synthetic_coco_panoptic import write_synthetic_coco_panoptic
from mfport.tf_maskformer.optimization import MaskFormerAdamW
from mfport.tf_maskformer.tasks.panoptic_maskformer import panoptic_prediction
from mfport.tf_maskformer.train import build_params, read_scalars

ROOT = Path(__file__).resolve().parents[1]


def run_mfport(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*mfport_command(), *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def converted_model_dir(seeded_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "model"
    result = run_mfport("convert", str(seeded_checkpoint("r50_6enc_coco_panoptic")), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    for split, count, seed in (("train", 10, 0), ("val", 4, 1)):
        path = write_synthetic_coco_panoptic(root, split, count, seed=seed)
        write_panoptic_tfrecords(root / f"{split}2017", path, root / "annotations" / f"panoptic_{split}2017",
                                 root / "records", prefix=split, num_shards=2)
    return root


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
    result = run_mfport("make-tfrecords", "--images", str(dataset / "train2017"), "--panoptic-json",
                            str(bad_json), "--panoptic-dir", str(tmp_path), "-o", str(tmp_path / "out"))
    assert result.returncode == 1 and str(bad_json) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_mfport("make-tfrecords", "--images", str(dataset / "train2017"), "--panoptic-json",
                            str(dataset / "annotations" / "panoptic_train2017.json"), "--panoptic-dir", str(tmp_path),
                            "-o", str(tmp_path / "out"))
    assert result.returncode == 1 and ".png: missing" in result.stderr and not (tmp_path / "out").exists()
    result = run_mfport("make-tfrecords", "--images", str(dataset / "train2017"), "--panoptic-json",
                            str(dataset / "annotations" / "panoptic_train2017.json"), "--panoptic-dir",
                            str(dataset / "annotations" / "panoptic_train2017"), "-o", str(dataset / "records"))
    assert result.returncode == 1 and "--force" in result.stderr


def test_recipe_optimizer_backbone_lr_and_decay_exclusions() -> None:
    """One AdamW step by hand (numpy): backbone lr x0.1, decoupled decay except on norms."""
    names = ["maskformer/backbone/res2/w", "maskformer/head/w", "maskformer/head/norm/gamma"]
    variables = [tf.Variable(np.full(3, 2.0, np.float32), name=n) for n in names]
    grads = [tf.constant([0.5, -1.0, 2.0])] * 3
    optimizer = MaskFormerAdamW(learning_rate=1e-2, weight_decay_rate=0.5, epsilon=1e-8, gradient_clip_norm=0.0,
                                exclude_from_weight_decay=["norm"], backbone_lr_multiplier=0.1)
    optimizer.apply_gradients(zip(grads, variables, strict=True))
    g = np.array([0.5, -1.0, 2.0])
    adam = (0.1 * g / (1 - 0.9)) / (np.sqrt(0.001 * g**2 / (1 - 0.999)) + 1e-8)  # bias-corrected first step
    for variable, lr, decay in ((variables[0], 1e-3, True), (variables[1], 1e-2, True), (variables[2], 1e-2, False)):
        expected = 2.0 - (lr * 0.5 * 2.0 if decay else 0.0) - lr * adam
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, err_msg=variable.name)


def test_experiments_yaml_and_overrides(tmp_path: Path) -> None:
    for name in ("maskformer_coco_panoptic_r50_6enc", "maskformer_ade20k_r50", "maskformer_synthetic_smoke"):
        params = build_params(name)
        assert params.trainer.optimizer_config.optimizer.type == "maskformer_adamw"
        assert params.trainer.optimizer_config.optimizer.maskformer_adamw.global_clipnorm == 0.01
    yaml = tmp_path / "override.yaml"
    yaml.write_text("task:\n  train_data:\n    global_batch_size: 8\ntrainer:\n  train_steps: 7\n")
    params = build_params("maskformer_ade20k_r50", [str(yaml)], "task.model.dropout=0.0")
    assert (params.task.train_data.global_batch_size, params.trainer.train_steps) == (8, 7)
    assert params.task.model.to_preset().dropout == 0.0 and params.task.model.to_preset().num_classes == 150
    with pytest.raises(KeyError):
        build_params("maskformer_ade20k_r50", params_override="task.no_such_field=1")


def test_panoptic_prediction_maps_segments_to_classes() -> None:
    result = {"segment_id": tf.constant([[1, 0, 2, 2]]), "category": tf.constant([[5, 9, 100, 100]]),
              "panoptic_seg": tf.constant([[[0, 1], [2, 2]]])}
    out = panoptic_prediction(result, num_classes=133)
    np.testing.assert_array_equal(out["category_mask"].numpy(), [[[133, 5], [100, 100]]])
    np.testing.assert_array_equal(out["instance_mask"].numpy(), [[[0, 1], [2, 2]]])


def test_multi_replica_loss_equals_one_device_and_bfloat16_runs(dataset: Path) -> None:
    """MirroredStrategy over 2 logical CPUs (batch 1 each) vs one device (batch 2): same loss, same gradient."""
    completed = subprocess.run([sys.executable, str(ROOT / "tests" / "replica_check.py"),
                                str(dataset / "records" / "train-*"), "--bfloat16"],
                               capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["mirrored_loss"] == pytest.approx(result["one_device_loss"], rel=1e-5)
    # The step is minus the all-reduced gradient: equal across strategies up to float summation order.
    assert result["max_weight_difference"] <= 1e-5 * result["max_weight_update"], result
    assert result["bfloat16_finite"] and result["bfloat16_loss"] == pytest.approx(result["one_device_loss"], rel=0.05)


def _latest_checkpoint_step(model_dir: Path) -> int:
    """Step of the latest checkpoint a resume would restore (Orbit numbers them by global step: ckpt-9,
    ckpt-17, ...). Read from the checkpoint state file, which is updated only after a checkpoint's files
    are complete: an .index file on disk may belong to a save that a kill interrupts."""
    latest = tf.train.latest_checkpoint(str(model_dir))
    return 0 if latest is None else int(latest.rsplit("-", 1)[1])


def test_finetune_falls_resumes_after_a_kill_and_evaluates(dataset: Path, tmp_path: Path,
                                                           converted_model_dir: Path) -> None:
    model_dir = tmp_path / "run"
    common = ["--model-dir", str(model_dir), "--train-data", str(dataset / "records" / "train-*"),
              "--val-data", str(dataset / "records" / "val-*"),
              "--params_override", "task.model.input_size=[96, 96],trainer.checkpoint_interval=8"]
    train = ["train", *common, "--init-from", str(converted_model_dir), "--steps", "24"]
    # A real interruption: SIGKILL as soon as the first checkpoint is on disk, in the middle of the run.
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen([*mfport_command(), *train], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600  # the first checkpoint at step >= 8
        while _latest_checkpoint_step(model_dir) < 8:
            assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
    saved = _latest_checkpoint_step(model_dir)
    assert saved < 24, "the run finished before it could be interrupted"
    killed_logs = tmp_path / "train_killed"  # the killed run's summaries, kept apart from the rerun's
    (model_dir / "train").rename(killed_logs)

    resumed = run_mfport(*train, "--loss-curve", str(tmp_path / "loss.png"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"ckpt-{saved}" in resumed.stdout + resumed.stderr  # restored, not re-initialised from --init-from
    assert (model_dir / "ckpt-24.index").is_file() and (tmp_path / "loss.png").stat().st_size > 10_000
    rerun = read_scalars(model_dir / "train", "total_loss")
    assert [step for step, _ in rerun] == list(range(saved + 1, 25))  # went on from the saved step
    losses = dict(read_scalars(killed_logs, "total_loss")) | dict(rerun)
    assert sorted(losses) == list(range(1, 25))
    values = np.array([losses[step] for step in sorted(losses)])
    assert values[-6:].mean() < 0.5 * values[:6].mean(), values
    evaluation = run_mfport("evaluate", *common, "--json")
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    logs = json.loads(evaluation.stdout.strip().splitlines()[-1])
    assert 0.0 <= logs["panoptic_pq"] <= 1.0 and 0.0 <= logs["semantic_miou"] <= 1.0
    assert np.isfinite(logs["total_loss"])
    png = Image.open(io.BytesIO((tmp_path / "loss.png").read_bytes()))
    assert png.size[0] > 600
