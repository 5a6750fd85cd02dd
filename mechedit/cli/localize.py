"""``mechedit localize``: run a localizer and write loc.json (and optionally a plot)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import typer
from rich.table import Table

from mechedit.cli import app
from mechedit.cli.common import (
    FORCE_HELP,
    check_localization_fits,
    console,
    device_option,
    dtype_option,
    is_bundled,
    print_notes,
    read_facts,
    read_localization,
    user_errors,
)
from mechedit.edit.marking import checked_facts
from mechedit.localize import METHODS
from mechedit.localize import localize as run_localizer
from mechedit.models import fingerprint, load_model
from mechedit.plots.patching import plot_patching
from mechedit.plots.probe_accuracy import plot_probe_accuracy
from mechedit.scoring import known_facts
from mechedit.validate import check_choice, check_count, check_distinct, check_output, staged_files

IMAGE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp")


def check_plot_path(path: Path, force: bool) -> None:
    """A figure path must end in .html (or an image suffix, with kaleido installed) and be writable."""
    suffix = path.suffix.lower()
    if suffix not in (".html", *IMAGE_SUFFIXES):
        raise ValueError(f"--plot {path}: unknown figure type {path.suffix or '(none)'!r}; use .html, or "
                         f"{', '.join(IMAGE_SUFFIXES)} with kaleido")
    if suffix != ".html" and importlib.util.find_spec("kaleido") is None:
        raise ValueError(f"--plot {path}: writing {suffix} needs kaleido and chromium (`pip install kaleido`, "
                         f"`apt-get install chromium`); write .html instead")
    check_output(path, "--plot", force)


def save_figure(fig, path: Path, dest: Path | None = None) -> None:
    """Write a plotly figure as self-contained HTML (.html) or as an image (.png/.svg/.pdf, needs kaleido+Chrome).

    ``path`` is where the bytes go; ``dest`` (default ``path``) is the final name, whose suffix picks the format.
    """
    dest = dest or path
    path.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix.lower() == ".html":
        fig.write_html(path, include_plotlyjs=True)
        return
    try:
        fig.write_image(path, format=dest.suffix.lower().lstrip("."))
    except Exception as exc:  # kaleido missing, or no Chrome for kaleido 1.x
        raise ValueError(f"cannot write {dest} ({exc}); write .html instead, or install kaleido and chromium "
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
    device: str = device_option(),
    dtype: str = dtype_option(),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Localize where MODEL stores FACTS and write loc.json (and figures); nothing is written if anything fails."""
    with user_errors():
        check_choice("--method", "method", method, METHODS)
        check_count("--n-facts", n_facts)
        check_output(out, "--out", force)
        for p in plot:
            check_plot_path(p, force)
        check_distinct({"FACTS": Path(facts), "--out": out, **{f"--plot {p}": p for p in plot},
                        **({"--budget-from": budget_from} if budget_from else {})})
        budget_loc = read_localization(budget_from, "--budget-from") if budget_from else None
        fs = read_facts(facts)
        t0 = time.time()
        m = load_model(model, device=device, dtype=dtype)
        if budget_loc is not None:
            check_localization_fits(budget_loc, m, budget_from, "--budget-from")
        fs = checked_facts(m, fs, is_bundled(facts))
        print_notes(fs)
        if known_only:
            fs = known_facts(m, fs)
        if n_facts:
            fs = fs.sample(n_facts, seed=seed)
        loc = run_localizer(m, fs, method, seed=seed, budget=budget_loc.n_params if budget_loc else None)
        loc.extra.setdefault("model_fingerprint", fingerprint(m))
        figures = [(p, plot_for(loc)) for p in plot]
        with staged_files() as st:
            st.write_text(out, json.dumps(loc.to_dict(), indent=2))
            for p, fig in figures:
                save_figure(fig, st.stage(p), dest=p)
        table = Table(title=f"{method} localization of {len(fs)} facts on {model}")
        table.add_column("component")
        table.add_column("score", justify="right")
        for c in loc.components:
            table.add_row(str(c), f"{loc.scores.get(c, float('nan')):.3f}")
        console.print(table)
        console.print(f"{len(loc.components)} components, {loc.n_params:,} parameters → {out}")
        for p in plot:
            console.print(f"plot → {p}")
        console.print(f"[dim]{time.time() - t0:.1f} s[/]")
