"""Inputs shared by the patching-based localizers: prompts, corruption, metric, and the choice rules.

Facts to localize: the facts marked to change (edit targets or ``forget``) if any are marked, else all of
them; at most ``max_facts`` (a seeded sample) so a localizer's cost stays bounded. Prompts are the facts'
main prompts, left-padded in one batch.

Metric: mean logit difference between the true answer's first token and, per fact, the *runner-up*
candidate (the other candidate the model ranks highest on the clean prompt), the strongest competitor.

Corruptions of the subject (``corruption``):
- ``"swap"`` (default): another fact's subject tokens of the same token length, preferring a subject
  with a different true answer; facts with no such partner get random subject tokens drawn from the
  batch's subject tokens (counted in ``notes["random_fallback"]``).
- ``"random"``: random tokens drawn from the batch's subject tokens.
- ``"noise"``: ROME's Gaussian noise, std = 3 × the std of the subject tokens' embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from mechedit.components import Component, parse_component
from mechedit.facts import FactError, FactSet
from mechedit.localize.localization import budget_rule, fit_budget
from mechedit.scoring import encode_items, last_logits, render_items
from mechedit.tokens import PromptBatch
from patching.corrupt import Corruption, gaussian_noise, random_subject_tokens, subject_mask, swap_subjects
from patching.metrics import Metric, logit_diff
from patching.model import Model

CorruptionKind = Literal["swap", "random", "noise"]


@dataclass
class PatchSetup:
    """Everything a patching localizer runs on."""

    facts: FactSet
    batch: PromptBatch
    answer_ids: Tensor
    other_ids: Tensor
    corruption: Corruption
    metric: Metric
    notes: dict = field(default_factory=dict)


def facts_to_localize(facts: FactSet, max_facts: int | None, seed: int) -> FactSet:
    """The forget/edit facts if any are marked, else all; a seeded sample of ``max_facts`` if more."""
    chosen = facts.forget_set() if any(f.changes for f in facts) else facts
    if max_facts is not None and len(chosen) > max_facts:
        chosen = chosen.sample(max_facts, seed)
    return chosen


def patch_setup(model: Model, facts: FactSet, *, corruption: CorruptionKind = "swap", max_facts: int | None = 64,
                seed: int = 0) -> PatchSetup:
    """Encode the facts, pick each one's runner-up answer, and build the corruption (see module docstring)."""
    if corruption not in ("swap", "random", "noise"):
        raise ValueError(f"unknown corruption {corruption!r}; use swap, random or noise")
    fs = facts_to_localize(facts, max_facts, seed)
    if len(fs) < 2 and corruption == "swap":
        raise FactError("subject swapping needs at least two facts; use corruption='noise' or 'random'")
    items = render_items(model.tokenizer, fs, "prompt")
    batch = encode_items(model, items)
    if (batch.subject_start < 0).any():
        raise FactError("some prompts have no locatable subject; cannot corrupt the subject")
    logits = last_logits(model, batch)
    answer_ids, other_ids = [], []
    for row, it in enumerate(items):
        cands = torch.tensor(it.candidate_ids)
        scores = logits[row, cands].clone()
        scores[it.answer_idx] = -float("inf")
        answer_ids.append(it.candidate_ids[it.answer_idx])
        other_ids.append(int(cands[int(scores.argmax())]))
    answers, others = torch.tensor(answer_ids), torch.tensor(other_ids)
    ids, start, last = batch.input_ids, batch.subject_start, batch.subject_last
    notes: dict = {"corruption": corruption, "n_facts": len(fs)}
    if corruption == "swap":
        corrupt, partners = swap_subjects(ids, start, last, labels=[f.answer for f in fs], seed=seed,
                                          fallback="random")
        notes["random_fallback"] = sum(p < 0 for p in partners)
    elif corruption == "random":
        pool = ids[subject_mask(start, last, ids.shape[1])].unique()
        corrupt = random_subject_tokens(ids, start, last, vocab_ids=pool, seed=seed)
    else:
        corrupt = gaussian_noise(model, ids, start, last, seed=seed)
        notes["noise_scale"] = corrupt.scale
    return PatchSetup(fs, batch, answers, others, corrupt, logit_diff(answers, others), notes)


def choose_by_fraction(scores: dict[str, float], labels: Sequence[str], fraction: float,
                       max_k: int | None = None) -> list[str]:
    """Labels whose score is at least ``fraction`` × the best positive score, best first, at most ``max_k``.

    Raises ValueError when no label has a positive score (nothing carries the effect).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ranked = sorted(labels, key=lambda k: -scores[k])
    if not ranked or scores[ranked[0]] <= 0:
        raise ValueError("no component has a positive effect: the corruption does not change what these "
                         "components carry (try another corruption or more facts)")
    best = scores[ranked[0]]
    chosen = [k for k in ranked if scores[k] >= fraction * best]
    return chosen[:max_k] if max_k else chosen


def ranked_components(scores: dict[str, float], labels: Sequence[str]) -> list[Component]:
    """Components of ``labels`` sorted by descending score."""
    return [parse_component(k) for k in sorted(labels, key=lambda k: -scores[k])]


def pick(model: Model, scores: dict[str, float], labels: Sequence[str], *, fraction: float, budget: int | None,
         max_k: int | None = None) -> tuple[list[Component], str]:
    """Chosen components and the rule used: the fraction rule, or (with ``budget``) the ranking matched to it."""
    if budget is not None:
        chosen, rec = fit_budget(model, ranked_components(scores, labels), budget)
        if not chosen:
            raise ValueError(f"budget {budget:,} parameters is smaller than any single candidate component")
        return chosen, budget_rule("ranked by score", rec)
    chosen = [parse_component(k) for k in choose_by_fraction(scores, labels, fraction, max_k)]
    return chosen, f"score >= {fraction} x best score" + (f", at most {max_k}" if max_k else "")
