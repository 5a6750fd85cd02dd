"""Which facts an edit changes: the rows a user marked, or a seeded sample of facts the model knows."""

from __future__ import annotations

from mechedit.facts import FactSet, load_facts
from mechedit.scoring import known_facts
from mechedit.tokens import validate_facts
from patching.model import Model


def marked_facts(model: Model, facts_spec: str, objective: str, n_forget: int, seed: int, known_only: bool) -> FactSet:
    """Load FACTS; if no row has a target or forget flag, mark a seeded sample of known facts (targets for edit)."""
    fs = validate_facts(model.tokenizer, load_facts(facts_spec), on_collision="drop")
    if any(f.changes for f in fs):
        return fs
    if known_only:
        fs = known_facts(model, fs)
    return fs.mark_forget(n_forget, seed, with_targets=objective == "edit")
