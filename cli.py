"""`mfport`: MaskFormer from PyTorch to TensorFlow, proven tensor by tensor.

Exit codes: 0 success; 1 bad input (unreadable, unsafe or mismatched checkpoint, existing output
without --force); 2 bad command-line usage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

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
