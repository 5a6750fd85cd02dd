"""The causal teacher of Liu et al. 2024 ("Revisiting Who's Harry Potter"), built from the original model.

For each forget fact the subject is replaced by N other subjects; the frozen original model predicts the
next token after each counterfactual prompt; probability mass that lands on a replacement subject's own
tokens is moved back to the original subject's tokens (position by position, so "Kalo" → "Ravi" keeps
the name intact); the N distributions are averaged. The student is then trained toward this average on the
original prompt: it should answer as it would for a generic person.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float

from mechedit.edit.config import EditError
from mechedit.facts import Fact


def replacement_subjects(fact: Fact, pool: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` subjects from ``pool`` other than the fact's own (seeded, per fact); fewer only if the pool is small."""
    others = sorted({s for s in pool if s != fact.subject and fact.subject not in s and s not in fact.subject})
    if not others:
        raise EditError(f"causal-teacher: no replacement subject for {fact.subject!r} (the fact set has one subject)")
    return random.Random(f"{seed}|teacher|{fact.subject}").sample(others, min(n, len(others)))


def _name_token_map(tokenizer, replacement: str, original: str) -> dict[int, int]:
    """Map each token of the replacement name to the original name's token at the same position.

    Both the word-initial (`` name``) and the bare spelling are mapped; tokens shared by both names stay put.
    Replacement names longer than the original map their extra tokens to the original's last token.
    """
    mapping: dict[int, int] = {}
    for prefix in (" ", ""):
        rep = tokenizer(prefix + replacement, add_special_tokens=False)["input_ids"]
        orig = tokenizer(prefix + original, add_special_tokens=False)["input_ids"]
        if not rep or not orig:
            continue
        for i, t in enumerate(rep):
            if t not in orig and t not in mapping:
                mapping[t] = orig[min(i, len(orig) - 1)]
    return mapping


@torch.no_grad()
def teacher_distribution(
    next_token_probs: Callable[[list[str]], Float[torch.Tensor, "n vocab"]], tokenizer, fact: Fact,
    replacements: Sequence[str],
) -> Float[torch.Tensor, " vocab"]:
    """The averaged, name-corrected next-token distribution for one fact (``next_token_probs``: original model)."""
    probs = next_token_probs([fact.prompt.replace("{subject}", r) for r in replacements]).double()
    for row, r in zip(probs, replacements, strict=True):
        for src, dst in _name_token_map(tokenizer, r, fact.subject).items():
            row[dst] += row[src]
            row[src] = 0.0
    return probs.mean(0).float()
