"""Input-side attacks on an edited model, each with controls: soft prompt and in-context extraction.

An attack is evidence that a fact is still there only when it generalizes to facts it was not trained on and
beats a control (``result``). ``run_attacks(names, edited, facts, original=..., seed=...)`` runs the named
attacks (``ATTACKS``) and returns their ``AttackResult`` by name; ``parse_attacks`` reads ``--attacks``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mechedit.evaluate.attacks.in_context import InContextConfig, in_context_attack
from mechedit.evaluate.attacks.result import AttackArm, AttackResult
from mechedit.evaluate.attacks.soft_prompt import SoftPromptConfig, soft_prompt_attack
from mechedit.facts import FactSet
from patching.model import Model

ATTACKS = {"soft-prompt": soft_prompt_attack, "in-context": in_context_attack}


def parse_attacks(text: str | None) -> list[str]:
    """Comma-separated attack names (empty or None: none); an unknown name is a one-line ValueError."""
    names = [a.strip() for a in (text or "").split(",") if a.strip()]
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        raise ValueError(f"--attacks: unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
    return list(dict.fromkeys(names))


def attack_configs(soft_prompt_steps: int | None = None, soft_prompt_tokens: int | None = None,
                   in_context_statements: int | None = None) -> dict[str, object]:
    """The attacks' configs from the command-line options (None: the default); bad values raise ValueError."""
    sp = {k: v for k, v in (("steps", soft_prompt_steps), ("tokens", soft_prompt_tokens)) if v is not None}
    ic = {} if in_context_statements is None else {"statements": in_context_statements}
    return {"soft-prompt": SoftPromptConfig(**sp), "in-context": InContextConfig(**ic)}


def run_attacks(names: Sequence[str], edited: Model, facts: FactSet, *, original: Model | None = None, seed: int = 0,
                configs: Mapping[str, object] | None = None, progress: bool = True) -> dict[str, AttackResult]:
    """Run each named attack with its config (``configs[name]``, default recipe otherwise); results by name."""
    configs = configs or {}
    return {name: ATTACKS[name](edited, facts, configs.get(name), original=original, seed=seed, progress=progress)
            for name in parse_attacks(",".join(names))}


__all__ = ["ATTACKS", "AttackArm", "AttackResult", "InContextConfig", "SoftPromptConfig", "attack_configs",
           "in_context_attack", "parse_attacks", "run_attacks", "soft_prompt_attack"]
