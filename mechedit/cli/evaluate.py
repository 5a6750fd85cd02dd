"""``mechedit evaluate``: behaviour, relearning, latent probes, diagnostics and the removed/suppressed verdict."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import typer
from rich.table import Table

from mechedit.cli import app
from mechedit.cli.common import FORCE_HELP, console, device_option, dtype_option, is_bundled, read_facts, user_errors
from mechedit.edit import EditError, EditResult
from mechedit.edit.marking import checked_facts, marked_facts
from mechedit.evaluate import RelearnConfig
from mechedit.evaluate import evaluate as run_evaluate
from mechedit.facts import FactError, load_csv, load_facts
from mechedit.models import load_model
from mechedit.plots.verification import verification_figures
from mechedit.validate import check_count, check_distinct, check_output, check_rate, staged_files
from patching.model import Model

EDIT_FACTS_FILE = "facts.csv"  # written by `mechedit edit` next to the delta
PLOT_NAMES = ("relearning", "latent", "diagnostics")  # figures of mechedit.plots.verification


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


def _mark_set(facts) -> set[tuple]:
    """The changed facts as comparable tuples (subject, prompt, answer, target, forget)."""
    rows = [(f["subject"], f["prompt"], f["answer"], f.get("target"), f.get("forget")) if isinstance(f, dict)
            else (f.subject, f.prompt, f.answer, f.target, f.forget) for f in facts]
    return {(str(s).strip(), str(p).strip(), str(a).strip(), str(t).strip() if t else None, bool(fg))
            for s, p, a, t, fg in rows}


def _describe(diff: set[tuple]) -> str:
    s, _, a, t, fg = sorted(diff)[0]
    return f"{s!r} ({a} → {t if t else 'forget' if fg else 'unchanged'})"


def facts_for(model: Model, facts_spec: str, edit_dir: Path | None, objective: str, n_forget: int, seed: int,
              known_only: bool, recorded: list | None = None, override: bool = False, fs=None):
    """The marked facts to evaluate and where their marks come from.

    With an edit: the facts the edit recorded (``recorded``, its edit.json ``changed_facts``), carried onto FACTS
    when FACTS holds them; FACTS' own marks must equal them unless ``override``. Without an edit: FACTS' marks,
    else a seeded sample of known facts.
    """
    bundled = is_bundled(facts_spec)
    fs = checked_facts(model, fs if fs is not None else load_facts(facts_spec), bundled)
    own_marks = any(f.changes for f in fs)
    if edit_dir is None:
        if own_marks:
            return fs, "marked in FACTS"
        return marked_facts(model, fs, objective, n_forget, seed, known_only, bundled=bundled), \
            f"{n_forget} facts sampled with seed {seed}"
    facts_file = edit_dir / EDIT_FACTS_FILE
    if recorded is not None and not (isinstance(recorded, list) and all(
            isinstance(r, dict) and {"subject", "prompt", "answer"} <= r.keys() for r in recorded)):
        raise FactError(f"{edit_dir / 'edit.json'}: malformed changed_facts (expected a list of objects with "
                        f"subject, prompt, answer, target, forget)")
    marked = checked_facts(model, load_csv(facts_file, name=fs.name), False) if facts_file.is_file() else None
    if recorded is None and marked is None:
        raise FactError(f"{edit_dir}: records no changed facts (edit.json has no changed_facts and there is no "
                        f"{EDIT_FACTS_FILE}); cannot tell which facts the edit changed")
    want = _mark_set(recorded) if recorded is not None else _mark_set(marked.forget_set() if marked else [])
    if marked is not None and recorded is not None and _mark_set(marked.forget_set()) != want:
        raise FactError(f"{facts_file}: its marks differ from the changed_facts recorded in "
                        f"{edit_dir / 'edit.json'} (e.g. {_describe(_mark_set(marked.forget_set()) ^ want)}); "
                        f"the edit directory was modified")
    if own_marks:
        have = _mark_set(fs.forget_set())
        if have != want:
            if not override:
                raise FactError(f"{facts_spec}: its marks differ from the facts the edit changed "
                                f"(e.g. {_describe(have ^ want)}); drop FACTS' target/forget marks to score the "
                                f"edit's facts, or pass --facts-override to score FACTS' marks anyway")
            return fs, "marked in FACTS (--facts-override: NOT the facts the edit changed)"
        return fs, "marked in FACTS (equal to the edit's changed facts)"
    if marked is None:
        raise FactError(f"{edit_dir}: has no {EDIT_FACTS_FILE}; give FACTS with the edit's marks")
    return transfer_marks(fs, marked), f"marks from {facts_file}"


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
    relearn: bool = typer.Option(False, "--relearn", help="run the relearning attack and its control (on copies)"),
    diagnostics: bool = typer.Option(False, "--diagnostics", help="PCA / CKA / Fisher per layer"),
    latent: bool = typer.Option(True, "--latent/--no-latent", help="latent-probe verification"),
    relearn_steps: int = typer.Option(20, "--relearn-steps"),
    relearn_lr: float | None = typer.Option(None, "--relearn-lr", help="default: 3e-3 (lora), 1e-3 (full)"),
    relearn_mode: str = typer.Option("lora", "--relearn-mode", help="lora (adapter, as in Guo et al.) or full"),
    max_maintain: int = typer.Option(256, "--max-maintain", help="maintain facts scored (seeded sample)"),
    n_forget: int = typer.Option(16, "--n-forget", help="facts to mark when neither FACTS nor the edit marks any"),
    known_only: bool = typer.Option(True, "--known-only/--all-facts", help="sample only facts the model knows"),
    plots: bool = typer.Option(False, "--plots", help="also write verification figures (HTML) next to --out"),
    facts_override: bool = typer.Option(False, "--facts-override",
                                        help="score FACTS' own marks even when they differ from the edit's facts"),
    seed: int = typer.Option(0, "--seed"),
    device: str = device_option(),
    dtype: str = dtype_option(),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Verify an edit: is the fact gone, or only hidden? Writes metrics.json (nothing if anything fails)."""
    with user_errors():
        check_count("--relearn-steps", relearn_steps)
        check_rate("--relearn-lr", relearn_lr)
        relearn_config = RelearnConfig(steps=relearn_steps, lr=relearn_lr, mode=relearn_mode)
        check_count("--max-maintain", max_maintain)
        check_count("--n-forget", n_forget)
        check_output(out, "--out", force)
        figure_paths = {name: out.with_name(f"{out.stem}_{name}.html") for name in PLOT_NAMES} if plots else {}
        for p in figure_paths.values():
            check_output(p, "--plots", force)
        check_distinct({"FACTS": Path(facts), "--out": out})
        result = EditResult.load(edit) if edit is not None else None
        fs0 = read_facts(facts)
        t0 = time.time()
        m = load_model(model, device=device, dtype=dtype)
        try:
            if result is not None:
                result._state(m)  # refuses a model that is neither the edit's base nor carries it
            fs, source = facts_for(m, facts, edit, result.objective if result else "edit", n_forget, seed,
                                   known_only, recorded=result.extra.get("changed_facts") if result else None,
                                   override=facts_override, fs=fs0)
            ev = run_evaluate(m, fs, edit=result, seed=seed, relearn=relearn,
                              relearn_config=relearn_config, latent=latent,
                              diagnostics=diagnostics, max_maintain=max_maintain)
        except EditError as exc:  # one red line, like every other user-facing error
            raise ValueError(str(exc)) from None
        ev.extra["facts_source"] = source
        ev.extra["facts_override"] = facts_override and "--facts-override" in source
        figures = {}
        if plots:
            figures = verification_figures(ev)
        with staged_files() as st:
            st.write_text(out, json.dumps(ev.to_dict(), indent=1))
            for name, fig in figures.items():
                fig.write_html(st.stage(figure_paths[name]), include_plotlyjs=True)
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
        table.add_row("maintain_accuracy_train (editor's retain facts)", _fmt(metrics["maintain_accuracy_train"]),
                      _fmt(orig.maintain_accuracy_train) if orig else "")
        for key in ("fluency_kl", "fluency_kl_train", "relearn_accuracy", "relearn_control_accuracy",
                    "relearn_recovery", "relearn_recovery_uniform", "cka_min",
                    "n_params_trained"):
            table.add_row(key, _fmt(metrics[key]), "")
        if ev.latent is not None and ev.latent.selected is not None:
            sel = ev.latent.selected
            kinds = "/".join(sorted(set(ev.latent.kind.values())))
            table.add_row(f"latent probe, {sel['position']} layer {sel['layer']} ({kinds})",
                          f"{_fmt(sel['after']['mean'])} [{_fmt(sel['after']['low'])}, {_fmt(sel['after']['high'])}]",
                          _fmt(sel["before"]["mean"]))
            if ev.latent.untouched_floor is not None:
                table.add_row(f"latent untouched floor (layers {ev.latent.excluded_layers}, excluded)",
                              "", _fmt(ev.latent.untouched_floor))
        elif ev.latent is not None:
            table.add_row("latent probes", "null", ev.latent.reason or "")
        console.print(table)
        console.print(f"facts: {source}")
        console.print(f"[bold]verdict: {metrics['verdict']}[/]")
        for reason in (ev.verdict.reasons if ev.verdict else []):
            console.print(f"  {reason}")
        for name in figures:
            console.print(f"figure → {figure_paths[name]}")
        console.print(f"metrics → {out}; {time.time() - t0:.1f} s")
