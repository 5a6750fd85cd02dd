"""``mechedit models`` and ``mechedit facts``: what is available, and what a model knows."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from mechedit.cli import app
from mechedit.cli.common import console, user_errors


@app.command()
def models() -> None:
    """List the bundled models, whether they can be loaded here and whether they are cached."""
    from mechedit.models import available_models

    table = Table(title="bundled models")
    for col in ("name", "status", "cached", "cache dir"):
        table.add_column(col)
    for row in available_models():
        table.add_row(row["name"], row["status"], "yes" if row["cached"] else "no", row["cache_dir"])
    console.print(table)
    console.print("Any local Hugging Face directory or hub name (with network) also works as MODEL.")


def known_fact_table(model_name: str, facts_spec: str, fmt: str = "prompt", limit: int | None = None):
    """Load a model and a fact set; return (all facts, known facts, rich table per relation)."""
    from mechedit.facts import load_facts
    from mechedit.models import load_model
    from mechedit.scoring import score_facts

    model = load_model(model_name)
    facts = load_facts(facts_spec).validated(model.tokenizer, on_collision="drop")
    if limit:
        facts = facts.sample(limit, seed=0)
    scores = score_facts(model, facts, fmt=fmt, progress=True)
    known = facts.subset([f for f, ok in zip(facts, scores.answer_correct, strict=True) if ok], f"{facts.name}:known")
    table = Table(title=f"{model_name} on {facts.name} ({fmt} prompts, forced choice)")
    for col in ("relation", "facts", "known", "share", "mean p(true)"):
        table.add_column(col, justify="right" if col != "relation" else "left")
    rels: dict[str, list[int]] = {}
    for i, f in enumerate(facts):
        rels.setdefault(f.relation or "-", []).append(i)
    for rel, idx in sorted(rels.items(), key=lambda kv: -len(kv[1])):
        k = int(scores.answer_correct[idx].sum())
        table.add_row(rel, str(len(idx)), str(k), f"{k / len(idx):.2f}", f"{scores.answer_prob[idx].mean():.2f}")
    table.add_row("all", str(len(facts)), str(len(known)), f"{len(known) / len(facts):.2f}",
                  f"{scores.answer_prob.mean():.2f}", style="bold")
    return facts, known, table


@app.command()
def facts(
    model: str = typer.Argument(..., help="factworld, smollm2-135m, a local HF directory or a hub name"),
    facts: str = typer.Argument(..., help="a CSV/JSONL path or a bundled set: sports, counterfact, factworld"),
    known_only: bool = typer.Option(False, "--known-only", help="write only the facts the model knows"),
    out: Path | None = typer.Option(None, "--out", help="write the facts to this CSV"),
    fmt: str = typer.Option("prompt", "--format", help="prompt, chat, paraphrase or mcq"),
    limit: int | None = typer.Option(None, "--limit", help="score a seeded sample of this many facts"),
) -> None:
    """How many facts MODEL knows (forced choice over candidates), per relation."""
    with user_errors():
        t0 = time.time()
        all_facts, known, table = known_fact_table(model, facts, fmt, limit)
        console.print(table)
        for note in all_facts.notes[:5]:
            console.print(f"[dim]{note}[/]")
        if len(all_facts.notes) > 5:
            console.print(f"[dim]... and {len(all_facts.notes) - 5} more dropped facts[/]")
        if out:
            (known if known_only else all_facts).to_csv(out)
            console.print(f"wrote {out}")
        console.print(f"[dim]{time.time() - t0:.1f} s[/]")
