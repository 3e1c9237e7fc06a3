"""`mfport`: MaskFormer from PyTorch to TensorFlow, proven tensor by tensor.

Exit codes: 0 success; 1 bad input (unreadable, unsafe or mismatched checkpoint, existing output
without --force, a missing optional dependency) or a failed parity check; 2 bad command-line usage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

# TensorFlow's C++ start-up chatter (CUDA probing, CPU features) would bury one-line errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# tf.keras is tf_keras (what mfport and the Model Garden use): `import tensorflow` then skips importing
# Keras 3, ~2 s of every command's start-up.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

EXIT_OK, EXIT_INPUT_ERROR, EXIT_USAGE = 0, 1, 2

# Library parameter names -> the flags that set them (a library error names the parameter).
FLAGS = {"preset": "--preset", "naming": "--naming", "dataset": "--dataset", "class_names": "--class-names",
         "force": "--force", "format": "--format", "output": "--output", "allow_nonfinite": "--allow-nonfinite",
         "experiment": "--experiment", "config_file": "--config_file", "params_override": "--params_override",
         "model_dir": "--model-dir", "init_checkpoint": "--init-from", "images": "--images",
         "task.train_data.input_path": "--train-data", "task.validation_data.input_path": "--val-data",
         "attention": "--attention", "image_size": "--image-size"}


def console():  # noqa: ANN201 - rich is imported lazily to keep `mfport --help` fast
    """A rich console; when stdout is not a terminal (CI logs, files) tables get 200 columns instead of
    rich's default 80, so tap names and paths are not cut."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=int(os.environ.get("COLUMNS", 200)))


def cmd_presets(args: argparse.Namespace) -> int:
    from rich.table import Table

    from mfport.core.presets import PRESETS

    if args.json:
        print(json.dumps({name: p.to_dict() for name, p in PRESETS.items()}, indent=1))
        return EXIT_OK
    table = Table(title=f"MaskFormer presets: the {len(PRESETS)} released models (mfport --preset NAME)")
    for column in ("data set", "preset", "backbone", "pixel decoder", "classes", "result", "params",
                   "original config"):
        table.add_column(column)
    for dataset in dict.fromkeys(p.labels.name for p in PRESETS.values()):
        for name, p in PRESETS.items():
            if p.labels.name != dataset:
                continue
            decoder = "BasePixelDecoder" if p.pixel_decoder == "base" else f"+{p.pixel_decoder_enc_layers} Enc"
            params = f"{p.published_params_m:.2f}M" if p.published_params_m else "-"
            table.add_row(dataset, name, p.backbone.label, decoder, str(p.num_classes), p.published_result or "-",
                          params, p.original_config)
        table.add_section()
    console().print(table)
    return EXIT_OK


def cmd_init_checkpoint(args: argparse.Namespace) -> int:
    from mfport.core.errors import require_torch
    from mfport.core.presets import get_preset

    require_torch("mfport init-checkpoint (the seeded weights are calibrated on the PyTorch reference)")
    from mfport.torch_reference.seeded_init import write_seeded_checkpoint

    preset = get_preset(args.preset)
    out = Path(args.output)
    if out.exists() and not args.force:
        raise UserError(f"{out}: exists; pass --force to overwrite")
    out_console = console()
    with out_console.status(f"seeding {preset.name} (seed {args.seed}, {args.attention} attention)"):
        state = write_seeded_checkpoint(preset, args.seed, out, attention=args.attention)
    out_console.print(f"wrote {out} ({len(state)} tensors, {out.stat().st_size / 2**20:.1f} MiB, "
                      f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()[:16]})")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from rich.table import Table

    from mfport.core.inspect import inspect_checkpoint

    info = inspect_checkpoint(args.checkpoint, dataset=args.dataset, class_names=args.class_names)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
        return EXIT_OK
    table = Table(title=str(info.path), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for row in info.rows():
        table.add_row(*row)
    out = console()
    out.print(table)
    if info.nonfinite:
        bad = Table(title="non-finite values (convert refuses these without --allow-nonfinite)")
        bad.add_column("tensor")
        bad.add_column("NaN/inf count", justify="right")
        for key, count in info.nonfinite.items():
            bad.add_row(key, str(count))
        out.print(bad)
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from mfport.converter.convert import convert_to_tf, convert_to_torch
    from mfport.core.architecture import labels_for

    if args.to == "torch":
        state = convert_to_torch(args.source, args.output, force=args.force, naming=args.naming)
        summary = {"output": args.output, "direction": "tf->torch", "tensors": len(state), "naming": args.naming}
        print(json.dumps(summary) if args.json else f"wrote {args.output} ({len(state)} tensors, {args.naming} naming)")
        return EXIT_OK
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    steps = ["read", "build", "map", "write", "saved model"]
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  disable=args.json or not sys.stdout.isatty(), transient=True) as progress:
        task = progress.add_task(f"converting {args.source}", total=len(steps))

        def advance(step: str) -> None:
            progress.update(task, completed=steps.index(step), description=f"{step}: {args.source}")

        with quiet_tensorflow():
            result = convert_to_tf(args.source, args.output, preset=args.preset, formats=args.format or
                                   ["tf-checkpoint"], saved_model=args.saved_model, keep_dtype=args.keep_dtype,
                                   force=args.force, allow_nonfinite=args.allow_nonfinite,
                                   labels=labels_for(args.dataset, args.class_names), progress=advance)
    summary = {"output": result.output, "preset": result.preset.name, "architecture": result.preset.architecture_label,
               "source_format": result.source_format, "naming": result.naming_era, "tensors": result.tensors,
               "tensor_bytes": result.tensor_bytes, "cast_to_float32": result.cast_to_float32,
               "removed_stale_partials": result.removed_partials, "dropped": result.dropped,
               "timings_s": {k: round(v, 4) for k, v in result.timings_s.items()}}
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    _print_conversion_table(result)
    return EXIT_OK


class quiet_tensorflow:
    """TensorFlow's Python warnings off (a checkpoint write logs one "non-serializable objects" line per Keras
    object it cannot describe, eight per conversion) while a command's own output is what matters."""

    def __enter__(self) -> None:
        import logging

        self.loggers = [logging.getLogger(name) for name in ("tensorflow", "absl")]
        self.levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for logger, level in zip(self.loggers, self.levels, strict=True):
            logger.setLevel(level)


def _print_conversion_table(result: object) -> None:
    from collections import Counter

    from rich.table import Table

    table = Table(title=f"{result.output}: {result.tensors} tensors from {result.source_format} "
                        f"({result.naming_era}) as {result.preset.name} ({result.preset.architecture_label})")
    for column in ("family", "tensors", "TF variables", "transforms"):
        table.add_column(column)
    by_family: dict[str, list] = {}
    for record in result.records:
        by_family.setdefault(record.family, []).append(record)
    for family, records in by_family.items():
        transforms = Counter(r.transform for r in records)
        table.add_row(family, str(len(records)), str(sum(len(r.tf_variables) for r in records)),
                      ", ".join(f"{name} x{count}" for name, count in transforms.most_common()))
    out = console()
    out.print(table)
    notes = ["every source tensor consumed once, every TF variable assigned once"]
    if result.cast_to_float32:
        notes.append("half-precision source cast to float32 (--keep-dtype keeps it)")
    if result.dropped:
        notes.append(f"dropped {len(result.dropped)} source tensor(s) with no counterpart "
                     f"({', '.join(sorted({k.rsplit('.', 1)[0] for k in result.dropped})[:2])}, ...)")
    if result.removed_partials:
        notes.append(f"removed {len(result.removed_partials)} stale partial output(s) of killed conversions")
    out.print("; ".join(notes) + ". " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings_s.items()))


def cmd_predict(args: argparse.Namespace) -> int:
    from rich.table import Table

    from mfport.tf_maskformer.serving.predict import predict_images

    predictions = predict_images(args.model, args.images, args.output,
                                 object_mask_threshold=args.object_mask_threshold,
                                 overlap_threshold=args.overlap_threshold, resize=not args.no_resize,
                                 min_size=args.min_size, max_size=args.max_size)
    table = Table(title=f"predictions in {args.output}")
    for column in ("image", "network input", "semantic classes", "panoptic segments", "files"):
        table.add_column(column)
    for p in predictions:
        table.add_row(p.image, "x".join(map(str, p.network_size)), str(len(set(p.semantic_map.ravel().tolist()))),
                      str(len(p.segments)), ", ".join(p.outputs))
    console().print(table)
    return EXIT_OK


def cmd_sample_images(args: argparse.Namespace) -> int:
    from PIL import Image

    from mfport.core.checkpoint_io import atomic_write
    from mfport.core.synthetic_images import synthetic_images

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    images = synthetic_images(args.seed, args.count, *args.size)
    for index, image in enumerate(images):
        path = out / f"sample_{args.seed}_{index}.png"
        atomic_write(path, lambda tmp, im=image: Image.fromarray(im).save(tmp, format="PNG"))
        print(path)
    return EXIT_OK


def cmd_parity(args: argparse.Namespace) -> int:
    from mfport.core.errors import require_torch

    require_torch("mfport parity (it runs the PyTorch reference)")
    from mfport.parity.run import ParityOptions, run_parity_command

    options = ParityOptions(
        checkpoint=args.checkpoint, preset=args.preset, dataset=args.dataset, class_names=args.class_names,
        image_size=tuple(args.image_size), batch=args.batch, seed=args.seed, images=args.images, mode=args.mode,
        profile=args.profile, report_dir=args.report_dir, gradients=not args.no_gradients, float64=args.float64,
        float64_gradients=args.float64_gradients)
    result, paths = run_parity_command(options, console())
    if args.json:
        print(json.dumps({"passed": result.passed, "first_divergence": result.first_divergence,
                          "reports": {k: str(v) for k, v in paths.items()}}))
    return EXIT_OK if result.passed else EXIT_INPUT_ERROR


def cmd_training_parity(args: argparse.Namespace) -> int:
    from mfport.core.errors import require_torch

    require_torch("mfport training-parity (it trains the PyTorch reference)")
    from rich.progress import Progress

    from mfport.parity.report import render_curve_console, write_curve_reports
    from mfport.parity.training_curve import CurveOptions, run_training_curve

    options = CurveOptions(checkpoint=args.checkpoint, preset=args.preset, train_data=args.train_data,
                           steps=args.steps, batch=args.batch, image_size=tuple(args.image_size),
                           report_dir=args.report_dir, float64=args.float64)
    with Progress(console=console(), transient=True) as bar:
        task = bar.add_task("fine-tuning both models", total=1.0)
        curve = run_training_curve(options, lambda what, done: bar.update(task, completed=done,
                                                                          description=f"fine-tuning: {what}"))
    paths = write_curve_reports(curve, args.report_dir or f"reports/training_parity_{curve.preset}")
    render_curve_console(curve, console())
    console().print(f"reports: {', '.join(str(p) for p in paths.values())}")
    return EXIT_OK if curve.passed else EXIT_INPUT_ERROR


def cmd_synthetic_data(args: argparse.Namespace) -> int:
    from mfport.tf_maskformer.dataloaders.synthetic_coco_panoptic import write_synthetic_coco_panoptic

    for split, count, seed in (("train", args.train, args.seed), ("val", args.val, args.seed + 1)):
        if count:
            path = write_synthetic_coco_panoptic(args.output, split, count, seed=seed, dataset=args.dataset)
            print(f"{path} ({count} images)")
    return EXIT_OK


def cmd_make_tfrecords(args: argparse.Namespace) -> int:
    from mfport.tf_maskformer.dataloaders.coco_panoptic_tfrecords import write_panoptic_tfrecords

    shards = write_panoptic_tfrecords(args.images, args.panoptic_json, args.panoptic_dir, args.output,
                                      prefix=args.prefix, num_shards=args.shards, force=args.force,
                                      progress=sys.stdout.isatty())
    print(f"{len(shards)} shards: {shards[0].parent}/{args.prefix}-*.tfrecord (+ label_map.json)")
    return EXIT_OK


def _training_params(args: argparse.Namespace) -> object:
    """The experiment with the convenience flags applied (each is a params override: params.yaml says it)."""
    from mfport.tf_maskformer import train

    overrides: dict = {"task": {}, "runtime": {}, "trainer": {}}
    if getattr(args, "init_from", None):
        overrides["task"]["init_checkpoint"] = args.init_from
    if args.train_data:
        overrides["task"]["train_data"] = {"input_path": args.train_data}
    if args.val_data:
        overrides["task"]["validation_data"] = {"input_path": args.val_data}
    if getattr(args, "steps", None):
        # detectron2's MAX_ITER is the run's length and the poly schedule's: the lr reaches 0 at the last step.
        overrides["trainer"]["train_steps"] = args.steps
        overrides["trainer"]["optimizer_config"] = {"learning_rate": {"polynomial": {"decay_steps": args.steps}}}
    if getattr(args, "mixed_bfloat16", False):
        overrides["runtime"]["mixed_precision_dtype"] = "bfloat16"
    if args.tpu:
        overrides["runtime"].update({"distribution_strategy": "tpu", "tpu": args.tpu})
    if args.cpu_replicas:
        overrides["runtime"].update({"distribution_strategy": "mirrored", "num_gpus": 0,
                                     "num_cpu_replicas": args.cpu_replicas})
    return train.build_params(args.experiment, args.config_file, args.params_override,
                              {k: v for k, v in overrides.items() if v})


def cmd_train(args: argparse.Namespace) -> int:
    from mfport.tf_maskformer import train

    params = _training_params(args)
    required = _requirements(args.require or [])
    if required and not args.evaluate:
        raise UserError("--require needs --evaluate (it checks the evaluation's metrics)")
    logs = train.run(params, args.model_dir, mode="train_and_eval" if args.evaluate else "train")
    if args.loss_curve:
        from mfport.tf_maskformer.summaries import plot_loss_curve

        png = plot_loss_curve(args.model_dir, args.loss_curve, f"fine-tune: {args.experiment}")
        print(f"loss curve: {png}")
    if logs:
        print(json.dumps(logs, indent=1))
    for metric, minimum in required.items():
        if metric not in logs:
            raise UserError(f"--require {metric}: the evaluation has no such metric ({', '.join(sorted(logs))})")
        if logs[metric] < minimum:
            raise UserError(f"--require {metric}={minimum:g}: the evaluation gave {logs[metric]:.4f}")
    return EXIT_OK


def _requirements(items: list[str]) -> dict[str, float]:
    required = {}
    for item in items:
        metric, _, value = item.partition("=")
        try:
            required[metric] = float(value)
        except ValueError:
            raise UserError(f"--require {item!r}: expected METRIC=MINIMUM, e.g. panoptic_pq=0.8") from None
    return required


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.table import Table

    from mfport.tf_maskformer import train

    logs = train.run(_training_params(args), args.model_dir, mode="eval")
    if args.json:  # one line, the last: Orbit prints its own progress to stdout before it
        print(json.dumps(logs))
        return EXIT_OK
    table = Table(title=f"evaluation of {args.model_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(logs.items()):
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console().print(table)
    return EXIT_OK


class UserError(Exception):
    """A CLI-level mistake (not the library's), printed as one line with exit code 1."""


def _add_label_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="class names of a released data set (e.g. cityscapes_19) for a checkpoint "
                                     "whose architecture matches no preset, or to relabel one")
    p.add_argument("--class-names", help="a JSON list of class names (or label_map.json) instead of --dataset")


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", default="maskformer_synthetic_smoke", help="a registered experiment")
    p.add_argument("--config_file", action="append", help="YAML overriding the experiment (repeatable)")
    p.add_argument("--params_override", help="e.g. 'task.train_data.global_batch_size=8,trainer.train_steps=100'")
    p.add_argument("--model-dir", required=True, help="checkpoints, summaries, params.yaml (a rerun resumes)")
    p.add_argument("--train-data", help="TFRecord glob (task.train_data.input_path)")
    p.add_argument("--val-data", help="TFRecord glob (task.validation_data.input_path)")
    p.add_argument("--tpu", help="TPU address: runtime.distribution_strategy=tpu, runtime.tpu=ADDRESS")
    p.add_argument("--cpu-replicas", type=int, help="MirroredStrategy over N logical CPUs (runtime.num_cpu_replicas)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfport", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="on errors, print the full report")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the released MaskFormer models mfport knows")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("init-checkpoint", help="write a seeded original-format (model-zoo .pkl) checkpoint")
    p.add_argument("--preset", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attention", choices=["default", "sharp"], default="default",
                   help="sharp: q/k projections 3x a 1/sqrt(fan_in) scale, like some trained checkpoints")
    p.add_argument("-o", "--output", required=True, help="output .pkl path")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_init_checkpoint)

    p = sub.add_parser("inspect", help="summarise a checkpoint (.pkl, .pth/.pt, .safetensors, Hugging Face)")
    p.add_argument("checkpoint")
    _add_label_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("parity", help="compare the PyTorch reference and the converted TF model tap by tap")
    p.add_argument("checkpoint")
    p.add_argument("--preset")
    _add_label_flags(p)
    p.add_argument("--image-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the generated images and targets")
    p.add_argument("--images", nargs="+", help="PNG/JPEG files of one size instead of generated images")
    p.add_argument("--mode", choices=["cumulative", "isolated", "both"], default="both")
    p.add_argument("--profile", choices=["fp32", "bf16"], default="fp32",
                   help="tolerance profile; bf16 runs the TF model under mixed_bfloat16 (TPU-style)")
    p.add_argument("--report-dir", help="default reports/parity_<preset>")
    p.add_argument("--no-gradients", action="store_true", help="skip matcher, loss and gradient parity")
    p.add_argument("--float64", action=argparse.BooleanOptionalAction, default=True,
                   help="judge cumulative rows against a float64 run of the reference (default on)")
    p.add_argument("--float64-gradients", action=argparse.BooleanOptionalAction, default=None,
                   help="also backpropagate the float64 reference (default: with --float64)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_parity)

    p = sub.add_parser("training-parity", help="fine-tune the PyTorch reference and the TF model side by side, "
                                               "step by step, from one checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--preset")
    p.add_argument("--train-data", help="TFRecord glob (default: a synthetic set in the checkpoint's label set)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--image-size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    p.add_argument("--report-dir", help="default reports/training_parity_<preset>")
    p.add_argument("--float64", action=argparse.BooleanOptionalAction, default=True,
                   help="judge both float32 runs against a float64 run of the reference (default on); off: against "
                        "PyTorch's float32 run repeated on another thread count")
    p.set_defaults(func=cmd_training_parity)

    p = sub.add_parser("sample-images", help="write seeded real-looking PNG images (demo and test inputs)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=2)
    p.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    p.set_defaults(func=cmd_sample_images)

    p = sub.add_parser("convert", help="PyTorch checkpoint -> TF model directory (or back with --to torch)")
    p.add_argument("source", help="checkpoint (.pkl/.pth/.pt/.safetensors/HF .bin), or a model directory "
                                  "with --to torch")
    p.add_argument("-o", "--output", required=True, help="output directory (or checkpoint file with --to torch)")
    p.add_argument("--to", choices=["tf", "torch"], default="tf")
    p.add_argument("--naming", choices=["original", "huggingface"], default="original",
                   help="with --to torch: the original's names, or transformers' MaskFormer names")
    p.add_argument("--preset", help="override the preset detected from the keys")
    _add_label_flags(p)
    p.add_argument("--format", action="append", choices=["tf-checkpoint", "keras"],
                   help="output formats (repeatable; default tf-checkpoint)")
    p.add_argument("--saved-model", action="store_true", help="also export the serving SavedModel")
    p.add_argument("--keep-dtype", action="store_true", help="keep fp16/bf16 sources as they are")
    p.add_argument("--allow-nonfinite", action="store_true", help="convert weights holding NaN/inf")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("predict", help="segment image files with a converted model; write overlays and maps")
    p.add_argument("images", nargs="+", help="PNG/JPEG files")
    p.add_argument("--model", required=True, help="a directory written by mfport convert")
    p.add_argument("-o", "--output", default="out/predict")
    p.add_argument("--object-mask-threshold", type=float, help="override the preset's (panoptic)")
    p.add_argument("--overlap-threshold", type=float, help="override the preset's (panoptic)")
    p.add_argument("--no-resize", action="store_true",
                   help="run the network at the image's own size (default: the preset's shortest-edge resize)")
    p.add_argument("--min-size", type=int, help="shortest edge the network sees (default: the preset's test size)")
    p.add_argument("--max-size", type=int, help="longest edge limit (default: the preset's)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("synthetic-data", help="write a small synthetic data set in COCO panoptic format")
    p.add_argument("-o", "--output", required=True, help="root: {train,val}2017/, annotations/")
    p.add_argument("--train", type=int, default=16, help="training images")
    p.add_argument("--val", type=int, default=4, help="validation images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="coco_panoptic_133", choices=["coco_panoptic_133", "ade20k_150"])
    p.set_defaults(func=cmd_synthetic_data)

    p = sub.add_parser("make-tfrecords", help="COCO panoptic (JSON + PNGs + images) -> sharded TFRecords")
    p.add_argument("--images", required=True, help="image directory (e.g. train2017/)")
    p.add_argument("--panoptic-json", required=True, help="e.g. annotations/panoptic_train2017.json")
    p.add_argument("--panoptic-dir", required=True, help="e.g. annotations/panoptic_train2017/")
    p.add_argument("-o", "--output", required=True, help="output directory (label_map.json lands there too)")
    p.add_argument("--prefix", default="train")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--force", action="store_true", help="replace existing PREFIX-*.tfrecord")
    p.set_defaults(func=cmd_make_tfrecords)

    p = sub.add_parser("train", help="fine-tune on the Model Garden trainer (resumes from --model-dir)")
    _add_training_flags(p)
    p.add_argument("--init-from", help="a directory written by mfport convert (task.init_checkpoint)")
    p.add_argument("--steps", type=int, help="trainer.train_steps and the poly schedule's decay_steps (MAX_ITER)")
    p.add_argument("--mixed-bfloat16", action="store_true", help="runtime.mixed_precision_dtype=bfloat16")
    p.add_argument("--evaluate", action="store_true", help="train_and_eval instead of train")
    p.add_argument("--loss-curve", help="write the loss curve PNG here at the end")
    p.add_argument("--require", action="append", metavar="METRIC=MIN",
                   help="fail (exit 1) unless the final evaluation reaches it, e.g. panoptic_pq=0.8 (repeatable)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="panoptic quality and mIoU of the newest checkpoint in --model-dir")
    _add_training_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
    return parser


def error_line(err: Exception) -> str:
    """The one line a user sees: a library error's parameter shown as the flag that sets it."""
    parameter = getattr(err, "parameter", None)
    flag = FLAGS.get(parameter, parameter and f"--{parameter.replace('_', '-')}") if parameter else None
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"error: {flag}: {message}" if flag and not message.startswith(flag) else f"error: {message}"


def main(argv: list[str] | None = None) -> int:
    from mfport.core.errors import MfportError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (MfportError, UserError) as err:
        print(error_line(err), file=sys.stderr)
        report = getattr(err, "report", None)
        if report and args.verbose:
            print(report, file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
