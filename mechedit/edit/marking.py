"""Which facts an edit changes: the rows a user marked, or a seeded sample of facts the model knows."""

from __future__ import annotations

from mechedit.facts import BUNDLED_FACTSETS, FactError, FactSet, load_facts
from mechedit.models import hf_model_of
from mechedit.scoring import known_facts
from mechedit.tokens import first_token_id, validate_facts
from mechedit.validate import check_fact_sizes, where
from patching.model import Model


def model_context(model: Model) -> int | None:
    """The model's maximum number of positions (None if unknown)."""
    try:
        return int(getattr(hf_model_of(model).config, "max_position_embeddings", 0)) or None
    except AttributeError:
        return None


def check_user_marks(facts, tokenizer) -> None:
    """Refuse (file:line) a marked fact that cannot be edited: target = answer, or target/answer/explicit
    candidates sharing a first token (forced choice could not tell them apart)."""
    for f in facts:
        if f.target is not None and f.target.strip().lower() == f.answer.strip().lower():
            raise FactError(f"{where(f)}: target {f.target!r} is the answer itself; give a different target")
        if not (f.changes or f.explicit_candidates):
            continue
        seen: dict[int, str] = {}
        own = [f.answer] + ([f.target] if f.target else [])
        for c in own + ([c for c in f.candidates if c not in own] if f.explicit_candidates else []):
            t = first_token_id(tokenizer, c)
            if t in seen:
                raise FactError(f"{where(f)}: {seen[t]!r} and {c!r} share the first token "
                                f"{tokenizer.decode([t])!r}, so forced choice cannot tell them apart; "
                                f"give {'a target' if c == f.target else 'candidates'} with a different first token")
            seen[t] = c


def checked_facts(model: Model, fs: FactSet, bundled: bool) -> FactSet:
    """Facts ready to score on ``model``: within the size limits, marks editable, candidates distinct.

    Candidates sharing a first token are removed (never the answer or target); a fact left without two distinct
    candidates is dropped with a note. In a user's file a marked row (or explicit candidates) that cannot be used
    is an error naming file:line instead, so an edit never silently changes fewer or other facts.
    """
    tok = model.tokenizer
    if not bundled:
        check_fact_sizes(fs, tok, context=model_context(model))
        check_user_marks(fs, tok)
    out = validate_facts(tok, fs, on_collision="drop")
    if not bundled:
        kept = {(f.subject, f.prompt) for f in out}
        for f in fs:
            if f.changes and (f.subject, f.prompt) not in kept:
                why = next((n for n in out.notes if repr(f.subject) in n), "its candidates collide")
                raise FactError(f"{f.origin or f.subject}: marked fact cannot be scored ({why})")
    return out


def marked_facts(model: Model, facts: str | FactSet, objective: str, n_forget: int, seed: int, known_only: bool,
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
        fs = known_facts(model, fs)
    if n_forget >= len(fs):
        raise FactError(f"--n-forget {n_forget} needs more facts: '{fs.name}' has {len(fs)}"
                        f"{' known' if known_only else ''} fact(s), and some must stay unchanged")
    return fs.mark_forget(n_forget, seed, with_targets=objective == "edit")
