"""One self-contained HTML page for a comparison run (``mechedit report RUN_DIR``).

The page embeds plotly.js once (no network needed to view it) and shows: the per-layer probe accuracy with the
chosen range, the patching scores, the method comparison, relearning curves, latent probes before/after, the
representation diagnostics when they were computed, the verdict table with every input number, and the exact
command, versions and seeds that produced it.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from pathlib import Path

import plotly.graph_objects as go

from mechedit.compare import (
    CELL_LEGEND,
    COLUMNS,
    PAIRED_LEGEND,
    PAIRED_REFERENCES,
    Comparison,
    format_cell,
    paired_rows,
)
from mechedit.components import Head
from mechedit.plots.attacks import attack_sections
from mechedit.plots.patching import plot_patching
from mechedit.plots.probe_accuracy import plot_probe_accuracy
from mechedit.validate import atomic_write_text, read_json, require_keys


def comparison_figure(summary: Comparison) -> go.Figure:
    """Grouped bars: one group per metric, one bar per method (mean, bootstrap 95 % CI as error bars)."""
    fig = go.Figure()
    shown = [(h, k) for h, k in COLUMNS if k != "fluency_kl"
             and any(m["columns"][k]["mean"] is not None for m in summary.methods.values())]
    for method, m in summary.methods.items():
        cols = [m["columns"][k] for _, k in shown]
        fig.add_bar(name=method, x=[h for h, _ in shown], y=[c["mean"] for c in cols],
                    error_y={"type": "data", "symmetric": False,
                             "array": [c["high"] - c["mean"] if c.get("high") is not None else 0 for c in cols],
                             "arrayminus": [c["mean"] - c["low"] if c.get("low") is not None else 0 for c in cols]})
    fig.update_layout(barmode="group", title="Method comparison (mean, bootstrap 95 % CI over seeds × facts)",
                      yaxis={"title": "accuracy / error", "range": [0, 1.05]}, height=420)
    return fig


def _get(metrics: dict, path: str):
    """metrics["a"]["b"] for path "a.b" (None where missing)."""
    for part in path.split("."):
        if not isinstance(metrics, dict):
            return None
        metrics = metrics.get(part)
    return metrics


def curve_figure(summary: Comparison, key: str, title: str, xlabel: str, ylabel: str, x_key: str | None = None):
    """Lines of a per-run curve stored in metrics (dotted ``key``), one per method and seed; None if absent."""
    fig = go.Figure()
    for run in summary.runs:
        y = _get(run.metrics, key)
        if not y or not isinstance(y, list) or not all(isinstance(v, int | float) for v in y):
            continue
        x = _get(run.metrics, x_key) if x_key else None
        x = x if isinstance(x, list) and len(x) == len(y) else list(range(len(y)))
        fig.add_scatter(x=x, y=y, mode="lines+markers", name=f"{run.method} (seed {run.seed})")
    if not fig.data:
        return None
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, yaxis_range=[0, 1.05], height=380)
    return fig


def verdict_table(summary: Comparison) -> str:
    """HTML table: the verdict of every run beside the numbers it was derived from."""
    signals = list(dict.fromkeys(
        k for r in summary.runs for k in (_get(r.metrics, "verdict_inputs.signals") or {})))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["method", "seed", "verdict", *signals, "reasons"])
    rows = []
    for r in summary.runs:
        sig = _get(r.metrics, "verdict_inputs.signals") or {}
        cells = [html.escape(r.method), str(r.seed), f"<b>{html.escape(str(r.metrics.get('verdict')))}</b>"]
        for k in signals:
            v = (sig.get(k) or {}).get("value")
            t = (sig.get(k) or {}).get("threshold")
            cells.append("-" if v is None else f"{v:.3f}" + (f" (thr {t})" if t is not None else ""))
        reasons = _get(r.metrics, "verdict_inputs.reasons") or []
        cells.append(html.escape("; ".join(map(str, reasons))))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def summary_html(summary: Comparison) -> str:
    """The terminal summary table as HTML."""
    cols = [(h, k) for h, k in COLUMNS
            if any(m["columns"][k]["mean"] is not None for m in summary.methods.values())]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["method", *[h for h, _ in cols], "verdicts", "params"])
    rows = []
    for method, m in summary.methods.items():
        verdicts = ", ".join(f"{v}: {n}" for v, n in m["verdicts"].items())
        params = m["n_params"]["mean"]
        cells = [method, *[format_cell(m["columns"][k]) for _, k in cols], verdicts,
                 f"{params:,.0f}" if params else "-"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table><p>{html.escape(CELL_LEGEND)}.</p>"


def paired_html(summary: Comparison) -> str:
    """The paired difference tables (each method minus probe / nonlocalized) as HTML ('' when there are none)."""
    parts = []
    for ref in PAIRED_REFERENCES:
        headers, rows = paired_rows(summary, ref)
        if not rows:
            continue
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        parts.append(f"<h3>Against {html.escape(ref)}</h3><table><tr>{head}</tr>{body}</table>")
    if parts:
        parts.append(f"<p>{html.escape(PAIRED_LEGEND)}.</p>")
    return "".join(parts)


def localization_figures(summary: Comparison) -> list[tuple[str, go.Figure]]:
    """Probe-accuracy and patching figures from the methods' localizations (seed 0)."""
    figs = []
    for method in summary.methods:
        loc = next(r.localization for r in summary.runs if r.method == method)
        if loc.probe_accuracy is not None:
            figs.append((f"Per-layer probe accuracy ({method})", plot_probe_accuracy(loc)))
        elif any(isinstance(c, Head) for c in loc.scores):
            figs.append((f"Patching scores ({method})", plot_patching(loc)))
    return figs


def build_report(run_dir: str | Path) -> str:
    """The report page as an HTML string."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: RUN_DIR must be a directory written by `mechedit compare`")
    d = read_json(path, "comparison summary")
    require_keys(d, ("settings", "methods", "runs", "fact_pool", "elapsed_seconds"), str(path))
    Comparison.check_version(d, path)
    summary = Comparison.from_dict(d)
    sections: list[tuple[str, go.Figure]] = localization_figures(summary)
    sections.append(("Method comparison", comparison_figure(summary)))
    for key, x_key, title, xl, yl in (
        ("relearn.heldout_accuracy", "relearn.steps",
         "Relearning attack: true-answer accuracy on held-out forgotten facts", "step", "accuracy"),
        ("latent_probe_accuracy", None, "Latent probes: true answer decodable from the edited model", "layer",
         "accuracy"),
        ("diagnostics.cka", None, "Linear CKA between original and edited model", "layer", "CKA"),
    ):
        fig = curve_figure(summary, key, title, xl, yl, x_key)
        if fig is not None:
            sections.append((title, fig))
    sections += attack_sections(summary)  # one panel per input-side attack, with its control (none if not run)
    s = summary.settings
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mechedit report</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child{text-align:left}h2{margin-top:2em}code{background:#f6f6f6}</style>",
        "</head><body>",
        f"<h1>mechedit comparison: {html.escape(s.model)} on {html.escape(summary.fact_pool)}</h1>",
        f"<p>Objective <b>{html.escape(s.objective)}</b>, {s.n_facts} facts changed per seed, "
        f"{s.seeds} seed(s), {summary.n_known_facts} facts known by the model; "
        f"elapsed {summary.elapsed_seconds:.0f} s.</p>",
        "<h2>Summary</h2>", summary_html(summary),
        *(["<h2>Paired differences</h2>", paired_html(summary)] if paired_html(summary) else []),
        "<h2>Verdicts</h2>", verdict_table(summary),
    ]
    first = True
    for title, fig in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=first))
        first = False
    parts += [
        "<h2>Provenance</h2>",
        f"<p>Command: <code>{html.escape(summary.command or 'mechedit.compare.compare(...)')}</code></p>",
        f"<pre>{html.escape(json.dumps({'settings': asdict(s), 'versions': summary.versions}, indent=2))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html and return its path."""
    return atomic_write_text(Path(run_dir) / "report.html", build_report(run_dir))
