"""Forced-choice scoring: render facts as prompts, score candidate answers by their first token."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from mechedit.facts import MCQ_LETTERS, Fact, FactError, FactSet
from mechedit.models import model_info
from mechedit.tokens import PromptBatch, candidate_token_ids, encode, first_token_id
from patching.families import final_hidden, unembed
from patching.model import Model

PromptFormat = Literal["prompt", "chat", "paraphrase", "mcq", "mcq-letter"]


@dataclass
class ChoiceItem:
    """One forced-choice question: a prompt, the candidate first-token ids, and which ones matter."""

    fact_index: int
    text: str
    subject: str
    candidate_ids: list[int]
    answer_idx: int
    target_idx: int | None


def chat_wrap(tokenizer, text: str) -> str:
    """Wrap a completion prompt in the tokenizer's chat template, prefilling the assistant turn with it."""
    if not getattr(tokenizer, "chat_template", None):
        raise FactError("this model's tokenizer has no chat template; use the plain prompt format")
    head = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Complete the sentence: {text}"}], add_generation_prompt=True, tokenize=False
    )
    return head + text


def render_items(
    tokenizer, facts: FactSet | Sequence[Fact], fmt: PromptFormat = "prompt", seed: int = 0, prefix: str = ""
) -> list[ChoiceItem]:
    """Render facts in a prompt format; ``paraphrase`` yields one item per paraphrase (none if a fact has none)."""
    items: list[ChoiceItem] = []
    for i, f in enumerate(facts):
        cand_ids = candidate_token_ids(tokenizer, f)
        t_idx = f.candidates.index(f.target) if f.target else None
        a_idx = f.candidates.index(f.answer)
        if fmt == "prompt":
            items.append(ChoiceItem(i, prefix + f.render(), f.subject, cand_ids, a_idx, t_idx))
        elif fmt == "chat":
            items.append(ChoiceItem(i, chat_wrap(tokenizer, prefix + f.render()), f.subject, cand_ids, a_idx, t_idx))
        elif fmt == "paraphrase":
            for p in f.paraphrases:
                items.append(ChoiceItem(i, prefix + f.render(p), f.subject, cand_ids, a_idx, t_idx))
        elif fmt == "mcq":
            text, options, ans, tgt = f.mcq(seed=seed, style="text")
            ids = [first_token_id(tokenizer, o) for o in options]
            items.append(ChoiceItem(i, prefix + text, f.subject, ids, ans, tgt))
        elif fmt == "mcq-letter":
            text, options, ans, tgt = f.mcq(seed=seed, style="letter")
            letters = [first_token_id(tokenizer, MCQ_LETTERS[k]) for k in range(len(options))]
            items.append(ChoiceItem(i, prefix + text, f.subject, letters, ans, tgt))
        else:
            raise FactError(f"unknown prompt format {fmt!r}; use prompt, chat, paraphrase, mcq or mcq-letter")
    return items


def encode_items(model: Model, items: Sequence[ChoiceItem]) -> PromptBatch:
    """Left-padded batch of the items' prompts with subject positions."""
    return encode(model.tokenizer, [it.text for it in items], [it.subject for it in items],
                  prepend_bos=model_info(model).prepend_bos)


@torch.no_grad()
def last_logits(model: Model, batch: PromptBatch) -> torch.Tensor:
    """Next-token logits at the last position of every prompt in a batch.

    Runs the wrapped HF decoder (the same modules the bridge runs, so the logits are identical) and unembeds
    only the last position: on a 49k vocabulary the full [batch, pos, vocab] unembedding dominates the cost.
    Packed (``patching.packing``): padding costs nothing.
    """
    hidden = final_hidden(model, batch.input_ids, batch.attention_mask, pack=True)
    return unembed(model, hidden[:, -1, :])


@dataclass
class ChoiceScores:
    """Per-item forced-choice results."""

    fact_index: np.ndarray  # which fact each item belongs to
    answer_correct: np.ndarray  # argmax over candidates is the true answer
    answer_prob: np.ndarray  # probability of the true answer renormalized over candidates
    target_correct: np.ndarray  # argmax is the target (False where no target)
    target_prob: np.ndarray  # renormalized probability of the target (nan where no target)

    @property
    def n_nonfinite(self) -> int:
        """Items whose candidate logits were not finite (scored as wrong, probability NaN)."""
        return int(np.isnan(self.answer_prob).sum())

    def mean(self, name: str) -> float | None:
        """Mean of a field; None when there are no items (e.g. no paraphrases) or any item's logits were not
        finite (a NaN model has no accuracy: argmax over NaNs would pick index 0, the true answer)."""
        if self.n_nonfinite:
            return None
        values = getattr(self, name)
        values = values[~np.isnan(values)] if values.dtype.kind == "f" else values
        return float(values.mean()) if len(values) else None


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None,
                   max_ratio: float = 2.0) -> list[list[int]]:
    """Indices sorted by length, cut into batches of ≤ ``batch_size`` rows and ≤ ``max_tokens`` padded tokens,
    whose longest prompt is at most ``max_ratio`` times their shortest (so at most half of a batch is padding).

    A fixed row count alone pads a batch's short prompts to its longest one: one 100-token few-shot MCQ prompt
    among 63 twenty-token paraphrases made a batch cost five times its useful work.
    """
    max_tokens = batch_size * 32 if max_tokens is None else max_tokens
    batches: list[list[int]] = []
    for k in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        cur = batches[-1] if batches else None
        if cur is None or len(cur) >= batch_size or (len(cur) + 1) * lengths[k] > max_tokens \
                or lengths[k] > max_ratio * max(lengths[cur[0]], 1):
            batches.append([k])
        else:
            cur.append(k)
    return batches


def score_items(
    model: Model, items: Sequence[ChoiceItem], batch_size: int = 64, progress: bool = False,
    logits_fn: Callable[[Model, PromptBatch], torch.Tensor] = last_logits,
) -> ChoiceScores:
    """Score items in batches (packed and ordered by text; by token length for another ``logits_fn``);
    renormalize over candidates.

    ``logits_fn(model, batch)`` gives the next-token logits at the last position (default ``last_logits``; the
    soft-prompt attack passes one that prepends its trained embeddings).
    """
    n = len(items)
    correct, prob = np.zeros(n, bool), np.full(n, np.nan)
    t_correct, t_prob = np.zeros(n, bool), np.full(n, np.nan)
    rows = model.tokenizer([it.text for it in items], add_special_tokens=False).input_ids
    if logits_fn is last_logits:  # packed: padding is free, so order by text and let prompts share their openings
        order = sorted(range(n), key=lambda k: rows[k])
        chunks = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    else:
        chunks = length_batches([len(r) for r in rows], batch_size)
    for chunk in tqdm(chunks, desc="scoring", disable=not progress or len(chunks) < 4, leave=False):
        logits = logits_fn(model, encode_items(model, [items[k] for k in chunk]))
        for row, k in enumerate(chunk):
            it = items[k]
            cand = logits[row, it.candidate_ids].float()
            if not bool(torch.isfinite(cand).all()):
                continue  # never "correct": wrong, probability NaN (see ChoiceScores.n_nonfinite)
            p = torch.softmax(cand, -1)
            top = int(p.argmax())
            correct[k], prob[k] = top == it.answer_idx, float(p[it.answer_idx])
            if it.target_idx is not None:
                t_correct[k], t_prob[k] = top == it.target_idx, float(p[it.target_idx])
    return ChoiceScores(np.array([it.fact_index for it in items], dtype=int), correct, prob, t_correct, t_prob)


def score_facts(
    model: Model, facts: FactSet | Sequence[Fact], fmt: PromptFormat = "prompt", seed: int = 0, prefix: str = "",
    batch_size: int = 64, progress: bool = False,
) -> ChoiceScores:
    """Forced-choice scores of ``facts`` in one prompt format."""
    return score_items(model, render_items(model.tokenizer, facts, fmt, seed, prefix), batch_size, progress)


def known_facts(model: Model, facts: FactSet, threshold: float = 0.0, fmt: PromptFormat = "prompt",
                batch_size: int = 64, progress: bool = True) -> FactSet:
    """Facts whose true answer is the model's forced choice with renormalized probability ≥ threshold."""
    s = score_facts(model, facts, fmt=fmt, batch_size=batch_size, progress=progress)
    require_finite(s, f"'{facts.name}'")
    keep = [f for f, ok, p in zip(facts, s.answer_correct, s.answer_prob, strict=True) if ok and p >= threshold]
    out = facts.subset(keep, f"{facts.name}:known")
    if not keep:
        raise FactError(f"the model knows none of the {len(facts)} facts in '{facts.name}' ({fmt} prompts)")
    return out


class NonFiniteError(ValueError):
    """Raised when a model's logits are NaN or infinite, so no forced-choice answer can be read off."""


def require_finite(scores: ChoiceScores, what: str) -> None:
    """Raise NonFiniteError when any scored item had non-finite logits (corrupted or diverged weights)."""
    if scores.n_nonfinite:
        raise NonFiniteError(f"the model produced NaN/inf logits on {scores.n_nonfinite} of "
                             f"{len(scores.answer_prob)} prompts of {what}; its weights are not finite "
                             f"(a corrupted checkpoint or a diverged edit), so nothing can be scored")
