"""``mechedit compare`` and ``mechedit demo``: the method comparison, its table and its report."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from mechedit.cli import app
from mechedit.cli.common import FORCE_HELP, console, device_option, dtype_option, read_facts, user_errors
from mechedit.compare import (
    CELL_LEGEND,
    PAIRED_LEGEND,
    PAIRED_REFERENCES,
    SHARD_FILE,
    CompareSettings,
    Comparison,
    apply_preset,
    paired_rows,
    parse_shard,
    summary_title,
    table_rows,
)
from mechedit.compare import compare as run_compare
from mechedit.compare import merge as merge_runs
from mechedit.edit.objectives import OBJECTIVES
from mechedit.evaluate.attacks import attack_configs, parse_attacks
from mechedit.evaluate.relearn import MODES
from mechedit.localize import METHODS
from mechedit.models import check_precision
from mechedit.report import FIGURES, write_figures, write_report
from mechedit.validate import atomic_dir, check_choice, check_count, check_output


def summary_table(summary: Comparison) -> Table:
    """One row per method: mean ± SD [95 % CI] of the headline metrics, verdicts and parameters."""
    headers, rows = table_rows(summary)
    table = Table(title=escape(summary_title(summary)), caption=escape(CELL_LEGEND))
    table.add_column(headers[0])
    for header in headers[1:-2]:
        table.add_column(header, justify="right")
    table.add_column(headers[-2])
    table.add_column(headers[-1], justify="right")
    for row in rows:
        table.add_row(*map(escape, row))
    return table


def paired_tables(summary: Comparison) -> list[Table]:
    """One table per paired reference (probe, nonlocalized): each method's difference with its 95 % CI."""
    tables = []
    for ref in PAIRED_REFERENCES:
        headers, rows = paired_rows(summary, ref)
        if not rows:
            continue
        table = Table(title=f"paired differences against {ref}", caption=escape(PAIRED_LEGEND))
        table.add_column(headers[0])
        for header in headers[1:]:
            table.add_column(header, justify="right")
        for row in rows:
            table.add_row(*map(escape, row))
        tables.append(table)
    return tables


def check_settings(settings, out: Path, force: bool) -> None:
    """Refuse bad compare/demo settings and an unwritable or existing --out before any model is loaded."""
    if not settings.methods:
        raise ValueError("--methods is empty; give at least one of " + ", ".join(METHODS))
    check_choice("--methods", "method", settings.methods, METHODS)
    check_choice("--objective", "objective", settings.objective, OBJECTIVES)
    for option, value in (("--n-facts", settings.n_facts), ("--seeds", settings.seeds),
                          ("--max-maintain", settings.max_maintain), ("--steps", settings.steps),
                          ("--relearn-steps", settings.relearn_steps)):
        check_count(option, value)
    check_choice("--relearn-mode", "mode", settings.relearn_mode, MODES)
    check_precision(settings.device, settings.dtype)
    parse_attacks(",".join(settings.attacks))
    attack_configs(settings.soft_prompt_steps, settings.soft_prompt_tokens, settings.in_context_statements)
    check_output(out, "--out", force, kind="dir")
    read_facts(settings.facts)


def run_and_report(settings, out: Path, force: bool = False, shard: tuple[int, int] | None = None,
                   merge_dirs: list[Path] | None = None) -> None:
    """Run compare (or one shard of it, or merge shards) into a temporary directory, write the report, then move it
    to ``out``; print table and time."""
    t0 = time.time()
    with atomic_dir(out, replace=force) as tmp:
        if shard is not None:
            run_compare(settings, tmp, shard=shard)
        else:
            summary = merge_runs(merge_dirs, tmp) if merge_dirs else run_compare(settings, tmp)
            write_report(tmp)
    if shard is not None:
        console.print(f"shard {shard[0]}/{shard[1]} → {out / SHARD_FILE}; merge all shards with "
                      f"`mechedit compare --merge DIR --merge DIR ... --out OUT`")
        console.print(f"elapsed {time.time() - t0:.0f} s")
        return
    console.print(summary_table(summary))
    for table in paired_tables(summary):
        console.print(table)
    console.print(f"report → {out / 'report.html'}")
    console.print(f"elapsed {time.time() - t0:.0f} s")


@app.command()
def compare(
    model: str | None = typer.Argument(None, help="factworld, smollm2-135m, a local HF directory or a hub name"),
    facts: str | None = typer.Argument(None, help="a CSV/JSONL path or a bundled set: sports, counterfact, factworld"),
    methods: str | None = typer.Option(None, "--methods", help="comma-separated [default: "
                                       "probe,path,causal-tracing,nonlocalized]"),
    objective: str = typer.Option("edit", "--objective"),
    n_facts: int | None = typer.Option(None, "--n-facts", help="facts to change per seed (half are held out from "
                                       "relearning) [default: 32]"),
    seeds: int | None = typer.Option(None, "--seeds", help="repeats, each on a different sample of facts "
                                     "[default: 3]"),
    relation: str | None = typer.Option(None, "--relation", help="default: the relation with most known facts"),
    steps: int | None = typer.Option(None, "--steps", help="edit steps (default: EditConfig's)"),
    relearn: bool | None = typer.Option(None, "--relearn/--no-relearn", help="[default: relearn]"),
    relearn_steps: int | None = typer.Option(None, "--relearn-steps", help="relearning-attack steps (default 20)"),
    relearn_mode: str | None = typer.Option(None, "--relearn-mode", help="relearning attack: lora (adapter) or "
                                            "full [default: lora]"),
    max_maintain: int | None = typer.Option(None, "--max-maintain", help="maintain facts per run (seeded sample) "
                                            "[default: 64]"),
    diagnostics: bool | None = typer.Option(None, "--diagnostics/--no-diagnostics",
                                            help="PCA/CKA/Fisher per layer [default: no-diagnostics]"),
    attacks: str = typer.Option("", "--attacks", help="input-side attacks with controls, comma-separated: "
                                                     "soft-prompt, in-context (default: none)"),
    soft_prompt_steps: int | None = typer.Option(None, "--soft-prompt-steps", help="soft-prompt attack steps (50)"),
    soft_prompt_tokens: int | None = typer.Option(None, "--soft-prompt-tokens", help="soft-prompt length (8)"),
    in_context_statements: int | None = typer.Option(None, "--in-context-statements",
                                                     help="in-context attack: statements before each prompt (4)"),
    preset: str | None = typer.Option(None, "--preset", help="named settings (options given here override them): "
                                      "paper = probe, path, causal-tracing, random, nonlocalized; 32 facts x 3 seeds; "
                                      "30 edit steps, 32 maintain facts; LoRA relearning, latent probes, "
                                      "diagnostics"),
    out: Path = typer.Option(Path("runs/compare"), "--out"),
    device: str = device_option(),
    dtype: str = dtype_option(),
    shard: str | None = typer.Option(None, "--shard", metavar="I/N",
                                     help="run only cells I, I+N, ... of the (seed, method) cells; write shard.json"),
    merge: list[Path] = typer.Option([], "--merge", metavar="DIR",
                                     help="build the summary and report from shard directories (repeat per shard)"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Localize with each method (baselines cut to the fact-lookup budget), edit identically, verify, compare.

    Spread over machines: run ``--shard i/N`` for i = 0..N-1 (e.g. a SLURM array), then ``--merge`` their outputs.
    """
    with user_errors():
        if merge:
            if model or facts or shard:
                raise ValueError("--merge takes only shard directories and --out (no MODEL, FACTS or --shard)")
            check_output(out, "--out", force, kind="dir")
            run_and_report(None, out, force, merge_dirs=merge)
            return
        if not model or not facts:
            raise ValueError("MODEL and FACTS are required (unless --merge)")
        part = parse_shard(shard) if shard is not None else None
        given = {k: v for k, v in (
            ("methods", None if methods is None else [m.strip() for m in methods.split(",") if m.strip()]),
            ("n_facts", n_facts), ("seeds", seeds), ("relearn", relearn), ("relearn_mode", relearn_mode),
            ("diagnostics", diagnostics), ("steps", steps), ("max_maintain", max_maintain)) if v is not None}
        settings = CompareSettings(model=model, facts=facts, objective=objective, relation=relation,
                                   relearn_steps=relearn_steps, device=device,
                                   dtype=dtype, attacks=parse_attacks(attacks), soft_prompt_steps=soft_prompt_steps,
                                   soft_prompt_tokens=soft_prompt_tokens,
                                   in_context_statements=in_context_statements, **given)
        if preset is not None:
            settings = apply_preset(settings, preset, set(given))
        check_settings(settings, out, force)
        run_and_report(settings, out, force, shard=part)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="a directory written by mechedit compare"),
    force: bool = typer.Option(False, "--force", help="replace an existing RUN_DIR/report.html"),
) -> None:
    """Write RUN_DIR/report.html: one self-contained page with every figure of a comparison."""
    with user_errors():
        if not run_dir.is_dir():
            raise ValueError(f"{run_dir}: not a directory written by `mechedit compare`")
        check_output(run_dir / "report.html", "report", force)
        try:
            path = write_report(run_dir)
        except (TypeError, AttributeError, IndexError, KeyError) as exc:
            raise ValueError(f"{run_dir / 'summary.json'}: malformed comparison summary ({exc})") from None
        console.print(f"report → {path}")


@app.command()
def figures(
    run_dir: Path = typer.Argument(..., help="a directory holding a mechedit compare summary.json"),
    out: Path | None = typer.Option(None, "--out", help="where to write the images (default: RUN_DIR)"),
    fmt: str = typer.Option("png", "--format", help="png, svg or pdf (needs kaleido and Chrome/Chromium)"),
    force: bool = typer.Option(False, "--force", help="replace existing images"),
) -> None:
    """Write a comparison's figures as images: paired differences, relearning, latent probes, CKA, probe accuracy."""
    with user_errors():
        check_choice("--format", "format", fmt, ("png", "svg", "pdf"))
        summary = Comparison.load(run_dir)
        out = run_dir if out is None else out
        for name in FIGURES:
            check_output(out / f"{name}.{fmt}", "image", force)
        for path in write_figures(summary, out, fmt):
            console.print(f"figure → {path}")
