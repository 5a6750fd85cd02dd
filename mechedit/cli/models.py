"""``mechedit models`` and ``mechedit facts``: what is available, and what a model knows."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from mechedit.cache import cache_dir, cache_entries, clear_cache, dir_bytes, entry_name, inspect_cache
from mechedit.cli import app
from mechedit.cli.common import (
    FORCE_HELP,
    console,
    device_option,
    dtype_option,
    is_bundled,
    print_notes,
    read_facts,
    user_errors,
)
from mechedit.edit.marking import checked_facts
from mechedit.localize.profile import LOOKUP_MARGIN, profile_relations
from mechedit.models import available_models, load_model
from mechedit.scoring import require_finite, score_facts
from mechedit.validate import check_choice, check_count, check_output, staged_files


@app.command()
def models(
    verify: bool = typer.Option(False, "--verify", help="check every cache against its record (hashes included)"),
    clear: str | None = typer.Option(None, "--clear", metavar="NAME",
                                     help="remove one cache (a name from --verify, or a group such as factworld)"),
) -> None:
    """List the bundled models, whether they can be loaded here and whether they are cached; check or remove caches."""
    with user_errors():
        if clear is not None:
            sizes = {p: (entry_name(p), dir_bytes(p)) for p in cache_entries()}
            for p in clear_cache(clear):
                name, size = sizes[p]
                console.print(f"removed {name} ({size / 2**20:.1f} MB, {p})")
            return
        if verify:
            raise typer.Exit(_verify_table())

    table = Table(title="bundled models")
    for col in ("name", "status", "cached", "cache dir"):
        table.add_column(col)
    for row in available_models():
        table.add_row(row["name"], row["status"], "yes" if row["cached"] else "no", row["cache_dir"])
    console.print(table)
    console.print("Any local Hugging Face directory or hub name (with network) also works as MODEL.")


def _verify_table() -> int:
    """Print one row per cache (OK or its problems); return 1 if any cache is corrupt, else 0."""
    table = Table(title=f"caches in {cache_dir()}")
    for col in ("name", "size", "state", "detail"):
        table.add_column(col)
    failed = 0
    entries = cache_entries()
    for p in entries:
        status = inspect_cache(p, hashes=True)
        record = status.record or {}
        if status.state == "ok":
            versions = record.get("versions", {})
            state, detail = "[green]OK[/]", (f"sizes and sha256 match; built {record.get('built', '?')} with torch "
                                            f"{versions.get('torch', '?')}, transformers "
                                            f"{versions.get('transformers', '?')}")
        elif status.state == "unrecorded":
            state, detail = "[yellow]OK, unrecorded[/]", "written before records; recorded on its next load"
        elif status.state == "aside":
            state, detail = "[dim]moved aside[/]", "; ".join(status.problems)
        else:
            failed = 1
            state, detail = "[red]problem[/]", (f"{'; '.join(status.problems)} (`mechedit models --clear "
                                                f"{entry_name(p)}` removes it; the next use rebuilds it)")
        table.add_row(entry_name(p), f"{dir_bytes(p) / 2**20:.1f} MB", state, detail)
    console.print(table if entries else f"no caches in {cache_dir()}")
    return failed


FORMATS = ("prompt", "chat", "paraphrase", "mcq", "mcq-letter")


def known_fact_table(model_name: str, facts_spec: str, fmt: str = "prompt", limit: int | None = None, fs=None,
                     device: str = "cpu", dtype: str = "float32"):
    """Load a model and a fact set; return (all facts, known facts, rich table per relation)."""
    fs = fs if fs is not None else read_facts(facts_spec)
    model = load_model(model_name, device=device, dtype=dtype)
    facts = checked_facts(model, fs, is_bundled(facts_spec))
    if limit:
        facts = facts.sample(limit, seed=0)
    scores = score_facts(model, facts, fmt=fmt, progress=True)
    require_finite(scores, f"'{facts.name}'")
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


def profile_table(model_name: str, facts_spec: str, fs, limit: int | None, seed: int, device: str = "cpu",
                  dtype: str = "float32") -> Table:
    """Per relation: known facts, classes, majority, lexical baseline and best probe (mechedit.localize.profile)."""
    model = load_model(model_name, device=device, dtype=dtype)
    facts = checked_facts(model, fs, is_bundled(facts_spec))
    print_notes(facts, limit=5)
    if limit:
        facts = facts.sample(limit, seed=seed)
    profiles = profile_relations(model, facts, seed=seed)
    table = Table(title=f"{model_name} on {facts.name}: is the answer looked up, or read off the subject's tokens?",
                  caption=PROFILE_LEGEND)
    for col in ("relation", "facts", "known", "classes", "majority", "embed probe", "bag of tokens",
                "best probe (layer)", "gain", "looked up"):
        table.add_column(col, justify="left" if col == "relation" else "right")

    def f2(v):
        return "-" if v is None else f"{v:.2f}"

    for p in profiles:
        if p.note:
            table.add_row(p.relation or "-", str(p.n_facts), str(p.n_known), "", "", "", "", "", "",
                          f"[dim]{escape(p.note)}[/]")
            continue
        table.add_row(p.relation or "-", str(p.n_facts), str(p.n_known), str(p.n_classes), f2(p.majority),
                      f2(p.embed_probe), f2(p.bag_of_tokens), f"{f2(p.best_probe)} ({p.best_layer})",
                      f"{p.lookup_gain:+.2f}", "yes" if p.looked_up else "no")
    return table


PROFILE_LEGEND = (f"held-out accuracy on known facts (25 % stratified split); lexical baseline = max(embed probe, "
                  f"bag of tokens); looked up = best probe − lexical >= {LOOKUP_MARGIN}")


@app.command()
def facts(
    model: str = typer.Argument(..., help="factworld, smollm2-135m, a local HF directory or a hub name"),
    facts: str = typer.Argument(..., help="a CSV/JSONL path or a bundled set: sports, counterfact, factworld"),
    known_only: bool = typer.Option(False, "--known-only", help="write only the facts the model knows"),
    out: Path | None = typer.Option(None, "--out", help="write the facts to this CSV"),
    fmt: str = typer.Option("prompt", "--format", help="prompt, chat, paraphrase, mcq or mcq-letter"),
    limit: int | None = typer.Option(None, "--limit", help="score a seeded sample of this many facts"),
    profile: bool = typer.Option(False, "--profile", help="per relation: lexical baseline vs best layer's probe"),
    seed: int = typer.Option(0, "--seed", help="the probes' train/test split (with --profile)"),
    device: str = device_option(),
    dtype: str = dtype_option(),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """How many facts MODEL knows (forced choice over candidates), per relation; --profile: which are looked up."""
    with user_errors():
        check_choice("--format", "format", fmt, FORMATS)
        check_count("--limit", limit)
        if out is not None:
            check_output(out, "--out", force)
        fs = read_facts(facts)
        t0 = time.time()
        if profile:
            if out is not None or known_only or fmt != "prompt":
                raise ValueError("--profile takes no --out, --known-only or --format (it profiles prompt facts)")
            console.print(profile_table(model, facts, fs, limit, seed, device=device, dtype=dtype))
            console.print(f"[dim]{time.time() - t0:.1f} s[/]")
            return
        all_facts, known, table = known_fact_table(model, facts, fmt, limit, fs=fs, device=device, dtype=dtype)
        console.print(table)
        print_notes(all_facts, limit=5)
        if out:
            with staged_files() as st:
                (known if known_only else all_facts).to_csv(st.stage(out))
            console.print(f"wrote {out}")
        console.print(f"[dim]{time.time() - t0:.1f} s[/]")
