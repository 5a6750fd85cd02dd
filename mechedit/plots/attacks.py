"""Figures of the input-side attacks (``mechedit.evaluate.attacks``): one panel per attack, always with its controls.

``plot_attacks(ev)`` shows one evaluation: every arm's held-out curve beside its never-known and prior-only
controls, the original model and chance. ``attack_sections(summary)`` gives the comparison report's panels:
per attack, per method, the held-out accuracy under the attack next to its control and the original (means
over seeds), with the verdict signal in the hover text.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechedit.compare import Comparison

ATTACK_COLORS = {"attack": "#d62728", "never-known": "#7f7f7f", "prior-only": "#bcbd22", "original": "#1f77b4"}
X_TITLES = {"soft-prompt": "soft-prompt training step", "in-context": "statements before the prompt"}


def _attacks_of(ev) -> dict:
    d = ev if isinstance(ev, dict) else ev.to_dict()
    return d.get("attacks") or {}


def plot_attacks(ev) -> go.Figure:
    """One panel per attack of an evaluation: held-out accuracy of each arm with its controls (dashed/dotted)."""
    attacks = {k: v for k, v in _attacks_of(ev).items() if v.get("arms")}
    if not attacks:
        raise ValueError("this evaluation ran no input-side attack with a result (evaluate --attacks ...)")
    fig = make_subplots(rows=1, cols=len(attacks), shared_yaxes=True,
                        subplot_titles=[f"{k} (signal {_fmt(v.get('signal'))})" for k, v in attacks.items()])
    shown: set[str] = set()
    for col, (name, r) in enumerate(attacks.items(), start=1):
        for arm in r["arms"]:
            x = arm["steps"]
            lines = [("attack", arm["heldout_accuracy"], "solid"), ("never-known", arm["never_known_accuracy"], "dash"),
                     ("prior-only", arm.get("prior_accuracy"), "dot"), ("original", arm.get("original_curve"), "dot")]
            for kind, y, dash in lines:
                if not y:
                    continue
                fig.add_scatter(x=x, y=y, mode="lines+markers", name=f"{kind}", legendgroup=kind,
                                showlegend=kind not in shown, line={"color": ATTACK_COLORS[kind], "dash": dash},
                                hovertext=f"{name}: {arm['name']} ({kind})", row=1, col=col)
                shown.add(kind)
            if not arm.get("original_curve") and arm.get("original_accuracy") is not None:
                fig.add_hline(y=arm["original_accuracy"], line_dash="dot", line_color=ATTACK_COLORS["original"],
                              row=1, col=col)
        if r.get("chance") is not None:
            fig.add_hline(y=r["chance"], line_dash="dash", line_color="grey", annotation_text="chance", row=1, col=col)
        fig.update_xaxes(title_text=X_TITLES.get(name, "step"), row=1, col=col)
    fig.update_yaxes(title_text="true-answer accuracy, held-out half", range=[-0.02, 1.02], row=1, col=1)
    fig.update_layout(title="Input-side attacks on held-out forget facts, with never-known and prior-only controls")
    return fig


def attack_sections(summary: Comparison) -> list[tuple[str, go.Figure]]:
    """Report panels for a comparison: one figure per attack that ran (none when no run has attacks)."""
    names = list(dict.fromkeys(k for r in summary.runs for k in (r.metrics.get("attacks") or {})))
    return [(f"Attack: {name} (held-out accuracy vs its control)", attack_panel(summary, name)) for name in names]


def attack_panel(summary: Comparison, name: str) -> go.Figure:
    """Per method: mean over seeds of the attack's held-out accuracy, its control and the original (bars)."""
    methods = list(summary.methods)
    rows: dict[str, dict[str, list]] = {m: {"attack": [], "control": [], "original": [], "signal": []}
                                        for m in methods}
    for run in summary.runs:
        r = (run.metrics.get("attacks") or {}).get(name)
        if r is None or run.method not in rows:
            continue
        for key, value in (("attack", r.get("accuracy")), ("control", r.get("control")),
                           ("original", r.get("original")), ("signal", r.get("signal"))):
            if value is not None:
                rows[run.method][key].append(value)
    fig = go.Figure()
    for kind, label in (("attack", "attack (held-out)"), ("control", "its control"), ("original", "original")):
        fig.add_bar(name=label, x=methods, y=[_mean(rows[m][kind]) for m in methods],
                    marker_color=ATTACK_COLORS["never-known" if kind == "control" else kind],
                    hovertext=[f"signal {_fmt(_mean(rows[m]['signal']))} over {len(rows[m]['signal'])} run(s)"
                               for m in methods])
    fig.update_layout(barmode="group", title=f"{name}: held-out true-answer accuracy (mean over seeds)",
                      yaxis={"title": "accuracy", "range": [0, 1.05]}, height=380)
    return fig


def _mean(values: list) -> float | None:
    return float(np.mean(values)) if values else None


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"
