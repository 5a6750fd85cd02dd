"""What every input-side attack shares: the held-out split, the never-known twins and the prior-only answers.

**Split.** ``relearn_split`` (first half of the forget facts trained on, second half scored), so all attacks —
relearning included — hold out the same facts under the same seed.

**Never-known twins.** Each forget fact with its subject replaced by an invented name (``data.factworld.
invented_subjects``): same prompt, same answer, same candidates, but a subject no model was ever taught. The
original model answers them at its prior, so an attack that lifts their held-out half is making answers up.
Keeping the prompts and the answers means the twins' answer distribution is the forget facts', so a control
that learned only the answer prior gets exactly the lift the real attack would get from it.

**Prior-only answers.** The trained half's answers shuffled among themselves (``relearn.prior_only_answers``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mechedit.data.factworld import invented_subjects
from mechedit.evaluate.relearn import prior_only_answers, relearn_split
from mechedit.facts import FactSet


@dataclass(frozen=True)
class AttackSplit:
    """The forget facts' halves, the maintain pool and the never-known twins of both halves."""

    trained: FactSet
    heldout: FactSet
    maintain: FactSet | None
    twins_trained: FactSet
    twins_heldout: FactSet


def never_known_twins(facts: FactSet, seed: int = 0, exclude: set[str] | frozenset[str] = frozenset()) -> FactSet:
    """``facts`` about invented subjects (one new name per fact, never one in ``facts`` or ``exclude``)."""
    names = invented_subjects(len(facts), seed=seed, exclude=set(exclude) | {f.subject for f in facts})
    twins = [replace(f, subject=name, target=None, forget=True, neighborhood=(), origin="invented subject")
             for f, name in zip(facts, names, strict=True)]
    return facts.subset(twins, f"{facts.name}:never-known")


def attack_split(facts: FactSet, what: str, seed: int = 0) -> AttackSplit:
    """The split an attack runs on (FactError when fewer than 4 forget facts, naming ``what``)."""
    trained, heldout, maintain = relearn_split(facts, what)
    every = {f.subject for f in facts}
    twins = never_known_twins(trained.subset(list(trained) + list(heldout)), seed, every)
    return AttackSplit(trained, heldout, maintain, twins[: len(trained)], twins[len(trained):])


def prior_answers(facts: FactSet, seed: int) -> list[str]:
    """The facts' answers shuffled among themselves (as few kept in place as found): the prior-only control."""
    return prior_only_answers([f.answer for f in facts], seed)
