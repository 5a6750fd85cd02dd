"""One self-contained HTML page for a comparison run (``mechedit report RUN_DIR``), readable at a glance.

Top to bottom: the forest plot of paired differences (each method minus ``probe`` and minus ``nonlocalized``, 95 %
CIs, zero line), the summary table (mean and CI on one line, never wrapped), the verdicts condensed to one row per
method (reasons per run behind a click), the relearning and latent curves (mean per method with a 95 % band,
per-seed lines behind a button), the localization figures, the paired numbers, and the command, versions and
seeds. Each figure has a one-line "how to read this". plotly.js is embedded once in the page head, so the page
needs no network and every figure can sit in any section: the page is a list of ``Section``s, and a new kind of
result adds its sections in ``report_sections``.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from mechedit.compare import COLUMNS, PAIRED_REFERENCES, Comparison, MethodRun
from mechedit.components import Head
from mechedit.plots.attacks import attack_sections
from mechedit.plots.comparison import forest_figure, mean_curve_figure, method_colors, run_curves
from mechedit.plots.patching import plot_patching
from mechedit.plots.probe_accuracy import plot_probe_accuracy
from mechedit.validate import atomic_write_text, read_json, require_keys

# direction of each summary column: +1 higher is better, -1 lower is better (the forest plot's how-to-read)
BETTER = {"edit_accuracy": 1, "forget_accuracy": -1, "maintain_accuracy": 1, "mcq_edit_accuracy": 1,
          "mcq_forget_error": 1, "paraphrase_edit_accuracy": 1, "relearn_accuracy": -1, "soft_prompt_signal": -1,
          "in_context_signal": -1, "latent_probe_max": -1, "fluency_kl": -1}
DECISIVE = ("behaviour", "relearning", "soft-prompt", "in-context", "latent")  # drift is informative only

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1240px;margin:1.5em auto;padding:0 12px;
     color:#222;font-size:15px;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{margin:1.8em 0 .4em;font-size:1.2em;border-bottom:1px solid #ddd}
.meta{color:#555;margin-top:0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.5em 0;font-size:12.5px}
td,th{border:1px solid #d6d6d6;padding:3px 5px;vertical-align:top}
th{background:#f3f3f3;font-weight:600;text-align:center}
td.num{white-space:nowrap;text-align:right;font-variant-numeric:tabular-nums}
td.name{white-space:nowrap;font-weight:600}
td.txt{white-space:nowrap;text-align:left}
.ci{color:#666;font-size:90%}
.how{color:#555;font-size:13px;margin:.2em 0 .8em;max-width:1100px}
.how b{color:#333}
details{margin:.1em 0}summary{cursor:pointer;white-space:nowrap}
details ul{margin:.2em 0 .4em 1.2em;padding:0;font-size:12.5px;max-width:640px}
.verdict-removed{color:#1a7f37;font-weight:600}.verdict-suppressed{color:#b42318;font-weight:600}
.dot{display:inline-block;width:.7em;height:.7em;border-radius:50%;margin-right:.35em}
code{background:#f6f6f6;padding:0 .2em}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:12px}
nav{font-size:13px;color:#555}nav a{margin-right:.8em}
"""


@dataclass(frozen=True)
class Section:
    """One part of the page: a heading, its HTML body and a one-line 'how to read this' under it."""

    title: str
    body: str
    how_to_read: str = ""

    @property
    def anchor(self) -> str:
        """The section's id in the page (for the contents line)."""
        return "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")

    def to_html(self) -> str:
        """The section as HTML."""
        how = f'<p class="how"><b>How to read this:</b> {self.how_to_read}</p>' if self.how_to_read else ""
        return f'<section id="{self.anchor}"><h2>{html.escape(self.title)}</h2>{self.body}{how}</section>'


def figure_section(title: str, fig: go.Figure, how_to_read: str) -> Section:
    """A section holding one plotly figure (drawn by the page's single embedded plotly.js)."""
    div = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})
    return Section(title, f'<div class="figure">{div}</div>', how_to_read)


def _digits(key: str) -> int:
    """Decimals of a column: two for accuracies and errors (steps of 1/16 and coarser), three for fluency KL."""
    return 3 if key == "fluency_kl" else 2


def interval_cell(stat: Mapping, digits: int = 2, signed: bool = False) -> str:
    """A ``<td>`` with the mean and its 95 % CI on one line (never wrapped); SD and n in the hover title."""
    mean = stat.get("mean")
    if mean is None:
        note = html.escape(str(stat.get("note") or "not measured"))
        return f'<td class="num" title="{note}">–</td>'
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    text = fmt.format(mean).replace("-", "−")
    low, high = stat.get("low"), stat.get("high")
    if low is not None and high is not None:
        ci = f"[{fmt.format(low)}, {fmt.format(high)}]".replace("-", "−")
        text += f' <span class="ci">{ci}</span>'
    title = [f"mean {mean:.4f}"]
    if stat.get("sd") is not None:
        title.append(f"SD of per-seed means {stat['sd']:.4f}")
    if low is not None and high is not None:
        title.append(f"95 % CI [{low:.4f}, {high:.4f}]")
    title.append(f"n = {stat.get('n')}" + (f" over {stat['over']}" if stat.get("over") else ""))
    if stat.get("note"):
        title.append(str(stat["note"]))
    return f'<td class="num" title="{html.escape(", ".join(title))}">{text}</td>'


def _swatch(color: str) -> str:
    return f'<span class="dot" style="background:{color}"></span>'


def _shown_columns(tables: Sequence[Mapping[str, Mapping]]) -> list[tuple[str, str]]:
    """The summary columns that at least one method measured."""
    return [(h, k) for h, k in COLUMNS if any((t.get(k) or {}).get("mean") is not None for t in tables)]


def _params(n: float | None) -> str:
    if not n:
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def summary_table(summary: Comparison) -> str:
    """One row per method: mean [95 % CI] of every measured column and the trained parameter count."""
    methods = summary.methods
    colors = method_colors(list(methods))
    shown = _shown_columns([m["columns"] for m in methods.values()])
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["method", *[h for h, _ in shown], "params"])
    rows = []
    for name, m in methods.items():
        cells = [f'<td class="name">{_swatch(colors[name])}{html.escape(name)}</td>']
        cells += [interval_cell(m["columns"][k], _digits(k)) for _, k in shown]
        cells.append(f'<td class="num">{_params(m["n_params"]["mean"])}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(rows)}</table></div>'


def paired_tables(summary: Comparison) -> str:
    """The paired differences (each method minus each reference) as numbers, one table per reference."""
    parts = []
    for ref in PAIRED_REFERENCES:
        table = summary.paired.get(ref) or {}
        if not table:
            continue
        shown = _shown_columns(list(table.values()))
        head = "".join(f"<th>{html.escape(h)}</th>" for h in [f"method − {ref}", *[h for h, _ in shown]])
        body = "".join(f'<tr><td class="name">{html.escape(m)}</td>'
                       + "".join(interval_cell(cols[k], _digits(k), signed=True) for _, k in shown) + "</tr>"
                       for m, cols in table.items())
        parts.append(f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>')
    return "".join(parts)


def deciding_signal(verdict_inputs: Mapping) -> tuple[str | None, float | None, float | None]:
    """(signal, value, threshold) that decided one run's verdict: for ``suppressed`` the signal furthest above its
    threshold, for ``removed`` the decisive signal closest to its threshold (the first that would flip it)."""
    signals = verdict_inputs.get("signals") or {}
    measured = {k: s for k, s in signals.items() if k in DECISIVE and s.get("value") is not None}
    if verdict_inputs.get("verdict") == "suppressed":
        measured = {k: s for k, s in measured.items() if s.get("says") == "suppressed"} or measured
    if not measured:
        return None, None, None
    name = max(measured, key=lambda k: measured[k]["value"] - (measured[k].get("threshold") or 0.0))
    return name, measured[name]["value"], measured[name].get("threshold")


def _deciding_cell(runs: Sequence[MethodRun]) -> tuple[str, str, str]:
    """(signal, value, threshold) cells: one line per verdict, its most common deciding signal and mean value."""
    by_verdict: dict[str, list] = {}
    for r in runs:
        by_verdict.setdefault(str(r.metrics.get("verdict")), []).append(
            deciding_signal(r.metrics.get("verdict_inputs") or {}))
    sig, val, thr = [], [], []
    for verdict, decided in sorted(by_verdict.items(), key=lambda kv: -len(kv[1])):
        top = Counter(d[0] for d in decided if d[0]).most_common(1)
        if not top:
            sig.append("none measured")
            val.append("–")
            thr.append("–")
            continue
        name = top[0][0]
        values = [d[1] for d in decided if d[0] == name]
        threshold = next(d[2] for d in decided if d[0] == name)
        prefix = f'<span class="ci">{html.escape(verdict)}:</span> ' if len(by_verdict) > 1 else ""
        sig.append(f'{prefix}{html.escape(name)} <span class="ci">{len(values)}/{len(decided)}</span>')
        text = f"{sum(values) / len(values):.2f}"
        if len(values) > 1 and max(values) - min(values) > 0.005:
            text += f' <span class="ci">({min(values):.2f}–{max(values):.2f})</span>'
        val.append(text)
        thr.append("–" if threshold is None else f"{threshold:g}")
    return "<br>".join(sig), "<br>".join(val), "<br>".join(thr)


def verdict_table(summary: Comparison) -> str:
    """One row per method: verdict counts, the deciding signal with its value over runs, reasons per run."""
    colors = method_colors(list(summary.methods))
    rows = []
    for name in summary.methods:
        runs = [r for r in summary.runs if r.method == name]
        counts = Counter(str(r.metrics.get("verdict")) for r in runs)
        verdicts = "<br>".join(f'<span class="verdict-{html.escape(v)}">{html.escape(v)}</span> {n}/{len(runs)}'
                               for v, n in counts.most_common())
        signal, value, threshold = _deciding_cell(runs)
        details = "".join(
            f"<details><summary>seed {r.seed}: {html.escape(str(r.metrics.get('verdict')))}</summary><ul>"
            + "".join(f"<li>{html.escape(str(x))}</li>"
                      for x in (r.metrics.get("verdict_inputs") or {}).get("reasons") or ["no reasons recorded"])
            + "</ul></details>" for r in runs)
        rows.append(f'<tr><td class="name">{_swatch(colors[name])}{html.escape(name)}</td>'
                    f'<td class="txt">{verdicts}</td><td class="txt">{signal}</td><td class="num">{value}</td>'
                    f'<td class="num">{threshold}</td><td>{details}</td></tr>')
    head = "".join(f"<th>{h}</th>" for h in ("method", "verdicts", "deciding signal (runs)", "its mean value (range)",
                                             "threshold", "reasons per run"))
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(rows)}</table></div>'


def _mean(values: Sequence) -> float | None:
    vals = [float(v) for v in values if isinstance(v, int | float)]
    return sum(vals) / len(vals) if vals else None


def _before_edit(latent: Sequence[Mapping]) -> tuple[str, list[int], list[float]] | None:
    """The original model's per-layer latent accuracy (best of the positions, mean over runs), the curve the edited
    models are read against; None when no run kept it."""
    curves = [[max(v) for v in zip(*lat["original_before"].values(), strict=True)]
              for lat in latent if isinstance(lat.get("original_before"), Mapping) and lat["original_before"]]
    if not curves or len({len(c) for c in curves}) != 1:
        return None
    mean = [sum(v) / len(v) for v in zip(*curves, strict=True)]
    return "original model (before the edit)", list(range(len(mean))), mean


def relearn_figure(summary: Comparison) -> go.Figure | None:
    """Held-out true-answer accuracy during the relearning attack: mean line per method, 95 % band over seeds."""
    relearn = [r.metrics.get("relearn") or {} for r in summary.runs]
    refs = {label: v for label, v in (
        ("chance", _mean([r.get("chance") for r in relearn])),
        ("original model", _mean([r.get("original_heldout_accuracy") for r in relearn]))) if v is not None}
    return mean_curve_figure(run_curves(summary.runs, "relearn.heldout_accuracy", "relearn.steps"),
                             list(summary.methods),
                             title="Relearning attack: true-answer accuracy on held-out forgotten facts",
                             xlabel="attack step", ylabel="true-answer accuracy", references=refs)


def latent_figure(summary: Comparison) -> go.Figure | None:
    """Per-layer latent-probe accuracy for the true answer: mean line per method, the original model dashed."""
    latent = [r.metrics.get("latent") or {} for r in summary.runs]
    return mean_curve_figure(run_curves(summary.runs, "latent_probe_accuracy"), list(summary.methods),
                             title="Latent probes: true answer decodable from the edited model",
                             xlabel="layer", ylabel="probe accuracy (true answer)",
                             references={"chance": c} if (c := _mean([lat.get("chance") for lat in latent])) else None,
                             baseline=_before_edit(latent))


def cka_figure(summary: Comparison) -> go.Figure | None:
    """Per-layer linear CKA between the original and the edited model: mean line per method."""
    return mean_curve_figure(run_curves(summary.runs, "diagnostics.cka"), list(summary.methods),
                             title="Linear CKA between the original and the edited model", xlabel="layer",
                             ylabel="linear CKA")


def paired_figure(summary: Comparison) -> go.Figure | None:
    """The forest plot of paired differences (method − probe, method − nonlocalized) with 95 % CIs."""
    return forest_figure(summary.paired, COLUMNS, list(summary.methods))


def probe_accuracy_figure(summary: Comparison) -> go.Figure | None:
    """The probe localization's per-layer probe accuracy (seed 0), if the comparison ran it."""
    loc = next((r.localization for r in summary.runs if r.localization.probe_accuracy is not None), None)
    return None if loc is None else plot_probe_accuracy(loc)


FIGURES = {"paired": paired_figure, "relearn": relearn_figure, "latent": latent_figure, "cka": cka_figure,
           "probe_accuracy": probe_accuracy_figure}  # the figures write_figures exports, by file name


def write_figures(summary: Comparison, out_dir: str | Path, fmt: str = "png", scale: float = 2.0) -> list[Path]:
    """Write each figure of ``FIGURES`` the comparison has as ``out_dir/<name>.<fmt>`` (images need kaleido and
    Chrome/Chromium); returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in FIGURES.items():
        fig = make(summary)
        if fig is None:
            continue
        path = out / f"{name}.{fmt}"
        fig.layout.updatemenus = ()  # the page's buttons do nothing in an image (update_layout would merge)
        fig.write_image(path, format=fmt, width=1100, height=fig.layout.height or 560, scale=scale)
        written.append(path)
    return written


def curve_sections(summary: Comparison) -> list[Section]:
    """Relearning, latent-probe and CKA curves: one line per method with a 95 % band over seeds."""
    toggle = " The button above the figure adds each seed's own line."
    out = []
    if (fig := relearn_figure(summary)) is not None:
        out.append(figure_section(
            "Relearning attack", fig,
            "the attack fine-tunes the edited model on half of the changed facts' true answers; each line is the "
            "true-answer accuracy on the other half, which it never trains on (mean over seeds, band: bootstrap "
            "95 % CI over seeds). A line that climbs towards the original model's accuracy means those facts were "
            "suppressed, not removed; a line that stays near chance means they did not come back." + toggle))
    if (fig := latent_figure(summary)) is not None:
        out.append(figure_section(
            "Latent probes", fig,
            "per layer, how often probes fitted on the original model still read the old (true) answer from the "
            "edited model's residual stream on the changed facts (best of the two token positions; mean over seeds, "
            "band: 95 % CI over seeds), against the same probes on the original model (grey dashed) and chance. "
            "A line near the grey one means the answer is still inside the model even if it is no longer said; "
            "near chance, the probes no longer find it." + toggle))
    if (fig := cka_figure(summary)) is not None:
        out.append(figure_section(
            "Representation drift (CKA)", fig,
            "1 means the layer's representations of the changed facts are unchanged by the edit, lower values mean "
            "they moved; a removal with CKA near 1 everywhere rests on a small change." + toggle))
    return out


def localization_sections(summary: Comparison) -> list[Section]:
    """Probe-accuracy and patching figures of each method's first run (seed 0)."""
    out = []
    for method in summary.methods:
        loc = next(r.localization for r in summary.runs if r.method == method)
        if loc.probe_accuracy is not None:
            out.append(figure_section(
                f"Per-layer probe accuracy ({method}, seed 0)", plot_probe_accuracy(loc),
                "test accuracy of a linear probe for the answer at each layer's residual stream; the shaded MLP "
                "range is where the answer becomes decodable, the components the probe localization edits."))
        elif any(isinstance(c, Head) for c in loc.scores):
            out.append(figure_section(
                f"Patching scores ({method}, seed 0)", plot_patching(loc),
                "share of the clean-vs-corrupted logit difference each head (left) and MLP (right) carries; "
                "outlined heads and red MLPs are the components this localization chose."))
    return out


def report_sections(summary: Comparison) -> list[Section]:
    """Every section of the page, in reading order; a new kind of result adds its sections here."""
    better = [h for h, k in COLUMNS if BETTER[k] > 0]
    worse = [h for h, k in COLUMNS if BETTER[k] < 0]
    sections = []
    fig = paired_figure(summary)
    if fig is not None:
        sections.append(figure_section(
            "Paired differences", fig,
            "each dot is a method's mean difference from the reference (panel title) on the same seeds and facts, "
            "the bar its bootstrap 95 % CI. <b>Filled</b>: the interval excludes 0, a difference this run shows; "
            "<b>open</b>: it contains 0, no difference at this size. Higher is better for "
            f"{', '.join(better)}; lower is better for {', '.join(worse)}. Hover a dot for its numbers."))
    sections.append(Section(
        "Summary", summary_table(summary),
        "mean <span class='ci'>[bootstrap 95 % CI]</span> per method; the interval resamples seeds, then facts "
        "within each seed (relearn and latent: one number per run, so over seeds only; fluency KL: over held-out "
        "texts). Hover a cell for the SD of the per-seed means and n. params: parameters the edit trained."))
    sections.append(Section(
        "Verdicts", verdict_table(summary),
        "removed or suppressed per run (seed). The deciding signal is, for suppressed runs, the signal furthest "
        "above its threshold and, for removed runs, the decisive signal closest to its threshold (the first that "
        "would flip the verdict); values are on a 0–1 scale (0: the old fact is gone, 1: as present as in the "
        "original model). Click a seed for every number the verdict used."))
    sections += curve_sections(summary)
    sections += [figure_section(title, fig, "per method, the mean over seeds of the attack's held-out true-answer "
                                "accuracy beside its controls (never-known facts, prior-only) and the original model; "
                                "the signal counts only recovery above the larger control")
                 for title, fig in attack_sections(summary)]  # one panel per input-side attack that ran
    sections += localization_sections(summary)
    paired = paired_tables(summary)
    if paired:
        sections.append(Section(
            "Paired differences as numbers",
            f"<details><summary>show the tables</summary>{paired}</details>",
            "method − reference on the same seeds and facts: mean <span class='ci'>[bootstrap 95 % CI]</span>; an "
            "interval that contains 0 shows no difference at this size."))
    return sections


def provenance_section(summary: Comparison) -> Section:
    """The exact command, settings and package versions that produced the run."""
    command = html.escape(summary.command or "mechedit.compare.compare(...)")
    record = {"settings": asdict(summary.settings), "versions": summary.versions}
    body = (f"<p>Command: <code>{command}</code></p>"
            f"<pre>{html.escape(json.dumps(record, indent=2))}</pre>")
    return Section("Provenance", body)


def render_page(title: str, intro: str, sections: Sequence[Section]) -> str:
    """The whole page: plotly.js once in the head, a contents line, then every section."""
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    return "\n".join([
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>{intro}<nav>{nav}</nav>",
        *(s.to_html() for s in sections),
        "</body></html>",
    ])


def build_report(run_dir: str | Path) -> str:
    """The report page of a ``mechedit compare`` output directory, as an HTML string."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: RUN_DIR must be a directory written by `mechedit compare`")
    d = read_json(path, "comparison summary")
    require_keys(d, ("settings", "methods", "runs", "fact_pool", "elapsed_seconds"), str(path))
    Comparison.check_version(d, path)
    summary = Comparison.from_dict(d)
    s = summary.settings
    intro = (f"<p class='meta'>Objective <b>{html.escape(s.objective)}</b> · {s.n_facts} facts changed per seed · "
             f"{s.seeds} seed(s) · {summary.n_known_facts} facts known by the model · "
             f"elapsed {summary.elapsed_seconds:.0f} s</p>")
    title = f"mechedit comparison: {s.model} on {summary.fact_pool}"
    return render_page(title, intro, [*report_sections(summary), provenance_section(summary)])


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html and return its path."""
    return atomic_write_text(Path(run_dir) / "report.html", build_report(run_dir))
