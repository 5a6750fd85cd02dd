"""``mechedit localize``: run a localizer and write loc.json (and optionally a plot)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from mechedit.cli import app
from mechedit.cli.common import console, user_errors
from mechedit.facts import load_facts
from mechedit.localize import METHODS
from mechedit.localize import localize as run_localizer
from mechedit.localize.localization import Localization
from mechedit.models import load_model
from mechedit.plots.patching import plot_patching
from mechedit.plots.probe_accuracy import plot_probe_accuracy
from mechedit.scoring import known_facts
from mechedit.tokens import validate_facts


def save_figure(fig, path: Path) -> None:
    """Write a plotly figure as self-contained HTML (.html) or as an image (.png/.svg/.pdf, needs kaleido+Chrome)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".html":
        fig.write_html(path, include_plotlyjs=True)
        return
    try:
        fig.write_image(path)
    except Exception as exc:  # kaleido missing, or no Chrome for kaleido 1.x
        raise ValueError(f"cannot write {path} ({exc}); write .html instead, or install kaleido and chromium "
                         f"(`pip install kaleido`, `apt-get install chromium`)") from None


def plot_for(loc):
    """The natural figure for a Localization: probe-accuracy curve or patching scores."""
    if loc.probe_accuracy is not None:
        return plot_probe_accuracy(loc)
    return plot_patching(loc)


@app.command()
def localize(
    model: str = typer.Argument(..., help="factworld, smollm2-135m, a local HF directory or a hub name"),
    facts: str = typer.Argument(..., help="a CSV/JSONL path or a bundled set: sports, counterfact, factworld"),
    method: str = typer.Option("probe", "--method", help=f"one of: {', '.join(METHODS)}"),
    out: Path = typer.Option(Path("loc.json"), "--out", help="where to write loc.json"),
    budget_from: Path | None = typer.Option(None, "--budget-from", help="cut to this loc.json's parameter count"),
    plot: list[Path] = typer.Option([], "--plot", help="write a figure (.html, or .png with kaleido); repeatable"),
    known_only: bool = typer.Option(True, "--known-only/--all-facts", help="keep only facts the model knows"),
    n_facts: int | None = typer.Option(None, "--n-facts", help="use a seeded sample of this many facts"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Localize where MODEL stores FACTS and write loc.json (layout: README, Localizers)."""
    with user_errors():
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        t0 = time.time()
        m = load_model(model)
        fs = validate_facts(m.tokenizer, load_facts(facts), on_collision="drop")
        if known_only:
            fs = known_facts(m, fs)
        if n_facts:
            fs = fs.sample(n_facts, seed=seed)
        budget = Localization.load(budget_from).n_params if budget_from else None
        loc = run_localizer(m, fs, method, seed=seed, budget=budget)
        loc.save(out)
        table = Table(title=f"{method} localization of {len(fs)} facts on {model}")
        table.add_column("component")
        table.add_column("score", justify="right")
        for c in loc.components:
            table.add_row(str(c), f"{loc.scores.get(c, float('nan')):.3f}")
        console.print(table)
        console.print(f"{len(loc.components)} components, {loc.n_params:,} parameters → {out}")
        for p in plot:
            save_figure(plot_for(loc), p)
            console.print(f"plot → {p}")
        console.print(f"[dim]{time.time() - t0:.1f} s[/]")
