"""Parity reports: report.json (versioned schema), report.md (for a pull request), report.html (plot)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path

from converter.checkpoint_io import atomic_write
from parity.harness import ParityResult
from parity.training import float64_summary, thread_count_context

SCHEMA_VERSION = 1


def _mark(verdict: object) -> str:
    return {"pass": "✓", "reported": "(reported)"}.get(str(verdict), "✗")


def _fmt(metrics: dict[str, object] | None, key: str = "rel_max_error") -> str:
    if not metrics:
        return "n/a"
    if "pixel_agreement" in metrics:
        return (f"{100 * metrics['pixel_agreement']:.3f}% px ({metrics['differing_pixels']} differ), "
                f"segments equal {metrics['segments_equal']}, "
                f"PQ {metrics['pq_tf_vs_pytorch']:.4f} ({metrics['segments']} seg.) {_mark(metrics['verdict'])}")
    if "rel_max_error" not in metrics:
        if "argmax_agreement" in metrics:
            own = metrics.get("reference_bf16_agreement")
            context = "" if own is None else f" (PyTorch bf16: {100 * own:.3f}%)"
            return f"{100 * metrics['argmax_agreement']:.3f}% px{context} {_mark(metrics['verdict'])}"
        return str(metrics.get("verdict"))
    context = metrics.get("reference_bf16_rel_max_error")
    own = "" if context is None else f" (PyTorch bf16: {context:.2e})"
    return f"{metrics[key]:.2e}{own} {_mark(metrics['verdict'])}"


def _cell(row: dict[str, object], key: str, spec: str = ".7f") -> str:
    """A float64-context column: the value, or "not run" without --float64-gradients."""
    return format(row[key], spec) if key in row else "not run"


def markdown(result: ParityResult, meta: dict[str, object]) -> str:
    lines = [f"# Parity: {result.preset} ({result.profile})", "",
             f"**{'PASS' if result.passed else 'FAIL'}** — first divergence: {result.first_divergence or 'none'}", "",
             f"Input {result.inputs['shape']} ({meta.get('images', 'generated')}); "
             f"torch {result.environment['torch']}, TensorFlow {result.environment['tensorflow']}, "
             f"{result.environment['device']}.", "",
             "Bound: max|tf − ref| / max|ref| ≤ cumulative "
             f"{meta['bounds']['cumulative']:.0e}, isolated {meta['bounds']['isolated']:.0e}.", "",
             "| tap | PyTorch module | TF layer | cumulative | isolated | cosine | argmax |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in result.rows:
        cumulative = row.get("cumulative") or {}
        argmax = cumulative.get("argmax_agreement")
        lines.append(f"| {row['tap']} | `{row['pytorch_module']}` | `{row['tf_layer']}` | {_fmt(cumulative)} | "
                     f"{_fmt(row.get('isolated'))} | {cumulative.get('cosine', float('nan')):.9f} | "
                     f"{'' if argmax is None else f'{100 * argmax:.2f}%'} |")
    if result.training:
        training = result.training
        lines += ["", "## Matcher, losses, gradients", "",
                  "Matcher (scipy on the host / in-graph XLA solver, against the PyTorch assignment): "
                  + ", ".join(f"{r['layer']} {'identical' if r['identical'] else 'DIFFERENT'}"
                              f"/{'identical' if r['in_graph_identical'] else 'DIFFERENT'}"
                              for r in training["matcher"]), "",
                  "| loss term | PyTorch | TensorFlow | rel. error end to end | rel. error isolated | "
                  "TF vs float64 | PyTorch vs float64 |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['term']} | {r['pytorch']:.7g} | {r['tensorflow']:.7g} | {r['rel_error_cumulative']:.1e} | "
                  f"{r['rel_error_isolated']:.1e} {'✓' if r['verdict'] == 'pass' else '✗'} | "
                  f"{_cell(r, 'tf_rel_error_vs_float64', '.1e')} | "
                  f"{_cell(r, 'reference_rel_error_vs_float64', '.1e')} |"
                  for r in training["losses"]]
        gradients = sorted(training["gradients"], key=lambda r: (r["analytically_zero"], r["cosine"]))
        lines += ["", f"Gradients: {sum(r['verdict'] == 'pass' for r in gradients)}/{len(gradients)} parameter "
                  "tensors pass (cosine ≥ 0.99999; both sides zero where the gradient is analytically zero). The "
                  "reference's cosine with itself under another thread count is context. Lowest cosines:", "",
                  "| TF variable | cosine TF vs PyTorch | PyTorch vs itself | rel. max error | TF vs float64 | "
                  "PyTorch vs float64 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| `{r['tf_variable']}` | {r['cosine']:.7f} | {r['reference_self_cosine']:.7f} | "
                  f"{r['rel_max_error']:.1e} | {_cell(r, 'tf_cosine_to_float64')} | "
                  f"{_cell(r, 'reference_cosine_to_float64')} |" for r in gradients[:8]]
        context = thread_count_context(gradients)
        if context:
            lines += ["", context + "."]
        if training.get("float64_reference"):
            f64 = float64_summary(gradients)
            lines += ["", "The float64 columns compare each float32 gradient with a float64 backward of the reference "
                      "(same assignment as float32: "
                      f"{training['float64_reference']['same_assignment_as_float32']}). Of the {f64['failing']} "
                      f"tensors below the bound, {f64['failing_with_reference_below_bound']} are ones where "
                      "PyTorch's own float32 gradient is below it against float64; TF is closer to float64 than "
                      f"PyTorch on {f64['failing_tf_closer']} of them."]
    lines += ["", "## Config lint", "", "| field | PyTorch | TensorFlow | same |", "| --- | --- | --- | --- |"]
    lines += [f"| {item['field']} | {item['pytorch']} | {item['tensorflow']} | {'✓' if item['same'] else '✗'} |"
              for item in result.lint]
    return "\n".join(lines) + "\n"


def _plot_png(result: ParityResult, meta: dict[str, object]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["tap"] for row in result.rows]
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.32), 4.5), dpi=100)
    for mode, marker in (("cumulative", "o"), ("isolated", "s")):
        xs = [i for i, row in enumerate(result.rows) if "rel_max_error" in (row.get(mode) or {})]
        ys = [max(result.rows[i][mode]["rel_max_error"], 1e-12) for i in xs]
        if xs:
            ax.semilogy(xs, ys, marker=marker, linestyle="-", label=mode)
        ax.axhline(meta["bounds"][mode], linestyle="--", linewidth=0.8,
                   color="C0" if mode == "cumulative" else "C1")
    if result.first_divergence:
        ax.axvline(names.index(result.first_divergence), color="red", linewidth=2, label="first divergence")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("max |tf − ref| / max |ref|")
    ax.set_title(f"{result.preset}: per-tap error ({result.profile})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def html(result: ParityResult, meta: dict[str, object], md_text: str) -> str:
    png = base64.b64encode(_plot_png(result, meta)).decode()
    rows = []
    for row in result.rows:
        cumulative = row.get("cumulative") or {}
        style = ' style="background:#fdd"' if row["tap"] == result.first_divergence else ""
        rows.append(f"<tr{style}><td>{row['tap']}</td><td><code>{row['pytorch_module']}</code></td>"
                    f"<td><code>{row['tf_layer']}</code></td><td>{_fmt(cumulative)}</td>"
                    f"<td>{_fmt(row.get('isolated'))}</td><td>{cumulative.get('mean_abs_error', float('nan')):.2e}</td>"
                    f"<td>{cumulative.get('share_outside_tolerance', float('nan')):.2e}</td></tr>")
    verdict = "PASS" if result.passed else "FAIL"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Parity {result.preset}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px solid #ddd;"
            "font-size:13px}</style></head><body>"
            f"<h1>Parity: {result.preset} — {verdict}</h1><p>First divergence: {result.first_divergence or 'none'}."
            f" Input {result.inputs['shape']}.</p><img alt='per-tap error' src='data:image/png;base64,{png}'>"
            "<table><tr><th>tap</th><th>PyTorch module</th><th>TF layer</th><th>cumulative rel. max</th>"
            "<th>isolated rel. max</th><th>mean abs</th><th>share outside tol.</th></tr>"
            + "".join(rows) + "</table></body></html>")


def write_reports(result: ParityResult, directory: str | Path, meta: dict[str, object]) -> dict[str, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"schema_version": SCHEMA_VERSION, **meta, **dataclasses.asdict(result)}
    md_text = markdown(result, meta)
    paths = {"json": directory / "report.json", "md": directory / "report.md", "html": directory / "report.html"}
    atomic_write(paths["json"], lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1, default=str)))
    atomic_write(paths["md"], lambda tmp: Path(tmp).write_text(md_text))
    atomic_write(paths["html"], lambda tmp: Path(tmp).write_text(html(result, meta, md_text)))
    return paths
