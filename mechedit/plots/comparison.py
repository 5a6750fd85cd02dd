"""Figures of a method comparison (``mechedit compare``'s ``Comparison``): the forest plot of paired differences
and per-method mean curves with a 95 % band, per-seed lines behind a toggle.

Every figure colours a method the same way (``method_colors``), so a reader can follow one method across figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechedit.compare import MethodRun
from mechedit.stats import bootstrap_ci

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """One colour per method, in the order given (the comparison's method order), so figures agree."""
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def forest_figure(paired: Mapping[str, Mapping[str, Mapping[str, dict]]], columns: Sequence[tuple[str, str]],
                  methods: Sequence[str]) -> go.Figure | None:
    """Forest plot: one panel per reference, one row per (metric, method), the paired difference with its 95 % CI.

    ``paired`` is summary.json's ``paired`` (reference -> method -> column key -> interval dict); ``columns`` the
    (header, key) pairs to show, top to bottom. A filled dot's interval excludes 0, an open one contains it. None
    when there is no paired table (a single method, or neither reference ran).
    """
    refs = [r for r in paired if paired[r]]
    if not refs:
        return None
    shown = [(h, k) for h, k in columns
             if any(cols.get(k, {}).get("mean") is not None for r in refs for cols in paired[r].values())]
    if not shown:
        return None
    colors = method_colors(methods)
    others = [m for m in methods if any(m in paired[r] for r in refs)]
    # rows top to bottom: metric groups in column order, methods in comparison order within each
    rows = [(h, k, m) for h, k in shown for m in others]
    fig = make_subplots(rows=1, cols=len(refs), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[f"method − {r}" for r in refs])
    # an empty trace over every row fixes the row order (multicategory axes order rows by first appearance)
    fig.add_scatter(x=[None] * len(rows), y=[[h for h, _, _ in rows], [m for _, _, m in rows]], mode="markers",
                    showlegend=False, hoverinfo="skip", row=1, col=1)
    legend: set[str] = set()
    for col, ref in enumerate(refs, start=1):
        for m in others:
            if m not in paired[ref]:
                continue
            ys: list[list[str]] = [[], []]
            xs, lo, hi, filled, text = [], [], [], [], []
            for h, k, mm in rows:
                stat = paired[ref][m].get(k) or {}
                if mm != m or stat.get("mean") is None:
                    continue
                mean, low, high = stat["mean"], stat.get("low"), stat.get("high")
                ys[0].append(h)
                ys[1].append(m)
                xs.append(mean)
                lo.append(0.0 if low is None else mean - low)
                hi.append(0.0 if high is None else high - mean)
                filled.append(low is not None and high is not None and not low <= 0.0 <= high)
                ci = "no interval" if low is None or high is None else f"95 % CI [{low:.3f}, {high:.3f}]"
                text.append(f"{h}: {m} − {ref} = {mean:+.3f}, {ci}, n = {stat.get('n')}")
            if not xs:
                continue
            c = colors[m]
            fig.add_scatter(
                x=xs, y=ys, mode="markers", name=m, legendgroup=m, showlegend=m not in legend,
                legendrank=100 + list(methods).index(m),  # legend in the comparison's method order
                error_x={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo, "color": c,
                         "thickness": 2, "width": 4},
                marker={"color": [c if f else "white" for f in filled], "size": 9, "symbol": "circle",
                        "line": {"color": c, "width": 2}},
                hovertext=text, hoverinfo="text", row=1, col=col)
            legend.add(m)
        fig.add_vline(x=0, line_color="black", line_width=1, row=1, col=col)
        fig.update_xaxes(title_text=f"difference from {ref}", zeroline=False, row=1, col=col)
    n_rows = len(rows)
    fig.update_yaxes(autorange="reversed", type="multicategory", tickfont={"size": 11})
    fig.update_layout(title="Paired differences: each method minus the reference, same seeds and facts (95 % CI)",
                      height=max(360, 17 * n_rows + 150), template="plotly_white", legend_title_text="method",
                      margin={"l": 10, "r": 10, "t": 70, "b": 50})
    return fig


def _series(values: object) -> list[float] | None:
    """The list of numbers (None kept as gaps), or None when it is not a non-empty list of numbers."""
    if not isinstance(values, list) or not values:
        return None
    if not all(v is None or isinstance(v, int | float) for v in values):
        return None
    return [None if v is None else float(v) for v in values]


def mean_curve_figure(curves: Mapping[str, Mapping[int, tuple[Sequence[float], Sequence[float | None]]]],
                      methods: Sequence[str], *, title: str, xlabel: str, ylabel: str,
                      y_range: tuple[float, float] | None = (-0.02, 1.02),
                      references: Mapping[str, float] | None = None,
                      baseline: tuple[str, Sequence[int], Sequence[float]] | None = None) -> go.Figure | None:
    """One line per method (mean over seeds at each x) with a bootstrap 95 % band over seeds; per-seed lines hidden
    behind the figure's "per-seed lines" button. ``curves``: method -> seed -> (x values, y values). x is integer
    (layers, steps): the axis shows only integer ticks. ``references``: labelled horizontal lines (chance, the
    original model); ``baseline``: (label, x, y) of a grey dashed reference curve (e.g. the original model per
    layer). None when no method has a curve."""
    colors = method_colors(methods)
    fig = go.Figure()
    if baseline is not None and any(curves.values()):
        label, bx, by = baseline
        fig.add_scatter(x=[int(v) for v in bx], y=list(by), mode="lines", name=label, legendrank=1,
                        line={"color": "grey", "dash": "dash", "width": 2},
                        hovertemplate=f"{label}: %{{y:.3f}} at {xlabel} %{{x}}<extra></extra>")
    for i, (label, y) in enumerate((references or {}).items()):
        fig.add_hline(y=y, line_dash="dash" if i == 0 else "dot", line_color="grey", annotation_text=label,
                      annotation_position="bottom left" if i == 0 else "top left",
                      annotation_font={"color": "grey", "size": 11})
    seed_traces: list[int] = []
    for m in methods:
        per_seed = curves.get(m) or {}
        if not per_seed:
            continue
        xs = sorted({int(x) for x, _ in per_seed.values() for x in x})
        lines = [dict(zip((int(v) for v in x), y, strict=True)) for x, y in per_seed.values()]
        mean, low, high = [], [], []
        for x in xs:
            iv = bootstrap_ci([ln[x] for ln in lines if ln.get(x) is not None])
            mean.append(iv.mean)
            low.append(iv.low if iv.low is not None else iv.mean)
            high.append(iv.high if iv.high is not None else iv.mean)
        c = colors[m]
        fig.add_scatter(x=xs, y=high, mode="lines", line={"width": 0}, legendgroup=m, showlegend=False,
                        hoverinfo="skip")
        fig.add_scatter(x=xs, y=low, mode="lines", line={"width": 0}, fill="tonexty", fillcolor=_rgba(c, 0.18),
                        legendgroup=m, showlegend=False, hoverinfo="skip")
        fig.add_scatter(x=xs, y=mean, mode="lines+markers", name=f"{m} (mean of {len(lines)})", legendgroup=m,
                        line={"color": c, "width": 2.5}, marker={"size": 6},
                        customdata=list(zip(low, high, strict=True)),
                        hovertemplate=f"{m}: %{{y:.3f}} [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}] at "
                                      f"{xlabel} %{{x}}<extra></extra>")
        for seed, (x, y) in sorted(per_seed.items()):
            seed_traces.append(len(fig.data))
            fig.add_scatter(x=[int(v) for v in x], y=y, mode="lines", legendgroup=m, showlegend=False, visible=False,
                            line={"color": c, "width": 1, "dash": "dot"}, opacity=0.7,
                            hovertemplate=f"{m} seed {seed}: %{{y:.3f}} at {xlabel} %{{x}}<extra></extra>")
    if not fig.data:
        return None
    hidden = [i not in seed_traces for i in range(len(fig.data))]
    shown = [True] * len(fig.data)
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"}, template="plotly_white", height=420,
        legend_title_text="method (band: 95 % CI over seeds)",
        xaxis={"title": xlabel, **_int_ticks(fig)},
        yaxis={"title": ylabel, **({"range": list(y_range)} if y_range else {})},
        updatemenus=[{"type": "buttons", "direction": "right", "x": 1, "xanchor": "right", "y": 1.02,
                      "yanchor": "bottom", "showactive": True, "pad": {"r": 0, "t": 0}, "font": {"size": 11},
                      "buttons": [{"label": "mean ± 95 % CI", "method": "restyle", "args": [{"visible": hidden}]},
                                  {"label": "+ per-seed lines", "method": "restyle",
                                   "args": [{"visible": shown}]}]}],
        margin={"t": 90})
    return fig


def _int_ticks(fig: go.Figure) -> dict:
    """x-axis tick settings that show whole numbers only: the data's own x values when there are at most 16
    (e.g. layers, or attack steps 0, 5, 10), else a whole-number step keeping about 12 ticks."""
    xs = sorted({int(x) for tr in fig.data for x in (tr.x or ())})
    if len(xs) <= 16:
        return {"tickmode": "array", "tickvals": xs, "ticktext": [str(x) for x in xs]}
    span = xs[-1] - xs[0]
    step = next((s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000) if span / s <= 12), span // 10)
    return {"tickformat": "d", "dtick": max(1, step)}


def run_curves(runs: Sequence[MethodRun], key: str, x_key: str | None = None
               ) -> dict[str, dict[int, tuple[list[int], list[float | None]]]]:
    """method -> seed -> (x, y) of a per-run curve stored in each run's metrics at dotted ``key`` (x at ``x_key``,
    else 0, 1, ...); runs without the curve are skipped."""
    out: dict[str, dict[int, tuple[list[int], list[float | None]]]] = {}
    for run in runs:
        y = _series(_dotted(run.metrics, key))
        if y is None:
            continue
        x = _dotted(run.metrics, x_key) if x_key else None
        x = [int(v) for v in x] if isinstance(x, list) and len(x) == len(y) else list(range(len(y)))
        out.setdefault(run.method, {})[run.seed] = (x, y)
    return out


def _dotted(d, path: str):
    """``d["a"]["b"]`` for ``"a.b"`` (None where a level is missing)."""
    for part in path.split("."):
        if not isinstance(d, Mapping):
            return None
        d = d.get(part)
    return d
