"""``mechedit edit``: fine-tune only the localized components toward an objective and save the delta."""

from __future__ import annotations

import time
from dataclasses import replace
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
from mechedit.edit import EditConfig, EditError
from mechedit.edit import edit as run_edit
from mechedit.edit.marking import marked_facts
from mechedit.edit.objectives import OBJECTIVES
from mechedit.models import load_model
from mechedit.scoring import require_finite, score_facts
from mechedit.validate import (
    atomic_dir,
    check_choice,
    check_count,
    check_input_file,
    check_output,
    check_rate,
)

FACTS_FILE = "facts.csv"
N_MAINTAIN_SCORED = 256


@app.command()
def edit(
    model: str = typer.Argument(..., help="factworld, smollm2-135m, a local HF directory or a hub name"),
    facts: str = typer.Argument(..., help="a CSV/JSONL path or a bundled set: sports, counterfact, factworld"),
    localization: Path = typer.Option(..., "--localization", help="loc.json written by `mechedit localize`"),
    objective: str = typer.Option("edit", "--objective", help=f"one of: {', '.join(OBJECTIVES)}"),
    out: Path = typer.Option(..., "--out", help="directory for the edit (delta.safetensors, edit.json, facts.csv)"),
    steps: int | None = typer.Option(None, "--steps", help="optimizer steps (default: EditConfig)"),
    lr: float | None = typer.Option(None, "--lr", help="peak learning rate (default: EditConfig)"),
    cf: float | None = typer.Option(None, "--cf", help="weight c_f of the forget/edit term"),
    fluency_text: str | None = typer.Option(None, "--fluency-text", help="auto, facts, bundled or a text file"),
    n_forget: int = typer.Option(16, "--n-forget", help="facts to mark when FACTS has no target/forget column"),
    known_only: bool = typer.Option(True, "--known-only/--all-facts", help="mark only facts the model knows"),
    seed: int = typer.Option(0, "--seed"),
    device: str = device_option(),
    dtype: str = dtype_option(),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Edit (or unlearn) FACTS in MODEL by training only the localized components; write the revertible delta."""
    with user_errors():
        check_choice("--objective", "objective", objective, OBJECTIVES)
        check_count("--steps", steps)
        check_count("--n-forget", n_forget)
        check_rate("--lr", lr)
        check_rate("--cf", cf, allow_zero=True)
        if fluency_text not in (None, "auto", "facts", "bundled"):
            check_input_file(Path(fluency_text), "--fluency-text")
        check_output(out, "--out", force, kind="dir")
        loc = read_localization(localization, "--localization")
        fs = read_facts(facts)
        t0 = time.time()
        m = load_model(model, device=device, dtype=dtype)
        check_localization_fits(loc, m, localization, "--localization")
        fs = marked_facts(m, fs, objective, n_forget, seed, known_only, bundled=is_bundled(facts))
        print_notes(fs)
        overrides = {k: v for k, v in {"steps": steps, "lr": lr, "c_f": cf, "fluency_text": fluency_text}.items()
                     if v is not None}
        cfg = replace(EditConfig(seed=seed), **overrides)
        forget, maintain = fs.forget_set(), fs.maintain_set().sample(N_MAINTAIN_SCORED, seed)
        before_f, before_m = score_facts(m, forget), score_facts(m, maintain)
        require_finite(before_f, "the facts to change")
        require_finite(before_m, "the maintain facts")
        try:
            result = run_edit(m, fs, loc, objective, cfg)
        except EditError as exc:  # one red line, like every other user-facing error
            raise ValueError(str(exc)) from None
        after_f, after_m = score_facts(m, forget), score_facts(m, maintain)
        result.extra["changed_facts"] = [  # provenance, independent of the CSV round trip
            {"subject": f.subject, "prompt": f.prompt, "answer": f.answer, "target": f.target, "forget": f.forget}
            for f in forget]
        with atomic_dir(out, replace=force) as tmp:
            result.save(tmp)
            fs.to_csv(tmp / FACTS_FILE)

        table = Table(title=f"{objective} on {len(forget)} facts of {fs.name}, {loc.method} localization ({model})")
        for col in ("metric", "before", "after"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        table.add_row("forget: true-answer accuracy", _fmt(before_f.mean("answer_correct")),
                      _fmt(after_f.mean("answer_correct")))
        if any(f.target for f in forget):
            table.add_row("forget: target accuracy", _fmt(before_f.mean("target_correct")),
                          _fmt(after_f.mean("target_correct")))
        table.add_row(f"maintain accuracy ({len(maintain)} facts)", _fmt(before_m.mean("answer_correct")),
                      _fmt(after_m.mean("answer_correct")))
        console.print(table)
        last = result.final_losses()
        terms = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "forget", "retain", "fluency") if k in last)
        console.print(f"{result.n_params_trained:,} parameters trained in {cfg.steps} steps; final {terms}")
        console.print(f"edit → {out} (facts → {out / FACTS_FILE}); {time.time() - t0:.1f} s")


def _fmt(v: float | None) -> str:
    return "null (non-finite logits)" if v is None else f"{v:.3f}"
