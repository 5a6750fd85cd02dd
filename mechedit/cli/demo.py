"""``mechedit demo``: the main job a researcher runs first."""

from __future__ import annotations

import time

import typer

from mechedit.cli import app
from mechedit.cli.common import console, user_errors


@app.command()
def demo(
    model: str = typer.Option("all", "--model", help="factworld, smollm2-135m, or all"),
    limit: int | None = typer.Option(None, "--limit", help="score a seeded sample of this many facts"),
) -> None:
    """Load the bundled models and show how many facts of a bundled set each one knows."""
    from mechedit.cli.models import known_fact_table

    jobs = {"factworld": "factworld", "smollm2-135m": "counterfact"}
    names = list(jobs) if model == "all" else [model]
    t0 = time.time()
    with user_errors():
        for name in names:
            _, known, table = known_fact_table(name, jobs.get(name, "counterfact"), limit=limit)
            console.print(table)
    console.print(f"[dim]demo finished in {time.time() - t0:.0f} s[/]")
