"""A model under attack: the bridge (tokenizer, settings) beside a hook-free view of the same weights.

Attacks run hundreds of forward passes on frozen models; ``models.plain_hf`` gives the bridge's HF model
without TransformerLens's hook wrappers, sharing the parameter tensors (about ten times faster, identical
logits). Scoring goes through ``scoring.score_items`` with this view's logits, so forced choice means the same
thing as everywhere else in mechedit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from mechedit.evaluate.copying import clear_captures
from mechedit.facts import FactSet
from mechedit.models import hf_model_of, model_info, plain_hf
from mechedit.scoring import ChoiceItem, PromptFormat, render_items, score_items
from mechedit.tokens import PromptBatch
from patching.model import Model


@dataclass
class Target:
    """The bridge ``model``, its hook-free view ``net`` (shared parameters) and whether prompts start with BOS."""

    model: Model
    net: torch.nn.Module
    bos: bool

    @classmethod
    def of(cls, model: Model) -> Target:
        """Wrap a bridged model (the view shares its parameters, so it always sees the current weights)."""
        return cls(model, plain_hf(model), bool(model_info(model).prepend_bos
                                                and model.tokenizer.bos_token_id is not None))

    @property
    def tokenizer(self):
        """The bridge's tokenizer."""
        return self.model.tokenizer

    def hidden(self, **inputs) -> torch.Tensor:
        """Final hidden states of the decoder for ``input_ids`` or ``inputs_embeds`` (+ ``attention_mask``)."""
        return self.net.model(**inputs).last_hidden_state

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of hidden states."""
        return self.net.lm_head(hidden)

    def last_logits(self, _model, batch: PromptBatch) -> torch.Tensor:
        """``score_items`` logits function: the last position's logits, no gradient."""
        with torch.no_grad():
            return self.unembed(self.hidden(input_ids=batch.input_ids, attention_mask=batch.attention_mask)[:, -1])

    def correct(self, items: list[ChoiceItem], logits_fn: Callable | None = None) -> np.ndarray:
        """Per-item forced-choice true-answer correctness (1.0 / 0.0)."""
        scores = score_items(self.model, items, logits_fn=logits_fn or self.last_logits)
        return np.asarray(scores.answer_correct, dtype=float)

    def accuracy(self, facts: FactSet, fmt: PromptFormat = "prompt") -> float:
        """Forced-choice true-answer accuracy of ``facts`` in format ``fmt``."""
        return float(self.correct(render_items(self.tokenizer, facts, fmt)).mean())


@contextmanager
def frozen(model: Model) -> Iterator[None]:
    """Every parameter of the bridged ``model`` without gradient for the block; the flags restored afterwards."""
    params = list(hf_model_of(model).parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        clear_captures(model)  # TransformerLens keeps per-forward captures; drop any that hold a graph
