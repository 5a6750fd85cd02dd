"""Prompt + answer token batches and the answer-token language-modelling loss (relearning, Fisher)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int

from mechedit.facts import FactError
from mechedit.tokens import pad_left
from patching.families import final_hidden, unembed
from patching.model import Model


def answer_batch(
    tokenizer, prompts: Sequence[str], answers: Sequence[str], prepend_bos: bool = False
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    """Left-padded ``prompt + " " + answer`` ids, attention mask, and labels (-100 everywhere but answer tokens).

    The answer is tokenized on its own after a leading space, exactly as forced-choice scoring reads its first
    token, so training on these labels moves the scored token.
    """
    if len(prompts) != len(answers) or not prompts:
        raise FactError(f"need as many answers as prompts (got {len(prompts)} prompts, {len(answers)} answers)")
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    rows, labels = [], []
    for p, a in zip(prompts, answers, strict=True):
        p_ids = bos + tokenizer(p, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(" " + a.strip(), add_special_tokens=False)["input_ids"]
        if not a_ids:
            raise FactError(f"answer {a!r} tokenizes to nothing")
        rows.append(p_ids + a_ids)
        labels.append([-100] * len(p_ids) + a_ids)
    ids, mask = pad_left(rows, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    return ids, mask, pad_left(labels, -100)[0]


def answer_loss(
    model: Model, input_ids: Int[torch.Tensor, "batch pos"], attention_mask: Int[torch.Tensor, "batch pos"],
    labels: Int[torch.Tensor, "batch pos"],
) -> Float[torch.Tensor, ""]:
    """Mean next-token cross-entropy over the labelled (answer) tokens; padding never contributes.

    Runs the HF decoder packed (the modules the bridge runs, without its hooks and without compute on padding)
    and unembeds only the positions that predict a labelled token: the full ``[batch, pos, vocab]`` logits
    would cost more than the answers need.
    """
    hidden = final_hidden(model, input_ids, attention_mask, pack=True)
    target = labels[:, 1:].to(hidden.device)
    scored = target != -100
    logits = unembed(model, hidden[:, :-1][scored]).float()
    return torch.nn.functional.cross_entropy(logits, target[scored])
