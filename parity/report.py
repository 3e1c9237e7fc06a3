"""Parity reports from one table model: the console table, report.md and report.html render the same tables
(`tables(result)`), report.json is the typed result itself (schema 2)."""

from __future__ import annotations

import base64
import dataclasses
import html as html_lib
import io
import json
from pathlib import Path

from mfport.core.checkpoint_io import atomic_write
from mfport.parity.results import Comparison, ParityResult, RowKind, TapRow, Verdict, to_jsonable
from mfport.parity.training import GRADIENT_COSINE_BOUND, failing_gradient_context
from mfport.parity.training_curve import TrainingCurve

SCHEMA_VERSION = 2  # 2: typed rows, float64 context, the band rule's bounds, inference rows apart from taps


@dataclasses.dataclass
class Cell:
    text: str
    verdict: Verdict | None = None  # colours the cell (console, HTML)


@dataclasses.dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    console_columns: list[int] | None = None  # the columns the console shows (all when None)
    note: str = ""


def _mark(verdict: Verdict) -> str:
    return {Verdict.PASS: "ok", Verdict.FAIL: "FAIL", Verdict.REPORTED: "reported"}[verdict]


def _error(value: float | None) -> str:
    if value is None:
        return "-"
    return "exact" if value == 0.0 else f"{value:.2e}"


def _comparison_cell(comparison: Comparison | None) -> Cell:
    if comparison is None:
        return Cell("-")
    if comparison.metrics is None:
        ref, got = comparison.shapes
        return Cell(f"shape {ref} vs TF {got} FAIL", comparison.verdict)
    text = _error(comparison.metrics.rel_max_error)
    if comparison.reference_bf16 is not None:
        text += f" (PyTorch bf16 {_error(comparison.reference_bf16)})"
    return Cell(f"{text} {_mark(comparison.verdict)}", comparison.verdict)


def _cosine(value: float | None) -> str:
    return "-" if value is None else f"{value:.7f}"


def _amplification(value: float | None) -> str:
    return "-" if value is None else f"x{value:.1f}"


def tap_table(result: ParityResult) -> Table:
    columns = ["tap", "PyTorch module", "TF layer", "cumulative max|Δ|/max|ref|", "TF vs float64",
               "PyTorch fp32 vs float64", "allowed", "amplification TF / PyTorch", "isolated", "cosine", "argmax",
               "share outside tol."]
    rows = []
    for row in result.rows:
        c = row.cumulative
        metrics = c.metrics if c else None
        verdict = c.verdict if c else None
        rows.append([
            Cell(row.tap, row.verdict if row.verdict is Verdict.FAIL else None), Cell(row.pytorch_module),
            Cell(row.tf_layer), _comparison_cell(c),
            Cell(_error(c.tf_vs_float64) if c else "-", verdict if c and c.tf_vs_float64 is not None else None),
            Cell(_error(c.reference_vs_float64) if c else "-"),
            Cell(_error(c.allowed if c and c.allowed is not None else c.bound if c else None)),
            Cell(f"{_amplification(c.tf_amplification)} / {_amplification(c.reference_amplification)}" if c else "-"),
            _comparison_cell(row.isolated),
            Cell(f"{metrics.cosine:.9f}" if metrics else "-"),
            Cell(f"{100 * metrics.argmax_agreement:.2f}%" if metrics and metrics.argmax_agreement is not None else ""),
            Cell(f"{metrics.share_outside_tolerance:.2e}" if metrics else "-")])
    if result.float64:
        note = (f"Cumulative rows are judged against a float64 run of the PyTorch reference: TF's error there must be "
                f"within {result.band_factor:g}x PyTorch's own float32 error at the same tap, or the fixed bound, "
                "whichever is larger (the 'allowed' column). Amplification: a block's error out over its error in.")
        console = [0, 3, 4, 5, 6, 7, 8]
    else:
        note = "No float64 run (--no-float64): cumulative rows are judged on max|Δ|/max|ref| against the fixed bound."
        console = [0, 3, 8, 9]
    return Table("taps and outputs", columns, rows, console, note)


def inference_table(result: ParityResult) -> Table | None:
    if result.semantic is None:
        return None
    s = result.semantic
    own = "" if s.reference_bf16_agreement is None else f"; PyTorch bf16: {100 * s.reference_bf16_agreement:.3f}%"
    rows = [[Cell("semantic map (argmax)"),
             Cell(f"{100 * s.argmax_agreement:.4f}% of pixels agree; {s.differing_pixels} differ, {s.near_tie_pixels} "
                  f"of them at near-ties (top-2 gap <= {s.tie_band:.1e}){own}"), Cell(_mark(s.verdict), s.verdict)]]
    for p in result.panoptic:
        rows.append([Cell(f"panoptic ({p.label} thresholds {p.thresholds[0]}/{p.thresholds[1]})"),
                     Cell(f"{100 * p.pixel_agreement:.3f}% px ({p.differing_pixels} differ), segments equal "
                          f"{p.segments_equal}, PQ {p.pq_tf_vs_pytorch:.4f} ({p.segments} segments); agrees with "
                          f"PyTorch's {p.agrees_with} run"), Cell(_mark(p.verdict), p.verdict)])
    return Table("inference (semantic and panoptic post-processing)", ["output", "TF against PyTorch", "verdict"], rows)


def training_tables(result: ParityResult) -> list[Table]:
    training = result.training
    if training is None:
        return []
    matcher = Table("matcher (per decoder layer)", ["layer", "scipy", "in-graph (XLA)", "cost gap / tolerance",
                                                    "verdict"],
                    [[Cell(r.layer), Cell("identical" if r.identical else "different"),
                      Cell("identical" if r.in_graph_identical else "different"),
                      Cell(f"{r.cost_gap:.1e} / {r.cost_tolerance:.1e}"), Cell(_mark(r.verdict), r.verdict)]
                     for r in training.matcher],
                    note="A different assignment passes only if it is optimal on PyTorch's costs too, within the "
                         "float32 difference of the two cost matrices.")
    losses = Table("loss terms", ["term", "PyTorch", "TensorFlow", "rel. error end to end", "rel. error isolated",
                                  "allowed (isolated)", "TF vs float64 (end to end)",
                                  "PyTorch vs float64 (end to end)"],
                   [[Cell(r.term), Cell(f"{r.pytorch:.7g}"), Cell(f"{r.tensorflow:.7g}"),
                     Cell(f"{r.rel_error_cumulative:.1e}"),
                     Cell(f"{r.rel_error_isolated:.1e} {_mark(r.verdict)}", r.verdict),
                     Cell(f"{r.isolated_allowed:.1e}"), Cell(_error(r.tf_rel_error_vs_float64)),
                     Cell(_error(r.reference_rel_error_vs_float64))] for r in training.losses],
                   console_columns=[0, 1, 3, 4, 5, 6, 7])
    gradients = sorted(training.gradients, key=lambda r: (r.analytically_zero, r.cosine))
    passing = sum(r.verdict.ok for r in gradients)
    note = (f"{passing}/{len(gradients)} parameter tensors pass. "
            + ("Verdict: 1 - cosine to the float64 gradient within the band of PyTorch's own (or 1e-5). "
               if training.float64 else f"Verdict: cosine >= {GRADIENT_COSINE_BOUND} against PyTorch. ")
            + "Analytically zero gradients pass when both sides are noise. Lowest cosines first.")
    context = failing_gradient_context(training)
    if context:
        note += " " + context + "."
    gradient_table = Table("gradients", ["TF variable", "cosine TF vs PyTorch", "PyTorch vs itself (threads)",
                                         "rel. max error", "TF vs float64", "PyTorch vs float64", "verdict"],
                           [[Cell(r.tf_variable), Cell(f"{r.cosine:.7f}"), Cell(f"{r.reference_self_cosine:.7f}"),
                             Cell(f"{r.rel_max_error:.1e}"),
                             Cell(_cosine(r.tf_cosine_to_float64)), Cell(_cosine(r.reference_cosine_to_float64)),
                             Cell("zero" if r.analytically_zero else _mark(r.verdict), r.verdict)]
                            for r in gradients[:12]], note=note)
    return [matcher, losses, gradient_table]


def lint_table(result: ParityResult) -> Table:
    return Table("config lint", ["field", "PyTorch", "TensorFlow", "same"],
                 [[Cell(item.field), Cell(str(item.pytorch)), Cell(str(item.tensorflow)),
                   Cell("yes" if item.same else "NO", Verdict.PASS if item.same else Verdict.FAIL)]
                  for item in result.lint], console_columns=[])


def tables(result: ParityResult) -> list[Table]:
    return [t for t in (tap_table(result), inference_table(result), *training_tables(result), lint_table(result))
            if t is not None]


def headline(result: ParityResult) -> str:
    return (f"parity {result.preset} {result.inputs['shape']} ({result.profile}): "
            f"{'PASS' if result.passed else 'FAIL'}, first divergence {result.first_divergence or 'none'}")


# Renderers ----------------------------------------------------------------------------------------------------

def _print_table(table: Table, console: object, title: str | None = None) -> None:
    from rich.table import Table as RichTable

    shown = table.console_columns if table.console_columns is not None else list(range(len(table.columns)))
    rich_table = RichTable(title=title or table.title)
    for index in shown:
        rich_table.add_column(table.columns[index], overflow="fold")
    for row in table.rows:
        failed = any(cell.verdict is Verdict.FAIL for cell in row)
        rich_table.add_row(*[row[i].text for i in shown], style="bold red" if failed else None)
    console.print(rich_table)
    if table.note:
        console.print(table.note)


def render_console(result: ParityResult, console: object) -> None:
    for position, table in enumerate(tables(result)):
        if table.console_columns == []:  # a one-line summary (the config lint)
            differing = [row[0].text for row in table.rows if row[-1].verdict is Verdict.FAIL]
            console.print(f"{table.title}: {'all same' if not differing else 'DIFFERENT: ' + ', '.join(differing)}")
            continue
        _print_table(table, console, headline(result) if position == 0 else None)


def render_markdown(result: ParityResult, meta: dict[str, object]) -> str:
    env = result.environment
    lines = [f"# Parity: {result.preset} ({result.profile})", "",
             f"**{'PASS' if result.passed else 'FAIL'}** — first divergence: {result.first_divergence or 'none'}", "",
             f"Input {result.inputs['shape']} ({meta.get('images', 'generated')}); torch {env['torch']}, "
             f"TensorFlow {env['tensorflow']}, {env.get('cpu', env['device'])}.", "",
             f"Fixed bounds: max|tf − ref| / max|ref| ≤ cumulative {meta['bounds']['cumulative']:.0e}, isolated "
             f"{meta['bounds']['isolated']:.0e}.", ""]
    for table in tables(result):
        lines += [f"## {table.title}", ""]
        if table.note:
            lines += [table.note, ""]
        lines += ["| " + " | ".join(table.columns) + " |", "| " + " | ".join("---" for _ in table.columns) + " |"]
        lines += ["| " + " | ".join(cell.text.replace("|", "\\|") for cell in row) + " |" for row in table.rows]
        lines.append("")
    return "\n".join(lines)


def _plot_png(result: ParityResult, meta: dict[str, object]) -> bytes:
    """Per-tap errors on a log scale: TF and PyTorch fp32 against float64 with the allowed band (or TF against
    PyTorch without float64), isolated errors; exact zeros sit on the bottom line, labelled "exact"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[TapRow] = [r for r in result.rows if r.cumulative or r.isolated]
    names = [r.tap for r in rows]
    fig, ax = plt.subplots(figsize=(13, 5), dpi=100)
    errors = [v for r in rows for c in (r.cumulative, r.isolated) if c and c.metrics
              for v in (c.metrics.rel_max_error, c.tf_vs_float64, c.reference_vs_float64) if v]
    floor = min(errors) / 10 if errors else 1e-12

    def series(values: list[float | None], label: str, marker: str, color: str) -> None:
        points = [(i, v) for i, v in enumerate(values) if v is not None]
        exact = [i for i, v in points if v == 0.0]
        nonzero = [(i, v) for i, v in points if v > 0.0]
        if nonzero:
            ax.semilogy(*zip(*nonzero, strict=True), marker=marker, linestyle="-", label=label, color=color, ms=4)
        if exact:
            ax.semilogy(exact, [floor] * len(exact), marker=marker, linestyle="none", color=color, ms=6,
                        markerfacecolor="none", label=f"{label}: exact (0)")

    if result.float64:
        series([r.cumulative.tf_vs_float64 if r.cumulative else None for r in rows], "TF vs float64", "o", "C0")
        series([r.cumulative.reference_vs_float64 if r.cumulative else None for r in rows], "PyTorch fp32 vs float64",
               "^", "C2")
        allowed = [r.cumulative.allowed if r.cumulative and r.cumulative.allowed else None for r in rows]
        xs = [i for i, v in enumerate(allowed) if v is not None]
        if xs:
            label = f"allowed: max({meta['bounds']['cumulative']:.0e}, {result.band_factor:g}x PyTorch's)"
            ax.fill_between(xs, [floor] * len(xs), [allowed[i] for i in xs], color="C0", alpha=0.08, label=label)
    else:
        series([r.cumulative.metrics.rel_max_error if r.cumulative and r.cumulative.metrics else None for r in rows],
               "cumulative TF vs PyTorch", "o", "C0")
        ax.axhline(meta["bounds"]["cumulative"], linestyle="--", linewidth=0.8, color="C0")
    series([r.isolated.metrics.rel_max_error if r.isolated and r.isolated.metrics else None for r in rows],
           "isolated", "s", "C1")
    ax.axhline(meta["bounds"]["isolated"], linestyle=":", linewidth=0.8, color="C1")
    if result.first_divergence in names:
        ax.axvline(names.index(result.first_divergence), color="red", linewidth=2, label="first divergence")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=75, ha="right", fontsize=6 if len(names) > 40 else 7)
    ax.set_ylabel("max |error| / max |ref|")
    ax.set_title(f"{result.preset}: per-tap error ({result.profile})")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


_CSS = ("body{font-family:sans-serif;margin:1.5em;max-width:1360px}img{max-width:100%;height:auto}"
        "table{border-collapse:collapse;width:100%;table-layout:auto;margin-bottom:1em}"
        "td,th{padding:2px 6px;border-bottom:1px solid #ddd;font-size:12px;text-align:left;vertical-align:top;"
        "overflow-wrap:anywhere;word-break:break-word}"
        "td.fail{background:#fdd;font-weight:bold}td.reported{background:#ffd}p.note{font-size:12px;color:#444}")


def render_html(result: ParityResult, meta: dict[str, object]) -> str:
    png = base64.b64encode(_plot_png(result, meta)).decode()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Parity {result.preset}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Parity: {html_lib.escape(result.preset)} — {'PASS' if result.passed else 'FAIL'}</h1>",
             f"<p>First divergence: {html_lib.escape(result.first_divergence or 'none')}. Input "
             f"{result.inputs['shape']}.</p><img alt='per-tap error' src='data:image/png;base64,{png}'>"]
    for table in tables(result):
        parts.append(f"<h2>{html_lib.escape(table.title)}</h2>")
        if table.note:
            parts.append(f"<p class='note'>{html_lib.escape(table.note)}</p>")
        parts.append("<table><tr>" + "".join(f"<th>{html_lib.escape(c)}</th>" for c in table.columns) + "</tr>")
        for row in table.rows:
            cells = []
            for cell in row:
                css = {Verdict.FAIL: " class='fail'", Verdict.REPORTED: " class='reported'"}.get(cell.verdict, "")
                cells.append(f"<td{css}>{html_lib.escape(cell.text)}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


def write_reports(result: ParityResult, directory: str | Path, meta: dict[str, object]) -> dict[str, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"schema_version": SCHEMA_VERSION, **meta, **to_jsonable(result)}
    paths = {"json": directory / "report.json", "md": directory / "report.md", "html": directory / "report.html"}
    atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1, default=str)))
    atomic_write(paths["md"], lambda tmp: Path(tmp).write_text(render_markdown(result, meta)))
    atomic_write(paths["html"], lambda tmp: Path(tmp).write_text(render_html(result, meta)))
    return paths


def rows_by_kind(result: ParityResult, kind: RowKind) -> list[TapRow]:
    return [r for r in result.rows if r.kind is kind]


# Training-curve parity (mfport training-parity) ----------------------------------------------------------------
def curve_table(curve: TrainingCurve) -> Table:
    every = max(1, curve.steps // 10)
    shown = [r for r in curve.rows if r.step % every == 0 or r.step == curve.steps - 1]
    rows = [[Cell(str(r.step)), Cell(f"{r.learning_rate:.3g}"), Cell(f"{r.torch_loss:.6g}"), Cell(f"{r.tf_loss:.6g}"),
             Cell(_error(r.tf_drift)), Cell(_error(r.float32_drift))] for r in shown]
    tf_drift, own = curve.loss_drift
    rows.append([Cell("max"), Cell(""), Cell(""), Cell(""), Cell(_error(tf_drift), curve.loss_verdict),
                 Cell(_error(own))])
    height, width = curve.image_size
    return Table(f"loss per step ({curve.steps} steps, batch {curve.batch}, {height}x{width})",
                 ["step", "lr", "PyTorch", "TF", *curve.labels], rows)


def parameter_table(curve: TrainingCurve, worst: int = 8) -> Table:
    ranked = sorted(curve.parameters, key=lambda p: p.tf_drift / p.bound, reverse=True)[:worst]
    rows = [[Cell(p.name), Cell(_error(p.moved)), Cell(_error(p.tf_drift), p.verdict), Cell(_error(p.float32_drift)),
             Cell(_error(p.bound))] for p in ranked]
    failing = sum(not p.verdict.ok for p in curve.parameters)
    judge = "float64" if curve.float64 else "PyTorch"
    return Table(f"parameters after the last step: the {len(ranked)} of {len(curve.parameters)} furthest from their "
                 f"band ({failing} outside)", ["parameter", "moved", *curve.labels, "band"],
                 rows, note=f"drift = max |other - {judge}| / max |{judge} - start|; the band: the largest of "
                            f"{curve.band_factor:g} x PyTorch float32's own drift, 1e-4, and steps x the float32 "
                            "spacing of the tensor's values over how far it moved")


def _curve_png(curve: TrainingCurve) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r.step for r in curve.rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    left.plot(steps, [r.torch_loss for r in curve.rows], label="PyTorch reference", lw=2.2, color="#1f77b4")
    left.plot(steps, [r.tf_loss for r in curve.rows], label="TensorFlow (mfport)", lw=1.2, ls="--", color="#d62728")
    if curve.float64:
        left.plot(steps, [r.float64_loss for r in curve.rows], label="PyTorch float64 (the judge)", lw=1.0, ls=":",
                  color="#2ca02c")
    left.set(xlabel="step", ylabel="total loss (weighted, with aux layers)", title=f"{curve.preset}: fine-tuning loss")
    left.legend()
    tf_label, own_label = curve.labels
    right.semilogy(steps, [max(r.tf_drift, 1e-12) for r in curve.rows], label=tf_label, color="#d62728")
    right.semilogy(steps, [max(r.float32_drift, 1e-12) for r in curve.rows], label=f"{own_label} (float32's own)",
                   color="#7f7f7f")
    right.set(xlabel="step", ylabel="|loss difference| / loss", title="drift per step")
    right.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def render_curve_console(curve: TrainingCurve, console: object) -> None:
    tf_drift, own = curve.loss_drift
    verdict = "PASS" if curve.passed else "FAIL"
    _print_table(curve_table(curve), console,
                 f"{verdict}: training-curve parity, {curve.preset} "
                 f"(loss drift {tf_drift:.2e}, float32's own {own:.2e})")
    _print_table(parameter_table(curve), console)


def write_curve_reports(curve: TrainingCurve, directory: str | Path) -> dict[str, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "training_curve.json", "png": directory / "training_curve.png"}
    payload = {"schema_version": 2, "passed": curve.passed, "judged_against": "float64" if curve.float64 else
               "float32 repeat on other threads", **to_jsonable(curve)}
    atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1)))
    png = _curve_png(curve)
    atomic_write(paths["png"], lambda tmp: Path(tmp).write_bytes(png))
    return paths
