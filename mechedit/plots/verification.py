"""Figures of a verification (``mechedit.evaluate.Evaluation``): relearning curve, latent-probe curves before and
after the edit, and the representation diagnostics (CKA, PCA similarity and shift, Fisher) per layer."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLORS = {"before": "#1f77b4", "after": "#d62728", "fresh": "#ff7f0e", "new": "#2ca02c", "relearned": "#9467bd"}


def _ev_dict(ev) -> dict:
    return ev if isinstance(ev, dict) else ev.to_dict()


def plot_relearning(ev) -> go.Figure:
    """True-answer accuracy of the held-out and the trained half during the relearning attack."""
    r = _ev_dict(ev).get("relearn")
    if not r:
        raise ValueError("this evaluation has no relearning attack (run evaluate(..., relearn=True))")
    fig = go.Figure()
    fig.add_scatter(x=r["steps"], y=r["heldout_accuracy"], name="held-out half (never trained)", mode="lines+markers",
                    line={"color": COLORS["after"]})
    fig.add_scatter(x=r["steps"], y=r["trained_accuracy"], name="trained half", mode="lines+markers",
                    line={"color": COLORS["fresh"], "dash": "dot"})
    if r.get("control_accuracy"):
        fig.add_scatter(x=r["steps"], y=r["control_accuracy"], name="held-out half, prior-only control",
                        mode="lines+markers", line={"color": "grey"})
    if r.get("maintain_accuracy"):
        fig.add_scatter(x=r["steps"], y=r["maintain_accuracy"], name="maintain facts (not trained)",
                        mode="lines+markers", line={"color": COLORS["new"], "dash": "dot"})
    fig.add_hline(y=r["chance"], line_dash="dash", line_color="grey", annotation_text="chance")
    if r.get("original_heldout_accuracy") is not None:
        fig.add_hline(y=r["original_heldout_accuracy"], line_dash="dot", line_color=COLORS["before"],
                      annotation_text="original model")
    fig.update_layout(title=f"Relearning attack (recovery {_fmt(r.get('recovery'))})", xaxis_title="step",
                      yaxis_title="true-answer accuracy", yaxis_range=[-0.02, 1.02])
    return fig


def plot_latent(ev) -> go.Figure:
    """Per-layer probe accuracy on the true answer before/after the edit (and fresh probes, new answer)."""
    lat = _ev_dict(ev).get("latent")
    if not lat or not lat.get("original_true"):
        raise ValueError("this evaluation has no latent probes (needs the original model)"
                         + (f": {lat['reason']}" if lat and lat.get("reason") else ""))
    positions = list(lat["original_true"])
    fig = make_subplots(rows=1, cols=len(positions), shared_yaxes=True,
                        subplot_titles=[p.replace("_", " ") + " token" for p in positions])
    curves = [("original_before", "before edit (original probes)", "before", "solid"),
              ("original_true", "after edit (original probes)", "after", "solid"),
              ("fresh_true", "after edit (fresh probes)", "fresh", "dash"),
              ("original_new", "new answer (original probes)", "new", "dot")]
    for col, pos in enumerate(positions, start=1):
        for key, name, color, dash in curves:
            table = lat.get(key)
            if not table:
                continue
            y = table[pos]
            fig.add_scatter(x=list(range(len(y))), y=y, name=name, legendgroup=key, showlegend=col == 1,
                            mode="lines+markers", line={"color": COLORS[color], "dash": dash}, row=1, col=col)
        fig.add_hline(y=lat["chance"], line_dash="dash", line_color="grey", row=1, col=col)
        if lat.get("excluded_layers"):  # untouched by the edit: not used by the verdict
            fig.add_vrect(x0=-0.5, x1=max(lat["excluded_layers"]) + 0.5, fillcolor="grey", opacity=0.15,
                          line_width=0, row=1, col=col)
        sel = lat.get("selected")
        if sel and sel["position"] == pos:  # the probe the verdict uses
            fig.add_vline(x=sel["layer"], line_dash="dot", line_color="black", row=1, col=col)
        fig.update_xaxes(title_text="layer (residual after block)", row=1, col=col)
    fig.update_yaxes(title_text="probe accuracy", range=[-0.02, 1.02], row=1, col=1)
    fig.update_layout(title="Latent probes: is the true answer still decodable?")
    return fig


def plot_diagnostics(ev) -> go.Figure:
    """CKA, PCA |cos| and PCA shift (std units) per layer, and mean diagonal Fisher per layer (log scale)."""
    d = _ev_dict(ev).get("diagnostics")
    if not d:
        raise ValueError("this evaluation has no diagnostics (run evaluate(..., diagnostics=True))")
    layers = list(range(len(d["cka"])))
    fig = make_subplots(rows=2, cols=2, subplot_titles=["linear CKA vs original", "PCA similarity |cos(PC1)|",
                                                        "PCA shift of the mean (original-PC std)",
                                                        "mean diagonal Fisher"])
    fig.add_scatter(x=layers, y=d["cka"], name="edited", line={"color": COLORS["after"]}, row=1, col=1)
    if d.get("cka_relearned"):
        fig.add_scatter(x=layers, y=d["cka_relearned"], name="relearned", line={"color": COLORS["relearned"]},
                        row=1, col=1)
    fig.add_scatter(x=layers, y=d["pca_abs_cos"], name="edited", showlegend=False, line={"color": COLORS["after"]},
                    row=1, col=2)
    if d.get("pca_abs_cos_relearned"):
        fig.add_scatter(x=layers, y=d["pca_abs_cos_relearned"], name="relearned", showlegend=False,
                        line={"color": COLORS["relearned"]}, row=1, col=2)
    for k, dash in ((0, "solid"), (1, "dot")):
        fig.add_scatter(x=layers, y=[s["shift_std"][k] if len(s["shift_std"]) > k else None for s in d["pca_shift"]],
                        name=f"shift along PC{k + 1}", line={"color": COLORS["after"], "dash": dash}, row=2, col=1)
    if d.get("fisher_original"):
        for key, name, color in (("fisher_original", "original", "before"), ("fisher_edited", "edited", "after"),
                                 ("fisher_relearned", "relearned", "relearned")):
            if d.get(key):
                fig.add_scatter(x=layers, y=d[key], name=name, showlegend=key == "fisher_original",
                                line={"color": COLORS[color]}, row=2, col=2)
        fig.update_yaxes(type="log", row=2, col=2)
    fig.update_yaxes(range=[-0.02, 1.02], row=1, col=1)
    fig.update_yaxes(range=[-0.02, 1.02], row=1, col=2)
    fig.update_xaxes(title_text="layer")
    fig.update_layout(title=f"Representation diagnostics ({d['pooling']} token, {d['n_examples']} prompts)")
    return fig


def verification_figures(ev) -> dict[str, go.Figure]:
    """Every figure the evaluation has data for, by name (relearning, attacks, latent, diagnostics)."""
    out = {}
    from mechedit.plots.attacks import plot_attacks

    for name, fn in (("relearning", plot_relearning), ("attacks", plot_attacks), ("latent", plot_latent),
                     ("diagnostics", plot_diagnostics)):
        try:
            out[name] = fn(ev)
        except ValueError:
            continue
    return out


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"
