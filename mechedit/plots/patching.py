"""Figure of a patching-based Localization: a layer × head heatmap and per-layer MLP bars of its scores.

Chosen components are highlighted: chosen (and extraction) heads get an outlined square on the heatmap,
chosen MLPs a distinct bar colour. Only the scores stored in the Localization are used.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechedit.components import MLP, Head, parse_component
from mechedit.localize.localization import Localization

CHOSEN = "#d62728"
OTHER = "#9fb7d4"


def _split_scores(loc: Localization) -> tuple[dict[tuple[int, int], float], dict[int, float]]:
    heads: dict[tuple[int, int], float] = {}
    mlps: dict[int, float] = {}
    for c, v in loc.scores.items():
        if isinstance(c, Head):
            heads[(c.layer, c.head)] = v
        elif isinstance(c, MLP):
            mlps[c.layer] = v
    return heads, mlps


def plot_patching(loc: Localization) -> go.Figure:
    """Heatmap (layer × head) and bar chart (per-layer MLP) of ``loc.scores``, chosen components highlighted."""
    heads, mlps = _split_scores(loc)
    scored = bool(heads or mlps)
    if not scored:  # e.g. all-mlps / nonlocalized: show which components are chosen (1) instead of scores
        heads = {(c.layer, c.head): 1.0 for c in loc.heads}
        mlps = {c.layer: 1.0 for c in loc.mlps}
    if not heads and not mlps:
        raise ValueError(f"localization '{loc.method}' has no head or MLP scores and no head or MLP to plot")
    n_layers = int(loc.extra.get("n_layers") or 1 + max([k[0] for k in heads] + list(mlps), default=0))
    n_heads = int(loc.extra.get("n_heads") or 1 + max([k[1] for k in heads], default=0))
    panels = [p for p, has in (("heads", heads), ("mlps", mlps)) if has]
    titles = {"heads": "heads (layer × head)", "mlps": "MLPs per layer"}
    two = len(panels) == 2
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[titles[p] for p in panels],
                        column_widths=[0.55, 0.45] if two else None, horizontal_spacing=0.16 if two else 0.2)
    col = 1
    if heads:
        z = [[heads.get((layer, h), math.nan) for h in range(n_heads)] for layer in range(n_layers)]
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(n_heads)), y=list(range(n_layers)), colorscale="RdBu", zmid=0,
            colorbar={"title": "score", "x": 0.475 if two else 1.02, "thickness": 12, "len": 0.9},
            hovertemplate="head %{y}.%{x}: %{z:.3f}<extra></extra>",
        ), row=1, col=col)
        marked = {(c.layer, c.head) for c in loc.heads}
        marked |= {(c.layer, c.head) for c in map(parse_component, loc.extra.get("extraction_heads", []))}
        if marked:
            fig.add_trace(go.Scatter(
                x=[h for _, h in sorted(marked)], y=[layer for layer, _ in sorted(marked)], mode="markers",
                marker={"symbol": "square-open", "size": 22, "color": CHOSEN, "line": {"width": 3}},
                name="chosen / extraction heads", hoverinfo="skip",
            ), row=1, col=col)
        fig.update_xaxes(title_text="head", dtick=1, row=1, col=col)
        fig.update_yaxes(title_text="layer", dtick=1, row=1, col=col)
        col += 1
    if mlps:
        chosen = set(loc.layers)
        layers = list(range(n_layers))
        fig.add_trace(go.Bar(
            x=layers, y=[mlps.get(layer, 0.0) for layer in layers],
            marker_color=[CHOSEN if layer in chosen else OTHER for layer in layers], name="MLP score",
            hovertemplate="mlp.%{x}: %{y:.3f}<extra></extra>",
        ), row=1, col=col)
        fig.update_xaxes(title_text="layer", dtick=1 if n_layers <= 32 else 2, row=1, col=col)
        fig.update_yaxes(title_text="score", row=1, col=col)
    note = "chosen in red" if scored else "no scores stored: chosen components shown as 1"
    fig.update_layout(title=f"{loc.method} localization: {len(loc.components)} components, "
                            f"{loc.n_params:,} parameters ({note})", showlegend=False,
                      height=max(380, 18 * n_layers + 160), width=1000)
    return fig
