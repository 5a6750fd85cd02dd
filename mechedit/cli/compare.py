"""``mechedit compare`` and ``mechedit demo``: the method comparison, its table and its report."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from mechedit.cli import app
from mechedit.cli.common import console, user_errors
from mechedit.compare import CompareSettings, Comparison, summary_title, table_rows
from mechedit.compare import compare as run_compare
from mechedit.report import write_report


def summary_table(summary: Comparison) -> Table:
    """One row per method: mean ± spread over seeds of the headline metrics, verdicts and parameters."""
    headers, rows = table_rows(summary)
    table = Table(title=summary_title(summary))
    table.add_column(headers[0])
    for header in headers[1:-2]:
        table.add_column(header, justify="right")
    table.add_column(headers[-2])
    table.add_column(headers[-1], justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def run_and_report(settings, out: Path) -> None:
    """Run compare, print the table, write the report, print where it is and how long it took."""
    t0 = time.time()
    summary = run_compare(settings, out)
    console.print(summary_table(summary))
    report = write_report(out)
    console.print(f"report → {report}")
    console.print(f"elapsed {time.time() - t0:.0f} s")


@app.command()
def compare(
    model: str = typer.Argument(..., help="factworld, smollm2-135m, a local HF directory or a hub name"),
    facts: str = typer.Argument(..., help="a CSV/JSONL path or a bundled set: sports, counterfact, factworld"),
    methods: str = typer.Option("probe,path,causal-tracing,nonlocalized", "--methods", help="comma-separated"),
    objective: str = typer.Option("edit", "--objective"),
    n_facts: int = typer.Option(16, "--n-facts", help="facts to change per seed"),
    seeds: int = typer.Option(3, "--seeds", help="repeats, each on a different sample of facts"),
    relation: str | None = typer.Option(None, "--relation", help="default: the relation with most known facts"),
    steps: int | None = typer.Option(None, "--steps", help="edit steps (default: EditConfig's)"),
    relearn: bool = typer.Option(True, "--relearn/--no-relearn"),
    relearn_steps: int | None = typer.Option(None, "--relearn-steps", help="relearning-attack steps (default 20)"),
    max_maintain: int = typer.Option(64, "--max-maintain", help="maintain facts per run (seeded sample)"),
    diagnostics: bool = typer.Option(False, "--diagnostics/--no-diagnostics", help="PCA/CKA/Fisher per layer"),
    out: Path = typer.Option(Path("runs/compare"), "--out"),
) -> None:
    """Localize with each method (baselines cut to the fact-lookup budget), edit identically, verify, compare."""
    with user_errors():
        names = [m.strip() for m in methods.split(",") if m.strip()]
        settings = CompareSettings(model=model, facts=facts, methods=names,
                                   objective=objective, n_facts=n_facts, seeds=seeds, relation=relation, steps=steps,
                                   relearn=relearn, relearn_steps=relearn_steps, max_maintain=max_maintain,
                                   diagnostics=diagnostics)
        run_and_report(settings, out)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a directory written by mechedit compare")) -> None:
    """Write RUN_DIR/report.html: one self-contained page with every figure of a comparison."""
    with user_errors():
        console.print(f"report → {write_report(run_dir)}")
