"""Metrics over last-position logits: each maps ``logits [batch, vocab]`` to a scalar (the batch mean).

A metric is any callable with that contract; the patching functions evaluate it once per patched
variant on that variant's rows and reject a metric whose result is not a scalar.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

Metric = Callable[[Float[Tensor, "batch vocab"]], Float[Tensor, ""]]


class LogitDiff:
    """Mean logit difference between each prompt's true answer token and another answer token.

    It reads two vocabulary columns per row, so callers that evaluate it on many patched variants unembed only
    ``columns`` and call ``on_columns()`` (``narrowed``): the full unembedding would cost far more than the metric.
    """

    def __init__(self, answer_ids: Int[Tensor, " batch"], other_ids: Int[Tensor, " batch"]):
        answer_ids, other_ids = torch.as_tensor(answer_ids).long(), torch.as_tensor(other_ids).long()
        if answer_ids.shape != other_ids.shape or answer_ids.ndim != 1:
            raise ValueError(f"answer_ids {tuple(answer_ids.shape)} and other_ids {tuple(other_ids.shape)} must be "
                             "1-D of the same length")
        self.answer_ids, self.other_ids = answer_ids, other_ids

    def __call__(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, ""]:
        rows = torch.arange(logits.shape[0])
        return (logits[rows, self.answer_ids] - logits[rows, self.other_ids]).mean()

    @property
    def columns(self) -> Int[Tensor, " k"]:
        """The vocabulary columns the metric reads (sorted, unique)."""
        return torch.unique(torch.cat([self.answer_ids, self.other_ids]))

    def on_columns(self) -> LogitDiff:
        """The same metric on logits holding only ``columns`` (in that order)."""
        cols = self.columns
        return LogitDiff(torch.searchsorted(cols, self.answer_ids), torch.searchsorted(cols, self.other_ids))


def logit_diff(answer_ids: Int[Tensor, " batch"], other_ids: Int[Tensor, " batch"]) -> Metric:
    """Mean logit difference between each prompt's true answer token and another answer token."""
    return LogitDiff(answer_ids, other_ids)


def narrowed(metric: Metric) -> tuple[Int[Tensor, " k"] | None, Metric]:
    """(columns, metric on logits of those columns only) for a metric that reads a few vocabulary columns
    (``LogitDiff``), else (None, the metric itself)."""
    if isinstance(metric, LogitDiff):
        return metric.columns, metric.on_columns()
    return None, metric


def answer_prob(answer_ids: Int[Tensor, " batch"]) -> Metric:
    """Mean softmax probability (over the whole vocabulary) of each prompt's true answer token (ROME)."""
    answer_ids = torch.as_tensor(answer_ids).long()

    def metric(logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, ""]:
        rows = torch.arange(logits.shape[0])
        return torch.softmax(logits.float(), -1)[rows, answer_ids].mean()

    return metric


def evaluate(metric: Metric, logits: Float[Tensor, "batch vocab"]) -> Tensor:
    """Call ``metric`` and check it returned a scalar; raise ValueError naming what it returned otherwise."""
    value = metric(logits)
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value, dtype=torch.float32)
        except (TypeError, ValueError):
            raise ValueError(f"metric must return a scalar tensor, got {type(value).__name__}") from None
    if value.numel() != 1:
        raise ValueError(f"metric must return a scalar, got a tensor of shape {tuple(value.shape)} "
                         "(reduce over the batch, e.g. with .mean())")
    return value.reshape(())


def evaluate_variants(metric: Metric, logits: Float[Tensor, "rows vocab"], batch: int) -> list[float]:
    """Evaluate ``metric`` on each consecutive block of ``batch`` rows (one block per patched variant)."""
    return [float(evaluate(metric, logits[i:i + batch])) for i in range(0, logits.shape[0], batch)]
