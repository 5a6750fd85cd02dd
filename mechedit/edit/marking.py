"""Which facts an edit changes: the rows a user marked, or a seeded sample of facts the model knows."""

from __future__ import annotations

from mechedit.facts import BUNDLED_FACTSETS, FactError, FactSet, load_facts


def checked_facts(model, fs: FactSet, bundled: bool) -> FactSet:
    """Facts ready to score on ``model``: within the size limits, marks editable, candidates distinct.

    Candidates sharing a first token are removed (never the answer or target); a fact left without two distinct
    candidates is dropped with a note. In a user's file a marked row (or explicit candidates) that cannot be used
    is an error naming file:line instead, so an edit never silently changes fewer or other facts.
    """
    from mechedit.validate import check_fact_sizes, check_user_marks, model_context

    tok = model.tokenizer
    if not bundled:
        check_fact_sizes(fs, tok, context=model_context(model))
        check_user_marks(fs, tok)
    out = fs.validated(tok, on_collision="drop")
    if not bundled:
        kept = {(f.subject, f.prompt) for f in out}
        for f in fs:
            if f.changes and (f.subject, f.prompt) not in kept:
                why = next((n for n in out.notes if repr(f.subject) in n), "its candidates collide")
                raise FactError(f"{f.origin or f.subject}: marked fact cannot be scored ({why})")
    return out


def marked_facts(model, facts: str | FactSet, objective: str, n_forget: int, seed: int, known_only: bool,
                 bundled: bool | None = None) -> FactSet:
    """Load FACTS; if no row has a target or forget flag, mark a seeded sample of known facts (targets for edit)."""
    if isinstance(facts, FactSet):
        fs, bundled = facts, bool(bundled)
    else:
        fs, bundled = load_facts(facts), facts in BUNDLED_FACTSETS
    fs = checked_facts(model, fs, bundled)
    if any(f.changes for f in fs):
        return fs
    if known_only:
        fs = fs.known_by(model)
    if n_forget >= len(fs):
        raise FactError(f"--n-forget {n_forget} needs more facts: '{fs.name}' has {len(fs)}"
                        f"{' known' if known_only else ''} fact(s), and some must stay unchanged")
    return fs.mark_forget(n_forget, seed, with_targets=objective == "edit")
