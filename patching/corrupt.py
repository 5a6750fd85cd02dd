"""Corruptions of the subject: random tokens, another prompt's subject, or Gaussian noise on its embeddings.

A corruption is either a tensor of corrupted token ids with the clean batch's shape (it shares the clean
attention mask: only subject tokens are replaced, never padding), or a ``Noise`` spec that adds seeded
Gaussian noise to chosen token embeddings (ROME's causal-tracing corruption).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from patching.model import Hook, Model, embed_noise_hook


@dataclass(frozen=True)
class Noise:
    """Gaussian noise N(0, scale²) added to the token embeddings at ``positions`` (seeded)."""

    positions: Bool[Tensor, "batch pos"]
    scale: float
    seed: int = 0

    def sample(self, d_model: int, dtype=torch.float32) -> Float[Tensor, "batch pos d_model"]:
        """The noise tensor (zero outside ``positions``); the same for the same seed."""
        g = torch.Generator().manual_seed(int(self.seed))
        eps = torch.randn((*self.positions.shape, d_model), generator=g, dtype=torch.float32)
        return (eps * self.scale * self.positions[..., None].float()).to(dtype)


Corruption = Int[Tensor, "batch pos"] | Noise


def subject_mask(
    subject_start: Int[Tensor, " batch"], subject_last: Int[Tensor, " batch"], pos: int
) -> Bool[Tensor, "batch pos"]:
    """Boolean mask of the subject tokens (columns ``subject_start..subject_last`` inclusive)."""
    start, last = torch.as_tensor(subject_start), torch.as_tensor(subject_last)
    bad = ((start < 0) | (last < start) | (last >= pos)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"rows {bad[:5]} have no valid subject span (start {start[bad[0]]}, last {last[bad[0]]}, "
                         f"{pos} columns)")
    cols = torch.arange(pos)
    return (cols[None, :] >= start[:, None]) & (cols[None, :] <= last[:, None])


def random_subject_tokens(
    input_ids: Int[Tensor, "batch pos"], subject_start: Int[Tensor, " batch"], subject_last: Int[Tensor, " batch"],
    *, vocab_ids: Int[Tensor, " n"], seed: int = 0,
) -> Int[Tensor, "batch pos"]:
    """Replace every subject token by a token drawn uniformly from ``vocab_ids`` (seeded; same length)."""
    vocab_ids = torch.as_tensor(vocab_ids).long().flatten()
    if vocab_ids.numel() == 0:
        raise ValueError("vocab_ids is empty: nothing to draw random subject tokens from")
    mask = subject_mask(subject_start, subject_last, input_ids.shape[1])
    g = torch.Generator().manual_seed(int(seed))
    draws = vocab_ids[torch.randint(len(vocab_ids), input_ids.shape, generator=g)]
    return torch.where(mask, draws, input_ids)


def swap_subjects(
    input_ids: Int[Tensor, "batch pos"], subject_start: Int[Tensor, " batch"], subject_last: Int[Tensor, " batch"],
    *, labels: Sequence | None = None, seed: int = 0, fallback: Literal["error", "random"] = "error",
) -> tuple[Int[Tensor, "batch pos"], list[int]]:
    """Give each prompt the subject tokens of another prompt in the batch: a different subject of the same length.

    With ``labels`` (e.g. the true answers) a partner with a different label is preferred. Returns the
    corrupted ids and each row's partner (-1: no other subject of the same length; ``fallback="random"`` then draws
    random tokens from the batch's subject tokens for that row, ``"error"`` raises naming the rows).
    """
    start, last = torch.as_tensor(subject_start).long(), torch.as_tensor(subject_last).long()
    mask = subject_mask(start, last, input_ids.shape[1])
    lengths = (last - start + 1).tolist()
    rng = torch.Generator().manual_seed(int(seed))
    out = input_ids.clone()
    partners: list[int] = []
    spans = [tuple(input_ids[i, start[i]:last[i] + 1].tolist()) for i in range(len(lengths))]
    for i, n in enumerate(lengths):
        # same length, and a different subject (a fact set may hold the same subject in several rows)
        same = [j for j, m in enumerate(lengths) if m == n and spans[j] != spans[i]]
        if labels is not None:
            different = [j for j in same if labels[j] != labels[i]]
            same = different or same
        if not same:
            partners.append(-1)
            continue
        j = same[int(torch.randint(len(same), (1,), generator=rng))]
        out[i, start[i]:last[i] + 1] = input_ids[j, start[j]:last[j] + 1]
        partners.append(j)
    lonely = [i for i, p in enumerate(partners) if p < 0]
    if lonely and fallback == "error":
        raise ValueError(f"rows {lonely[:5]} have no other subject of the same token length in the batch "
                         f"(lengths {[lengths[i] for i in lonely[:5]]}); use fallback='random' or more prompts")
    if lonely:
        pool = input_ids[mask].unique()
        rnd = random_subject_tokens(input_ids[lonely], start[lonely], last[lonely], vocab_ids=pool, seed=seed + 1)
        out[lonely] = rnd
    return out, partners


@torch.no_grad()
def embedding_std(model: Model, token_ids: Tensor | None = None) -> float:
    """Standard deviation of token embedding entries: of ``token_ids``' embeddings, or of the whole matrix.

    ROME scales its noise by the std of the embeddings of the subjects' tokens over its prompts; passing
    the subject tokens of the facts reproduces that choice.
    """
    w = model.embed.original_component.weight
    if token_ids is not None:
        w = w[torch.as_tensor(token_ids).long().flatten()]
    if w.numel() < 2:
        raise ValueError("need at least two embedding entries to estimate a standard deviation")
    return float(w.float().std())


def gaussian_noise(
    model: Model, input_ids: Int[Tensor, "batch pos"], subject_start: Int[Tensor, " batch"],
    subject_last: Int[Tensor, " batch"], *, scale: float | None = None, multiplier: float = 3.0, seed: int = 0,
) -> Noise:
    """ROME's corruption: noise on the subject tokens' embeddings, std ``multiplier × embedding_std(subject tokens)``.

    ``scale`` overrides the absolute noise std. (The unlearning paper's code used sqrt(3·std); ROME's
    definition is 3·std, used here.)
    """
    mask = subject_mask(subject_start, subject_last, input_ids.shape[1])
    if scale is None:
        scale = multiplier * embedding_std(model, input_ids[mask])
    return Noise(mask, float(scale), seed)


def corrupt_inputs(
    model: Model, input_ids: Int[Tensor, "batch pos"], corruption: Corruption
) -> tuple[Int[Tensor, "batch pos"], list[Hook]]:
    """Token ids and forward hooks of the corrupted run; raises ValueError on a shape mismatch."""
    if isinstance(corruption, Noise):
        if tuple(corruption.positions.shape) != tuple(input_ids.shape):
            raise ValueError(f"noise positions have shape {tuple(corruption.positions.shape)} but the clean "
                             f"input_ids have shape {tuple(input_ids.shape)}")
        d_model = model.original_model.config.hidden_size
        return input_ids, [embed_noise_hook(corruption.sample(d_model))]
    if not isinstance(corruption, Tensor):
        raise ValueError(f"corruption must be a tensor of token ids or a Noise spec, got {type(corruption).__name__}")
    if tuple(corruption.shape) != tuple(input_ids.shape):
        raise ValueError(f"clean input_ids have shape {tuple(input_ids.shape)} but corrupted input_ids have "
                         f"shape {tuple(corruption.shape)}; they must match (same prompts, same padding)")
    return corruption.long(), []
