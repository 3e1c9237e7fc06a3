"""`mfport`: MaskFormer from PyTorch to TensorFlow, proven tensor by tensor.

Exit codes: 0 success; 1 bad input (unreadable, unsafe or mismatched checkpoint, existing output
without --force) or a failed parity check; 2 bad command-line usage.
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

EXIT_OK, EXIT_INPUT_ERROR, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 1."""


def _console():  # noqa: ANN202 - rich is imported lazily to keep `mfport --help` fast
    from rich.console import Console

    return Console()


def cmd_presets(args: argparse.Namespace) -> int:
    from rich.table import Table

    from torch_reference.presets import PRESETS

    if args.json:
        print(json.dumps({name: {"description": p.description, "original_config": p.original_config,
                                 "num_classes": p.num_classes, "backbone_depth": p.backbone_depth,
                                 "pixel_decoder": p.pixel_decoder,
                                 "published_params_m": p.published_params_m} for name, p in PRESETS.items()},
                         indent=2))
        return EXIT_OK
    table = Table(title="MaskFormer presets")
    for column in ("preset", "backbone", "pixel decoder", "classes", "params (published)", "original config"):
        table.add_column(column)
    for name, p in PRESETS.items():
        decoder = "BasePixelDecoder" if p.pixel_decoder == "base" else f"+{p.pixel_decoder_enc_layers} Enc"
        table.add_row(name, f"R{p.backbone_depth}", decoder, str(p.num_classes), f"{p.published_params_m:.2f}M",
                      p.original_config)
    _console().print(table)
    return EXIT_OK


def cmd_init_checkpoint(args: argparse.Namespace) -> int:
    from torch_reference.presets import get_preset
    from torch_reference.seeded_init import write_seeded_checkpoint

    try:
        preset = get_preset(args.preset)
    except KeyError as err:
        raise UserError(f"--preset: {err.args[0]}") from None
    out = Path(args.output)
    if out.exists() and not args.force:
        raise UserError(f"{out}: exists; pass --force to overwrite")
    console = _console()
    with console.status(f"seeding {preset.name} (seed {args.seed}) and calibrating its frozen BN statistics"):
        state = write_seeded_checkpoint(preset, args.seed, out)
    console.print(f"wrote {out} ({len(state)} tensors, {out.stat().st_size / 2**20:.1f} MiB, "
                  f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()[:16]})")
    return EXIT_OK


def inspect_checkpoint(path: str) -> dict[str, object]:
    """A checkpoint's summary, as printed by `mfport inspect` (also its --json output)."""
    import numpy as np

    from converter.architecture import detect_architecture, detect_preset, parameter_count
    from converter.checkpoint_io import read_checkpoint

    checkpoint = read_checkpoint(path)
    arch = detect_architecture(checkpoint.tensors)
    preset = detect_preset(checkpoint.tensors)
    dtypes = sorted({str(v.dtype) for v in checkpoint.tensors.values()})
    params = parameter_count(checkpoint.tensors)
    return {
        "path": str(path),
        "format": checkpoint.format,
        "naming_era": arch.naming_era,
        "detected_preset": preset.name if preset else None,
        "architecture": {"backbone": f"R{arch.backbone_depth}" if arch.backbone_depth else "unknown",
                         "pixel_decoder": arch.pixel_decoder,
                         "encoder_layers": arch.pixel_decoder_enc_layers, "num_classes": arch.num_classes,
                         "num_queries": arch.num_queries, "decoder_layers": arch.dec_layers},
        "tensor_count": len(checkpoint.tensors),
        "parameter_count": params,
        "published_parameter_count_m": preset.published_params_m if preset else None,
        "element_count": int(sum(v.size for v in checkpoint.tensors.values())),
        "dtypes": dtypes,
        "tensor_bytes": int(sum(v.nbytes for v in checkpoint.tensors.values())),
        "file_bytes": checkpoint.file_size,
        "metadata": {k: str(v) for k, v in checkpoint.metadata.items()
                     if isinstance(v, (str, int, float, np.generic))},
    }


def cmd_inspect(args: argparse.Namespace) -> int:
    from rich.table import Table

    info = inspect_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    arch = info["architecture"]
    table = Table(title=f"{info['path']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    published = info["published_parameter_count_m"]
    rows = [
        ("format", info["format"]),
        ("naming era", info["naming_era"]),
        ("detected preset", info["detected_preset"] or "none (architecture matches no preset)"),
        ("architecture", f"{arch['backbone']}, {arch['pixel_decoder']} pixel decoder "
                         f"({arch['encoder_layers']} enc layers), {arch['num_classes']} classes, "
                         f"{arch['num_queries']} queries, {arch['decoder_layers']} decoder layers"),
        ("tensors", str(info["tensor_count"])),
        ("parameters", f"{info['parameter_count']:,} ({info['parameter_count'] / 1e6:.2f}M"
                       + (f"; published {published:.2f}M)" if published else ")")),
        ("elements (incl. frozen-BN buffers)", f"{info['element_count']:,}"),
        ("dtype", ", ".join(info["dtypes"])),
        ("size", f"{info['file_bytes'] / 2**20:.1f} MiB file, {info['tensor_bytes'] / 2**20:.1f} MiB tensors"),
    ]
    rows += [(f"metadata: {k}", v) for k, v in info["metadata"].items()]
    for row in rows:
        table.add_row(*row)
    _console().print(table)
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from converter.convert import convert_to_tf, convert_to_torch

    if args.to == "torch":
        state = convert_to_torch(args.source, args.output, force=args.force)
        summary = {"output": args.output, "direction": "tf->torch", "tensors": len(state)}
        print(json.dumps(summary) if args.json else f"wrote {args.output} ({len(state)} tensors, original naming)")
        return EXIT_OK
    steps = ["read", "build", "map", "write"]
    with Progress(disable=args.json, transient=True) as progress:
        task = progress.add_task(f"converting {args.source}", total=len(steps))

        def advance(step: str) -> None:
            progress.update(task, completed=steps.index(step), description=f"{step}: {args.source}")

        result = convert_to_tf(args.source, args.output, preset=args.preset, formats=args.format or ["tf-checkpoint"],
                               saved_model=args.saved_model, keep_dtype=args.keep_dtype, force=args.force,
                               progress=advance)
        progress.update(task, completed=len(steps))
    summary = {"output": result.output, "preset": result.preset, "source_format": result.source_format,
               "naming": result.naming_era, "tensors": result.tensors, "tensor_bytes": result.tensor_bytes,
               "cast_to_float32": result.cast_to_float32,
               "timings_s": {k: round(v, 4) for k, v in result.timings_s.items()}}
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    _print_conversion_table(result)
    return EXIT_OK


def _print_conversion_table(result: object) -> None:
    from collections import Counter

    from rich.table import Table

    table = Table(title=f"{result.output}: {result.tensors} tensors from {result.source_format} "
                        f"({result.naming_era}) as preset {result.preset}")
    for column in ("family", "tensors", "TF variables", "transforms"):
        table.add_column(column)
    by_family: dict[str, list] = {}
    for record in result.records:
        by_family.setdefault(record.family, []).append(record)
    for family, records in by_family.items():
        transforms = Counter(r.transform for r in records)
        table.add_row(family, str(len(records)), str(sum(len(r.tf_variables) for r in records)),
                      ", ".join(f"{name} x{count}" for name, count in transforms.most_common()))
    _console().print(table)
    notes = ["every source tensor consumed once, every TF variable assigned once"]
    if result.cast_to_float32:
        notes.append("half-precision source cast to float32 (--keep-dtype keeps it)")
    _console().print("; ".join(notes) + ". " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings_s.items()))


def cmd_predict(args: argparse.Namespace) -> int:
    from rich.table import Table

    from tf_maskformer.serving.predict import predict_images

    predictions = predict_images(args.model, args.images, args.output,
                                 object_mask_threshold=args.object_mask_threshold,
                                 overlap_threshold=args.overlap_threshold)
    table = Table(title=f"predictions in {args.output}")
    for column in ("image", "semantic classes", "panoptic segments", "files"):
        table.add_column(column)
    for p in predictions:
        table.add_row(p.image, str(len(set(p.semantic_map.ravel().tolist()))), str(len(p.segments)),
                      ", ".join(p.outputs))
    _console().print(table)
    return EXIT_OK


def cmd_sample_images(args: argparse.Namespace) -> int:
    from PIL import Image

    from converter.checkpoint_io import atomic_write
    from torch_reference.synthetic_images import synthetic_images

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    images = synthetic_images(args.seed, args.count, *args.size)
    for index, image in enumerate(images):
        path = out / f"sample_{args.seed}_{index}.png"
        atomic_write(path, lambda tmp, im=image: Image.fromarray(im).save(tmp, format="PNG"))
        print(path)
    return EXIT_OK


def cmd_parity(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.table import Table

    from converter.convert import tf_model_from_checkpoint
    from parity.harness import run_parity
    from parity.metrics import PROFILES
    from parity.report import write_reports
    from torch_reference.loading import load_maskformer
    from torch_reference.synthetic_images import synthetic_images

    if args.images:
        from tf_maskformer.serving.predict import read_image

        loaded = [read_image(p) for p in args.images]
        if len({im.shape for im in loaded}) != 1:
            raise UserError("--images: all images must have the same size (one batch)")
        images, source = np.stack(loaded), [str(p) for p in args.images]
    else:
        images, source = synthetic_images(args.seed, args.batch, *args.image_size), f"synthetic seed {args.seed}"
    profile = PROFILES[args.profile]
    torch_model, _ = load_maskformer(args.checkpoint, args.preset)
    tf_model, _ = tf_model_from_checkpoint(args.checkpoint, torch_model.preset, policy=profile.policy)
    modes = ("cumulative", "isolated") if args.mode == "both" else (args.mode,)
    result = run_parity(torch_model, tf_model, images, profile, modes)
    if not profile.training and not args.no_gradients:
        _console().print(f"profile {profile.name}: matcher, loss and gradient parity run in the fp32 profile only")
    elif not args.no_gradients:
        from parity.training import run_training_parity

        result.training = run_training_parity(torch_model, tf_model, images, seed=args.seed,
                                              float64_reference=args.float64_gradients)
        result.passed = result.passed and result.training["passed"]
    meta = {"checkpoint": str(args.checkpoint), "images": source, "seed": args.seed,
            "bounds": {"cumulative": profile.cumulative_rel_max, "isolated": profile.isolated_rel_max}}
    report_dir = Path(args.report_dir or f"reports/parity_{result.preset}")
    paths = write_reports(result, report_dir, meta)
    if args.json:
        print(json.dumps({"passed": result.passed, "first_divergence": result.first_divergence,
                          "reports": {k: str(v) for k, v in paths.items()}}))
    else:
        table = Table(title=f"parity {result.preset} {list(images.shape)} ({args.profile}): "
                            f"{'PASS' if result.passed else 'FAIL'}, first divergence {result.first_divergence}")
        for column in ("tap", "cumulative max|Δ|/max|ref|", "isolated", "cosine"):
            table.add_column(column)
        for row in result.rows:
            cell = {}
            for mode in ("cumulative", "isolated"):
                m = row.get(mode) or {}
                cell[mode] = (f"{m['rel_max_error']:.2e} {'ok' if m['verdict'] == 'pass' else 'FAIL'}"
                              if "rel_max_error" in m else m.get("verdict", "-"))
                if "reference_bf16_rel_max_error" in m:  # the reference's own bfloat16 error, for context
                    cell[mode] += f" (PyTorch bf16 {m['reference_bf16_rel_max_error']:.1e})"
            table.add_row(row["tap"], cell["cumulative"], cell["isolated"],
                          f"{(row.get('cumulative') or {}).get('cosine', float('nan')):.9f}")
        _console().print(table)
        if result.training:
            from parity.training import float64_summary, thread_count_context

            training = result.training
            worst = min(training["gradients"], key=lambda r: 2.0 if r["analytically_zero"] else r["cosine"])
            _console().print(
                f"matcher: {sum(r['identical'] for r in training['matcher'])}/{len(training['matcher'])} layers "
                f"identical (scipy), {sum(r['in_graph_identical'] for r in training['matcher'])} (in-graph); "
                f"losses: worst isolated rel. error "
                f"{max(r['rel_error_isolated'] for r in training['losses']):.1e}, worst end-to-end "
                f"{max(r['rel_error_cumulative'] for r in training['losses']):.1e}; gradients: "
                f"{sum(r['verdict'] == 'pass' for r in training['gradients'])}/{len(training['gradients'])} pass, "
                f"lowest cosine {worst['cosine']:.7f} ({worst['tf_variable']})")
            context = thread_count_context(training["gradients"])
            if context:
                _console().print(f"gradients: {context}")
            if training.get("float64_reference"):
                f64 = float64_summary(training["gradients"])
                _console().print(
                    f"against a float64 backward: lowest cosine TF {f64['lowest_tf_cosine']:.7f}, PyTorch "
                    f"{f64['lowest_reference_cosine']:.7f}; TF closer on {f64['tf_closer']}/{f64['tensors']} "
                    f"tensors; of the {f64['failing']} below the bound, {f64['failing_with_reference_below_bound']}"
                    " are tensors where PyTorch's own float32 gradient is below it against float64; loss terms "
                    "end to end against float64: TF within "
                    f"{max(r['tf_rel_error_vs_float64'] for r in training['losses']):.1e}, PyTorch within "
                    f"{max(r['reference_rel_error_vs_float64'] for r in training['losses']):.1e}")
        differing = [item["field"] for item in result.lint if not item["same"]]
        _console().print(f"config lint: {'all same' if not differing else 'DIFFERENT: ' + ', '.join(differing)}; "
                         f"reports: {', '.join(str(p) for p in paths.values())}")
    return EXIT_OK if result.passed else EXIT_INPUT_ERROR


def cmd_synthetic_data(args: argparse.Namespace) -> int:
    from tf_maskformer.dataloaders.synthetic_coco_panoptic import write_synthetic_coco_panoptic

    for split, count, seed in (("train", args.train, args.seed), ("val", args.val, args.seed + 1)):
        if count:
            path = write_synthetic_coco_panoptic(args.output, split, count, seed=seed, dataset=args.dataset)
            print(f"{path} ({count} images)")
    return EXIT_OK


def cmd_make_tfrecords(args: argparse.Namespace) -> int:
    from tf_maskformer.dataloaders.coco_panoptic_tfrecords import DatasetError, write_panoptic_tfrecords

    try:
        shards = write_panoptic_tfrecords(args.images, args.panoptic_json, args.panoptic_dir, args.output,
                                          prefix=args.prefix, num_shards=args.shards, force=args.force,
                                          progress=True)
    except DatasetError as err:
        raise UserError(str(err)) from None
    print(f"{len(shards)} shards: {shards[0].parent}/{args.prefix}-*.tfrecord (+ label_map.json)")
    return EXIT_OK


def _training_params(args: argparse.Namespace) -> object:
    from tf_maskformer import train

    overrides: dict = {"task": {}, "runtime": {}}
    if getattr(args, "init_from", None):
        overrides["task"]["init_checkpoint"] = args.init_from
    if args.train_data:
        overrides["task"]["train_data"] = {"input_path": args.train_data}
    if args.val_data:
        overrides["task"]["validation_data"] = {"input_path": args.val_data}
    if getattr(args, "steps", None):
        overrides["trainer"] = {"train_steps": args.steps}
    if getattr(args, "mixed_bfloat16", False):
        overrides["runtime"]["mixed_precision_dtype"] = "bfloat16"
    try:
        return train.build_params(args.experiment, args.config_file, args.params_override,
                                  {k: v for k, v in overrides.items() if v})
    except (ValueError, KeyError, AttributeError) as err:
        raise UserError(str(err).splitlines()[0]) from None


def _run_training(args: argparse.Namespace, mode: str) -> dict:
    from tf_maskformer import train
    from tf_maskformer.tasks.panoptic_maskformer import InitCheckpointError

    params = _training_params(args)
    for name, data in (("--train-data", params.task.train_data), ("--val-data", params.task.validation_data)):
        needed = mode.startswith("train") if name == "--train-data" else mode != "train"
        if needed and not _glob_matches(data.input_path):
            raise UserError(f"{name}: no file matches {data.input_path!r}")
    strategy = train.build_strategy(args.tpu, cpu_replicas=args.cpu_replicas)
    try:
        return train.run(params, args.model_dir, mode=mode, strategy=strategy)
    except (InitCheckpointError, ValueError) as err:
        if args.verbose:  # -v: the whole traceback, for errors that are not the user's
            raise
        raise UserError(str(err).splitlines()[0]) from None


def _glob_matches(pattern: str) -> bool:
    import glob

    return any(glob.glob(p) for p in pattern.split(","))


def cmd_train(args: argparse.Namespace) -> int:
    from tf_maskformer.train import plot_loss_curve

    logs = _run_training(args, "train_and_eval" if args.evaluate else "train")
    if args.loss_curve:
        png = plot_loss_curve(args.model_dir, args.loss_curve, f"fine-tune: {args.experiment}")
        print(f"loss curve: {png}")
    if logs:
        print(json.dumps(logs, indent=1))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.table import Table

    logs = _run_training(args, "eval")
    if args.json:  # one line, the last: Orbit prints its own progress to stdout before it
        print(json.dumps(logs))
        return EXIT_OK
    table = Table(title=f"evaluation of {args.model_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(logs.items()):
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    _console().print(table)
    return EXIT_OK


def _add_training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", default="maskformer_synthetic_smoke", help="a registered experiment")
    p.add_argument("--config_file", action="append", help="YAML overriding the experiment (repeatable)")
    p.add_argument("--params_override", help="e.g. 'task.train_data.global_batch_size=8,trainer.train_steps=100'")
    p.add_argument("--model-dir", required=True, help="checkpoints and summaries (a rerun resumes from here)")
    p.add_argument("--train-data", help="TFRecord glob (overrides task.train_data.input_path)")
    p.add_argument("--val-data", help="TFRecord glob (overrides task.validation_data.input_path)")
    p.add_argument("--tpu", help="TPU address: runs under TPUStrategy")
    p.add_argument("--cpu-replicas", type=int, default=1, help="MirroredStrategy over N logical CPUs (checks)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfport", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="on errors, print the full report")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the named MaskFormer presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("init-checkpoint", help="write a seeded original-format (model-zoo .pkl) checkpoint")
    p.add_argument("--preset", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="output .pkl path")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_init_checkpoint)

    p = sub.add_parser("inspect", help="summarise a checkpoint (.pkl, .pth/.pt, .safetensors)")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("parity", help="compare the PyTorch reference and the converted TF model tap by tap")
    p.add_argument("checkpoint")
    p.add_argument("--preset")
    p.add_argument("--image-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    p.add_argument("--images", nargs="+", help="PNG/JPEG files of one size instead of generated images")
    p.add_argument("--mode", choices=["cumulative", "isolated", "both"], default="both")
    p.add_argument("--profile", choices=["fp32", "bf16"], default="fp32",
                   help="tolerance profile; bf16 runs the TF model under mixed_bfloat16 (TPU-style)")
    p.add_argument("--report-dir", help="default reports/parity_<preset>")
    p.add_argument("--no-gradients", action="store_true", help="skip matcher, loss and gradient parity")
    p.add_argument("--float64-gradients", action="store_true",
                   help="also compare both float32 gradients with a float64 backward of the reference")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_parity)

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
    p.add_argument("--preset", help="override the preset detected from the keys")
    p.add_argument("--format", action="append", choices=["tf-checkpoint", "keras"],
                   help="output formats (repeatable; default tf-checkpoint)")
    p.add_argument("--saved-model", action="store_true", help="also export the serving SavedModel")
    p.add_argument("--keep-dtype", action="store_true", help="keep fp16/bf16 sources as they are")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("predict", help="segment image files with a converted model; write overlays and maps")
    p.add_argument("images", nargs="+", help="PNG/JPEG files")
    p.add_argument("--model", required=True, help="a directory written by mfport convert")
    p.add_argument("-o", "--output", default="out/predict")
    p.add_argument("--object-mask-threshold", type=float, help="override the preset's (panoptic)")
    p.add_argument("--overlap-threshold", type=float, help="override the preset's (panoptic)")
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
    p.add_argument("--steps", type=int, help="trainer.train_steps")
    p.add_argument("--mixed-bfloat16", action="store_true", help="runtime.mixed_precision_dtype=bfloat16")
    p.add_argument("--evaluate", action="store_true", help="train_and_eval instead of train")
    p.add_argument("--loss-curve", help="write the loss curve PNG here at the end")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="panoptic quality and mIoU of the newest checkpoint in --model-dir")
    _add_training_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    from converter.checkpoint_io import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        report = getattr(err, "report", None)
        if report and args.verbose:
            print(report, file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
