"""``mechedit evaluate``: behaviour, relearning, latent probes, diagnostics and the removed/suppressed verdict."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import typer
from rich.table import Table

from mechedit.cli import app
from mechedit.cli.common import console, user_errors
from mechedit.edit import EditError, EditResult
from mechedit.edit.marking import marked_facts
from mechedit.evaluate import RelearnConfig
from mechedit.evaluate import evaluate as run_evaluate
from mechedit.facts import load_csv, load_facts
from mechedit.models import load_model
from mechedit.plots.verification import verification_figures
from mechedit.tokens import validate_facts
from patching.model import Model

EDIT_FACTS_FILE = "facts.csv"  # written by `mechedit edit` next to the delta


def transfer_marks(facts, marked):
    """``facts`` restricted to the facts of ``marked`` (same subject and prompt), carrying its target/forget marks.

    Keeps what a CSV cannot hold (e.g. CounterFact neighbourhood prompts) while using exactly the facts an edit
    was made on.
    """
    marks = {(f.subject, f.prompt): f for f in marked}
    out = [replace(f, target=marks[(f.subject, f.prompt)].target, forget=marks[(f.subject, f.prompt)].forget)
           for f in facts if (f.subject, f.prompt) in marks]
    if len(out) < len(marks) or not any(f.changes for f in out):
        return marked  # FACTS is not the set the edit was made from: use the edit's own facts
    return facts.subset(out)


def facts_for(model: Model, facts_spec: str, edit_dir: Path | None, objective: str, n_forget: int, seed: int,
              known_only: bool):
    """The marked facts to evaluate: FACTS' own marks, else the edit's facts.csv marks, else a seeded sample."""
    fs = validate_facts(model.tokenizer, load_facts(facts_spec), on_collision="drop")
    if any(f.changes for f in fs):
        return fs, "marked in FACTS"
    if edit_dir is not None and (edit_dir / EDIT_FACTS_FILE).is_file():
        marked = load_csv(edit_dir / EDIT_FACTS_FILE, name=fs.name)
        return transfer_marks(fs, marked), f"marks from {edit_dir / EDIT_FACTS_FILE}"
    return marked_facts(model, facts_spec, objective, n_forget, seed, known_only), \
        f"{n_forget} facts sampled with seed {seed}"


def _fmt(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="factworld, smollm2-135m, a local HF directory or a hub name"),
    facts: str = typer.Argument(..., help="a CSV/JSONL path or a bundled set: sports, counterfact, factworld"),
    edit: Path | None = typer.Option(None, "--edit", help="edit directory written by `mechedit edit` (MODEL is "
                                                          "its base model); without it MODEL itself is scored"),
    out: Path = typer.Option(..., "--out", help="where to write metrics.json"),
    relearn: bool = typer.Option(False, "--relearn", help="run the relearning attack (full fine-tune of a copy)"),
    diagnostics: bool = typer.Option(False, "--diagnostics", help="PCA / CKA / Fisher per layer"),
    latent: bool = typer.Option(True, "--latent/--no-latent", help="latent-probe verification"),
    relearn_steps: int = typer.Option(20, "--relearn-steps"),
    relearn_lr: float = typer.Option(1e-3, "--relearn-lr"),
    max_maintain: int = typer.Option(256, "--max-maintain", help="maintain facts scored (seeded sample)"),
    n_forget: int = typer.Option(16, "--n-forget", help="facts to mark when neither FACTS nor the edit marks any"),
    known_only: bool = typer.Option(True, "--known-only/--all-facts", help="sample only facts the model knows"),
    plots: bool = typer.Option(False, "--plots", help="also write verification figures (HTML) next to --out"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Verify an edit: is the fact gone, or only hidden? Writes metrics.json (headline metrics + curves)."""
    with user_errors():
        t0 = time.time()
        m = load_model(model)
        try:
            result = EditResult.load(edit) if edit is not None else None
            fs, source = facts_for(m, facts, edit, result.objective if result else "edit", n_forget, seed,
                                   known_only)
            ev = run_evaluate(m, fs, edit=result, seed=seed, relearn=relearn,
                              relearn_config=RelearnConfig(steps=relearn_steps, lr=relearn_lr), latent=latent,
                              diagnostics=diagnostics, max_maintain=max_maintain)
        except EditError as exc:  # one red line, like every other user-facing error
            raise ValueError(str(exc)) from None
        ev.extra["facts_source"] = source
        ev.save(out)
        metrics = ev.metrics
        table = Table(title=f"verification of {'the edit in ' + str(edit) if edit else model} on "
                            f"{ev.behaviour.n_forget} facts of {fs.name}")
        table.add_column("metric")
        table.add_column("edited", justify="right")
        table.add_column("original", justify="right")
        orig = ev.original_behaviour
        for key in ("forget_accuracy", "edit_accuracy", "maintain_accuracy", "paraphrase_forget_accuracy",
                    "paraphrase_edit_accuracy", "mcq_forget_error", "mcq_edit_accuracy", "neighborhood_accuracy"):
            table.add_row(key, _fmt(metrics[key]), _fmt(getattr(orig, key)) if orig else "")
        for key in ("fluency_kl", "relearn_accuracy", "relearn_recovery", "cka_min", "n_params_trained"):
            table.add_row(key, _fmt(metrics[key]), "")
        if ev.latent is not None:
            table.add_row("latent probe best (true answer)", _fmt(ev.latent.best("original_true")),
                          _fmt(ev.latent.best("original_before")))
        console.print(table)
        console.print(f"[bold]verdict: {metrics['verdict']}[/]")
        for reason in (ev.verdict.reasons if ev.verdict else []):
            console.print(f"  {reason}")
        if plots:
            for name, fig in verification_figures(ev).items():
                path = out.with_name(f"{out.stem}_{name}.html")
                fig.write_html(path, include_plotlyjs=True)
                console.print(f"figure → {path}")
        console.print(f"metrics → {out}; {time.time() - t0:.1f} s")
