"""The two recorded forwards every patching method starts from: the base run and the source run.

Denoising runs on the corrupted input (base) and patches in values from the clean input (source);
noising is the reverse. Both forwards cache only the hooks a method asks for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from patching.corrupt import Corruption, corrupt_inputs
from patching.metrics import Metric, evaluate
from patching.model import Arch, Model, Recording, arch, record
from patching.result import check_direction


@dataclass
class Runs:
    """Base and source recordings plus the metric on the clean and the corrupted input."""

    base: Recording
    source: Recording
    clean: float
    corrupt: float
    arch: Arch
    direction: str

    @property
    def batch(self) -> int:
        return self.base.batch


def check_inputs(model: Model, input_ids: Tensor, attention_mask: Tensor) -> None:
    """Raise ValueError for ids/mask of different shapes or a non-2-D batch."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, pos], got shape {tuple(input_ids.shape)}")
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids have shape "
                         f"{tuple(input_ids.shape)}")
    vocab = arch(model).vocab
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
        raise ValueError(f"input_ids contain ids outside the vocabulary [0, {vocab})")


def make_runs(
    model: Model, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"], corruption: Corruption,
    metric: Metric, direction: str, names: Iterable[str] = (),
) -> Runs:
    """Record the clean and the corrupted forward (caching ``names``) and evaluate the metric on both."""
    check_direction(direction)
    check_inputs(model, input_ids, attention_mask)
    corrupt_ids, corrupt_hooks = corrupt_inputs(model, input_ids, corruption)
    names = list(names)
    clean = record(model, input_ids, attention_mask, names)
    corrupt = record(model, corrupt_ids, attention_mask, names, fwd_hooks=corrupt_hooks)
    with torch.no_grad():
        m_clean, m_corrupt = float(evaluate(metric, clean.logits)), float(evaluate(metric, corrupt.logits))
    base, source = (corrupt, clean) if direction == "denoising" else (clean, corrupt)
    return Runs(base, source, m_clean, m_corrupt, arch(model), direction)
