"""Summarise the parity reports under reports/parity/*/report.json into reports/parity/README.md (one row per
report) and print the table: verdict, worst cumulative and isolated errors, the spread of TF's error over
PyTorch's own float32 error (both against float64) over the cumulative taps, matcher, losses, gradients.

    python scripts/parity_summary.py [REPORTS_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HEADER = ("| report | input | verdict | taps | worst cumulative (TF vs PyTorch) | worst isolated | "
          "TF / PyTorch-own error vs float64 (min-max) | matcher layers identical | worst loss term (isolated) | "
          "gradients passing | parity wall time |")


def summary_row(name: str, report: dict) -> tuple[str, list[float]]:
    cumulative = [r["cumulative"] for r in report["rows"] if r.get("cumulative") and r["cumulative"]["metrics"]]
    isolated = [r["isolated"] for r in report["rows"] if r.get("isolated") and r["isolated"]["metrics"]]
    # Ratios only where float32's own error is measurable (an exact tap has 0 on both sides).
    ratios = [c["tf_vs_float64"] / c["reference_vs_float64"] for c in cumulative
              if c.get("reference_vs_float64") and c["reference_vs_float64"] > 1e-9]
    training = report.get("training") or {}
    matcher = training.get("matcher", [])
    losses = training.get("losses", [])
    gradients = training.get("gradients", [])
    seconds = sum(report.get("timings_s", {}).values())
    cells = [
        name, "x".join(map(str, report["inputs"]["shape"])), "PASS" if report["passed"] else "FAIL",
        str(len(report["rows"])),
        f"{max(c['metrics']['rel_max_error'] for c in cumulative):.1e}",
        f"{max(i['metrics']['rel_max_error'] for i in isolated):.1e}" if isolated else "-",
        f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-",
        f"{sum(m['identical'] for m in matcher)}/{len(matcher)}" if matcher else "-",
        f"{max(x['rel_error_isolated'] for x in losses):.1e}" if losses else "-",
        (f"{sum(g['verdict'] == 'pass' for g in gradients)}/{len(gradients)}"
         + ("" if training.get("float64") else " (no float64 run: fixed bound)")) if gradients else "-",
        f"{seconds:.0f} s",
    ]
    return "| " + " | ".join(cells) + " |", ratios


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else ROOT / "reports" / "parity"
    rows, ratios = [], []
    for path in sorted(directory.glob("*/report.json")):
        row, spread = summary_row(path.parent.name, json.loads(path.read_text()))
        rows.append(row)
        ratios += spread
    if not rows:
        print(f"no reports under {directory}")
        return 1
    separator = "|" + "---|" * HEADER.count(" | ") + "---|"
    text = ["# Parity reports", "",
            "Written by `bash scripts/parity_reports.sh` (seeded checkpoints, batch 2, `mfport parity` defaults: both "
            "modes, float64 context, matcher, losses and gradients); summarised by `python scripts/parity_summary.py`.",
            "", HEADER, separator, *rows, "",
            f"Over all {len(ratios)} cumulative taps with a measurable float32 error: TF's error against float64 is "
            f"{min(ratios):.2f}x to {max(ratios):.2f}x PyTorch's own (the verdict allows 4x)." if ratios else ""]
    (directory / "README.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
