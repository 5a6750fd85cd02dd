"""Retain / evaluation split of the maintain facts and of the fluency texts, shared by the editor and ``evaluate``.

The editor trains its retain term on the *retain* half and its fluency term on the *training* half of the
fluency texts; ``evaluate`` measures ``maintain_accuracy`` and ``fluency_kl`` on the other halves only, so the
numbers that say "the edit left the rest of the model alone" come from data the edit never saw.

The rule is seeded and order-free: facts (and texts) are ranked by a hash of ``seed`` and their key (subject and
prompt template), and the first ``round(fraction · n)`` form the evaluation half (at least one on each side).
The editor records the retain keys in ``EditResult.extra["heldout"]``, so ``evaluate`` reproduces the split of a
saved edit exactly, whatever seed it is called with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from mechedit.facts import Fact, FactSet

EVAL_FRACTION = 0.5  # share of the maintain facts (and fluency texts) held out from the editor


def fact_key(f: Fact) -> str:
    """The identity of a fact in a split: subject and prompt template."""
    return f"{f.subject}|{f.prompt}"


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}|heldout|{key}".encode()).hexdigest()


def _n_eval(n: int, fraction: float) -> int:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction!r}")
    return 0 if n < 2 else min(n - 1, max(1, round(fraction * n)))


@dataclass(frozen=True)
class MaintainSplit:
    """Maintain facts the editor may train on (``retain``) and those only ever scored (``evaluation``)."""

    retain: FactSet | None
    evaluation: FactSet | None
    note: str | None = None  # why there is no evaluation half

    @property
    def retain_keys(self) -> list[str]:
        """Keys (``fact_key``) of the retain half."""
        return [fact_key(f) for f in self.retain] if self.retain is not None else []


def split_maintain(maintain: FactSet | None, seed: int, fraction: float = EVAL_FRACTION) -> MaintainSplit:
    """Split maintain facts into a retain and an evaluation half under ``seed`` (see the module docstring)."""
    if maintain is None:
        return MaintainSplit(None, None, "no maintain facts")
    n_eval = _n_eval(len(maintain), fraction)
    if n_eval == 0:
        return MaintainSplit(maintain, None, f"only {len(maintain)} maintain fact(s): too few for a held-out split")
    ranked = sorted(maintain, key=lambda f: _rank(seed, fact_key(f)))
    held = {fact_key(f) for f in ranked[:n_eval]}
    return MaintainSplit(maintain.subset([f for f in maintain if fact_key(f) not in held], f"{maintain.name}:retain"),
                         maintain.subset([f for f in maintain if fact_key(f) in held], f"{maintain.name}:evaluation"))


def split_from_keys(maintain: FactSet | None, retain_keys: Collection[str]) -> MaintainSplit:
    """The split an editor recorded: its retain facts, and every other maintain fact as the evaluation half."""
    if maintain is None:
        return MaintainSplit(None, None, "no maintain facts")
    keys = set(retain_keys)
    retain = [f for f in maintain if fact_key(f) in keys]
    held = [f for f in maintain if fact_key(f) not in keys]
    note = None if held else "every maintain fact was in the editor's retain set: no held-out maintain facts"
    return MaintainSplit(maintain.subset(retain, f"{maintain.name}:retain") if retain else None,
                         maintain.subset(held, f"{maintain.name}:evaluation") if held else None, note)


def maintain_of(facts: FactSet) -> FactSet | None:
    """The maintain facts of ``facts`` (None when every fact is marked to change)."""
    return facts.maintain_set() if any(not f.changes for f in facts) else None


def split_texts(texts: Sequence[str], seed: int, fraction: float = EVAL_FRACTION) -> tuple[list[str], list[str]]:
    """(training texts, evaluation texts) of a generic text list under ``seed``; fewer than 2 texts: all train."""
    n_eval = _n_eval(len(texts), fraction)
    ranked = sorted(range(len(texts)), key=lambda i: _rank(seed, f"{i}|{texts[i]}"))
    held = set(ranked[:n_eval])
    return [t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held]


def recorded_retain_keys(extra: dict) -> list[str] | None:
    """The retain keys an ``EditResult.extra`` recorded (the union over a composed sequence); None if absent."""
    if "heldout" in extra:
        return list(extra["heldout"].get("retain") or [])
    if "composed" in extra:
        parts = [recorded_retain_keys(e) for e in extra["composed"]]
        if any(p is None for p in parts):
            return None
        return list(dict.fromkeys(k for p in parts for k in p))
    return None
