"""Tokenization helpers: left-padded prompt batches, subject spans, answer first-token ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from jaxtyping import Int

from mechedit.facts import Fact, FactError, FactSet


@dataclass
class PromptBatch:
    """A left-padded batch of prompts with the positions mechedit cares about."""

    input_ids: Int[torch.Tensor, "batch pos"]
    attention_mask: Int[torch.Tensor, "batch pos"]
    subject_start: Int[torch.Tensor, " batch"]  # first subject token (-1 if no subject was located)
    subject_last: Int[torch.Tensor, " batch"]  # last subject token (-1 if no subject was located)

    @property
    def last(self) -> Int[torch.Tensor, " batch"]:
        """Position of the last (prediction) token: always the final column under left padding."""
        return torch.full((self.input_ids.shape[0],), self.input_ids.shape[1] - 1, dtype=torch.long)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, start: int, stop: int) -> PromptBatch:
        """Rows [start, stop), re-trimmed so that no column is padding in every row."""
        mask = self.attention_mask[start:stop]
        keep = int(mask.sum(1).max().item())
        cut = mask.shape[1] - keep
        return PromptBatch(
            self.input_ids[start:stop, cut:], mask[:, cut:],
            (self.subject_start[start:stop] - cut).clamp(min=-1), (self.subject_last[start:stop] - cut).clamp(min=-1),
        )


def pad_left(
    rows: Sequence[Sequence[int] | torch.Tensor], pad: float = 0
) -> tuple[torch.Tensor, Int[torch.Tensor, "batch pos"]]:
    """Stack rows (token-id lists, or tensors whose first dim is the position) with padding on the left.

    Returns ``(batch, attention_mask)``; the last column holds every row's last element, so "the last position"
    is always column -1.
    """
    rows = [r if isinstance(r, torch.Tensor) else torch.tensor(list(r), dtype=torch.long) for r in rows]
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width, *rows[0].shape[1:]), pad, dtype=rows[0].dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return out, mask


def encode(
    tokenizer, texts: Sequence[str], subjects: Sequence[str | None] | None = None, prepend_bos: bool = False
) -> PromptBatch:
    """Tokenize ``texts`` with left padding; locate each subject's last occurrence as a token span.

    A subject that cannot be found in its text, or covers no token, raises FactError naming it.
    """
    if not texts:
        raise FactError("no prompts to encode")
    rows, starts, lasts = [], [], []
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    for i, text in enumerate(texts):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = bos + list(enc["input_ids"]), [(0, 0)] * len(bos) + list(enc["offset_mapping"])
        subject = subjects[i] if subjects is not None else None
        if subject:
            cs = text.rfind(subject)
            if cs < 0:
                raise FactError(f"subject {subject!r} does not occur in the rendered prompt {text!r}")
            ce = cs + len(subject)
            span = [j for j, (a, b) in enumerate(offsets) if b > cs and a < ce and b > a]
            if not span:
                raise FactError(f"subject {subject!r} covers no token in {text!r}")
            starts.append(span[0])
            lasts.append(span[-1])
        else:
            starts.append(-1)
            lasts.append(-1)
        rows.append(ids)
    input_ids, mask = pad_left(rows, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    shift = torch.tensor([input_ids.shape[1] - len(r) for r in rows])
    s = torch.tensor(starts)
    e = torch.tensor(lasts)
    return PromptBatch(input_ids, mask, torch.where(s >= 0, s + shift, s), torch.where(e >= 0, e + shift, e))


def first_token_id(tokenizer, answer: str) -> int:
    """Token id of the first token of `` answer`` (answers are scored by their first token after a space)."""
    ids = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise FactError(f"answer {answer!r} tokenizes to nothing")
    return ids[0]


def candidate_token_ids(tokenizer, fact: Fact) -> list[int]:
    """First-token ids of a fact's candidates; raises FactError naming colliding candidates."""
    ids = [first_token_id(tokenizer, c) for c in fact.candidates]
    seen: dict[int, str] = {}
    for c, t in zip(fact.candidates, ids, strict=True):
        if t in seen:
            raise FactError(
                f"fact about {fact.subject!r}: candidates {seen[t]!r} and {c!r} share the first token "
                f"{tokenizer.decode([t])!r}; give distinct candidates"
            )
        seen[t] = c
    return ids


def drop_colliding(tokenizer, facts: Sequence[Fact]) -> tuple[list[Fact], list[str]]:
    """Remove colliding candidates (never the answer or target) and facts whose answer/target collide."""
    kept, notes = [], []
    for f in facts:
        keep: list[str] = []
        used: dict[int, str] = {}
        ok = True
        fixed = [f.answer] + ([f.target] if f.target else [])
        for c in fixed + [c for c in f.candidates if c not in fixed]:
            t = first_token_id(tokenizer, c)
            if t in used:
                if c in (f.answer, f.target):
                    ok = False
                    notes.append(f"dropped fact about {f.subject!r}: {c!r} and {used[t]!r} share a first token")
                    break
                continue
            used[t] = c
            keep.append(c)
        if ok and len(keep) >= 2:
            kept.append(replace(f, candidates=tuple(keep)))
        elif ok:
            notes.append(f"dropped fact about {f.subject!r}: fewer than two distinct candidates")
    return kept, notes


def validate_facts(tokenizer, facts: FactSet, on_collision: str = "error") -> FactSet:
    """Check candidates' first tokens are distinct; ``on_collision`` is "error" or "drop" (noted in ``notes``)."""
    if on_collision == "error":
        for f in facts:
            candidate_token_ids(tokenizer, f)
        return facts
    if on_collision != "drop":
        raise FactError(f"unknown on_collision {on_collision!r}; use 'error' or 'drop'")
    kept, notes = drop_colliding(tokenizer, facts.facts)
    out = facts.subset(kept)
    out.notes.extend(notes)
    return out
