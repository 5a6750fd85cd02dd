"""Figures of the circuit explorer: the strongest direct-effect (extraction) heads, and one head's attention from
the last token over a prompt's tokens."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from mechedit.plots.patching import CHOSEN, OTHER


def plot_extraction_heads(top: Sequence[tuple[str, float]], title: str = "top extraction heads") -> go.Figure:
    """Horizontal bars of the heads with the largest direct effect on the answer logits, best on top."""
    if not top:
        raise ValueError("no heads to plot")
    labels = [label for label, _ in top]
    fig = go.Figure(go.Bar(x=[v for _, v in top], y=labels, orientation="h",
                           marker_color=[CHOSEN] + [OTHER] * (len(top) - 1),
                           hovertemplate="%{y}: direct effect %{x:.3f}<extra></extra>"))
    fig.update_layout(title=title, template="plotly_white", height=170 + 34 * len(top), showlegend=False,
                      xaxis_title="share of the clean − corrupted gap carried straight to the logits",
                      yaxis={"autorange": "reversed", "tickmode": "array", "tickvals": labels, "ticktext": labels},
                      margin={"l": 90})
    return fig


def plot_attention(tokens: Sequence[str], pattern: Sequence[float], head: str, subject: tuple[int, int] | None = None
                   ) -> go.Figure:
    """Bars of one head's attention from the last token to every token of one prompt; subject tokens in red."""
    if len(tokens) != len(pattern):
        raise ValueError(f"{len(tokens)} tokens but {len(pattern)} attention weights")
    xs = list(range(len(tokens)))
    in_subject = [subject is not None and subject[0] <= i <= subject[1] for i in xs]
    fig = go.Figure(go.Bar(x=xs, y=list(pattern), marker_color=[CHOSEN if s else OTHER for s in in_subject],
                           customdata=list(tokens), hovertemplate="'%{customdata}': %{y:.3f}<extra></extra>"))
    fig.update_layout(title=f"{head}: attention from the last token (subject tokens in red)", template="plotly_white",
                      height=340, showlegend=False, yaxis={"title": "attention weight", "range": [0, 1.02]},
                      xaxis={"title": "token", "tickmode": "array", "tickvals": xs,
                             "ticktext": [t.replace(" ", "·") for t in tokens], "tickangle": -45})
    return fig
