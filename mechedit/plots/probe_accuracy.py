"""Per-layer probe-accuracy figure: several curves (full vs subject-only, before vs after an edit), the chosen
MLP range shaded and the chance level marked."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from mechedit.localize.localization import Localization

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
DASHES = ("solid", "dash", "dot", "dashdot")  # identical curves stay visible on top of each other
EMBED_X = -1  # x position of the embedding (baseline) point


def _from_localization(loc: Localization) -> tuple[dict, dict, tuple[int, int] | None, float | None]:
    """Curves, embedding accuracies, chosen range and chance stored by the probe localizer."""
    curves = loc.extra.get("curves") or ({"probe": loc.probe_accuracy} if loc.probe_accuracy is not None else None)
    if not curves:
        raise ValueError(f"localization '{loc.method}' has no probe accuracy curve to plot")
    rng = loc.extra.get("chosen_range")
    if rng is None and loc.layers:
        rng = [min(loc.layers), max(loc.layers)]
    chosen_on = loc.extra.get("chosen_on")
    if chosen_on in curves:  # the curve the choice was made on comes first
        curves = {chosen_on: curves[chosen_on], **{k: v for k, v in curves.items() if k != chosen_on}}
    return dict(curves), dict(loc.extra.get("embed_accuracy") or {}), tuple(rng) if rng else None, \
        loc.extra.get("chance")


def plot_probe_accuracy(
    data: Localization | Mapping[str, Sequence[float]],
    *,
    chosen: tuple[int, int] | None = None,
    chance: float | None = None,
    embed: Mapping[str, float] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Probe accuracy per layer for each named curve; ``chosen`` (first, last layer) shaded, ``chance`` dashed.

    ``data`` is a probe Localization (its curves, embedding baselines, chosen range and chance are used unless
    overridden) or a dict name -> accuracy after each layer. ``embed`` adds each curve's embedding accuracy at
    x = "emb".
    """
    if isinstance(data, Localization):
        curves, loc_embed, loc_chosen, loc_chance = _from_localization(data)
        embed = loc_embed if embed is None else embed
        chosen = loc_chosen if chosen is None else chosen
        chance = loc_chance if chance is None else chance
        title = title or f"probe accuracy per layer ({data.extra.get('relation', 'facts')})"
    elif isinstance(data, Mapping):
        curves = {str(k): list(v) for k, v in data.items()}
    else:
        raise TypeError(f"expected a Localization or a dict name -> per-layer accuracies, got {type(data).__name__}")
    if not curves:
        raise ValueError("no curves to plot")
    lengths = {name: len(v) for name, v in curves.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(f"curves must be non-empty and of equal length (one value per layer), got {lengths}")
    for name, values in curves.items():
        bad = [v for v in values if v is None or not math.isfinite(v)]
        if bad:
            raise ValueError(f"curve {name!r} has non-finite values {bad[:3]}")
    n_layers = next(iter(lengths.values()))
    if chosen is not None and not 0 <= chosen[0] <= chosen[1] < n_layers:
        raise ValueError(f"chosen range {list(chosen)} outside layers 0..{n_layers - 1}")
    embed = dict(embed or {})
    fig = go.Figure()
    if chosen is not None:
        label = f"chosen MLP {chosen[0]}" if chosen[0] == chosen[1] else f"chosen MLPs {chosen[0]}–{chosen[1]}"
        fig.add_vrect(x0=chosen[0] - 0.5, x1=chosen[1] + 0.5, fillcolor="#2ca02c", opacity=0.15, line_width=0,
                      annotation_text=label, annotation_position="top left")
    for i, (name, values) in enumerate(curves.items()):
        xs, ys = list(range(n_layers)), list(values)
        if name in embed:
            xs, ys = [EMBED_X] + xs, [embed[name]] + ys
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name,
                                 line={"color": COLORS[i % len(COLORS)], "dash": DASHES[i % len(DASHES)]}))
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dash", line_color="gray", annotation_text=f"chance {chance:.2f}",
                      annotation_position="bottom right")
    ticks = ([EMBED_X] if embed else []) + list(range(n_layers))
    step = max(1, n_layers // 16)
    ticks = [t for t in ticks if t == EMBED_X or t % step == 0]
    fig.update_layout(
        title=title or "probe accuracy per layer", template="plotly_white", legend_title_text="curve",
        xaxis={"title": "layer (resid_post; MLP L writes into layer L)", "tickvals": ticks,
               "ticktext": ["emb" if t == EMBED_X else str(t) for t in ticks]},
        yaxis={"title": "probe test accuracy", "range": [0, 1.02]},
    )
    return fig
