"""Representation diagnostics of an edit (Xu et al. 2025, "Unlearning Isn't Deletion"), per layer.

- **PCA similarity**: cosine between the first principal component of the original and of the edited model's
  features (``|cos|`` too: a principal direction's sign is arbitrary, so ``|cos|`` is the number to read).
- **PCA shift**: the mean feature of each model projected onto the *original* model's PC1/PC2, and the shift
  between them in units of the original's standard deviation along each PC.
- **Linear CKA** between original and edited (and relearned) features: 1 = same geometry up to rotation/scale.
- **Diagonal empirical Fisher**: mean over batches of squared gradients of the answer-token loss (padding
  masked), summarized per layer; models are compared parameter by parameter, matched by exact name.

Features are the residual stream after each block (``blocks.{L}.hook_resid_post``) at the last token, or
mean-pooled over real tokens; mean pooling skips padding and the first real token (position 0 is an attention
sink and is degenerate with a BOS), so position 0 never enters a diagnostic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from mechedit.evaluate.answers import answer_batch, answer_loss
from mechedit.evaluate.copying import clear_captures
from mechedit.facts import Fact, FactError, FactSet
from mechedit.memo import OriginalMemo, remembered
from mechedit.models import hf_parameters, model_info
from mechedit.tokens import encode
from patching.families import packed_layer_outputs
from patching.model import Model, arch
from patching.packing import plan

Pooling = Literal["last", "mean"]
_LAYER = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")  # decoder layer L's parameters (GPT-2: transformer.h.L)


# ---------------------------------------------------------------------- features


@torch.no_grad()
def layer_features(
    model: Model, texts: Sequence[str], *, pooling: Pooling = "last", batch_size: int = 32, progress: bool = True
) -> Float[torch.Tensor, "layer n d_model"]:
    """Residual stream after every block for each text: at the last token, or mean-pooled (pad and position 0 out).

    Runs ``batch_size`` texts per packed forward (``patching.packing``: no compute on padding).
    """
    if pooling not in ("last", "mean"):
        raise ValueError(f"unknown pooling {pooling!r}; use 'last' or 'mean'")
    if not texts:
        raise FactError("no texts to compute features on")
    b = encode(model.tokenizer, list(texts), None, prepend_bos=model_info(model).prepend_bos)
    if pooling == "mean" and bool((b.attention_mask.sum(1) < 2).any()):
        bad = texts[int((b.attention_mask.sum(1) < 2).nonzero()[0])]
        raise FactError(f"text {bad!r} has a single token; mean pooling (which skips position 0) needs two")
    out = torch.zeros(arch(model).n_layers, len(texts), arch(model).d_model)
    chunks = [list(range(s, min(s + batch_size, len(texts)))) for s in range(0, len(texts), batch_size)]
    for rows in tqdm(chunks, desc="features", disable=not progress or len(chunks) < 4, leave=False):
        mask = b.attention_mask[rows]
        p = plan(b.input_ids[rows], mask)
        if pooling == "mean":
            weights = mask.float()
            weights[torch.arange(len(rows)), mask.argmax(1)] = 0.0  # skip the first real token (left padding)
        for layer, h in enumerate(packed_layer_outputs(model, p)):
            x = p.unpack(h).float()
            if pooling == "last":
                out[layer, rows] = x[:, -1]
            else:
                out[layer, rows] = (x * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
    return out


# ---------------------------------------------------------------------- CKA and PCA


def _centered(X: torch.Tensor, name: str) -> torch.Tensor:
    X = torch.as_tensor(X).double()
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"{name} must be [n >= 2, d], got shape {tuple(X.shape)}")
    X = X - X.mean(0, keepdim=True)
    if float(X.norm()) == 0.0:
        raise ValueError(f"{name} has zero variance (every example has the same features)")
    return X


def linear_cka(X: Float[torch.Tensor, "n d1"], Y: Float[torch.Tensor, "n d2"]) -> float:
    """Linear CKA of two feature matrices over the same n examples: ||Yᵀ X||² / (||Xᵀ X|| ||Yᵀ Y||), centered."""
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"CKA needs the same examples: X has {X.shape[0]} rows, Y has {Y.shape[0]}")
    X, Y = _centered(X, "X"), _centered(Y, "Y")
    return float((Y.T @ X).norm() ** 2 / ((X.T @ X).norm() * (Y.T @ Y).norm()))


def principal_components(X: Float[torch.Tensor, "n d"], k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k principal directions [k, d] (sign fixed: largest-magnitude entry positive) and their std [k]."""
    Xc = _centered(X, "X")
    _, s, vh = torch.linalg.svd(Xc, full_matrices=False)
    k = min(k, vh.shape[0])
    pcs = vh[:k]
    signs = torch.sign(pcs.gather(1, pcs.abs().argmax(1, keepdim=True)))
    return pcs * signs, s[:k] / (Xc.shape[0] - 1) ** 0.5


def pca_similarity(X_ref: Float[torch.Tensor, "n d"], X: Float[torch.Tensor, "n d"]) -> tuple[float, float]:
    """(cos, |cos|) between the first principal components of two feature matrices."""
    p_ref, _ = principal_components(X_ref, 1)
    p, _ = principal_components(X, 1)
    c = float(p_ref[0] @ p[0])
    return c, abs(c)


def pca_shift(X_ref: Float[torch.Tensor, "n d"], X: Float[torch.Tensor, "n d"], k: int = 2) -> dict:
    """Mean features of both models projected onto the reference PCs; shift in reference standard deviations."""
    pcs, std = principal_components(X_ref, k)
    ref = pcs @ torch.as_tensor(X_ref).double().mean(0)
    other = pcs @ torch.as_tensor(X).double().mean(0)
    return {"reference": ref.tolist(), "edited": other.tolist(), "shift_std": ((other - ref) / std).tolist()}


# ---------------------------------------------------------------------- Fisher


def diagonal_fisher(
    model: Model, prompts: Sequence[str], answers: Sequence[str], *, batch_size: int = 4, layers_only: bool = False,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: mean over batches of squared gradients of the answer-token loss (pad masked).

    Gradients are taken with ``torch.autograd.grad`` so the model's ``.grad`` fields and weights stay untouched.
    ``layers_only``: only the decoder layers' parameters (what the per-layer summaries read); the embedding's
    dense gradient, the costliest part of the backward pass on a large vocabulary, is then never formed.
    """
    ids, mask, labels = answer_batch(model.tokenizer, prompts, answers, model_info(model).prepend_bos)
    named = [(n, p) for n, p in hf_parameters(model).items()  # plain HF names, so models match by exact name
             if not layers_only or _LAYER.search(n)]
    params = [p for _, p in named]
    flags = [p.requires_grad for p in params]
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    chunks = [slice(s, s + batch_size) for s in range(0, len(prompts), batch_size)]
    try:
        for p in params:
            p.requires_grad_(True)
        for sl in tqdm(chunks, desc="Fisher", disable=not progress or len(chunks) < 4, leave=False):
            with torch.enable_grad():  # answer_loss runs packed: the chunk's shared left padding costs nothing
                loss = answer_loss(model, ids[sl], mask[sl], labels[sl])
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            for f, g in zip(fisher, grads, strict=True):
                if g is not None:
                    f += g.detach().float() ** 2
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)

        clear_captures(model)  # release the autograd graph TransformerLens kept in its per-forward captures
    return {n: f / len(chunks) for (n, _), f in zip(named, fisher, strict=True)}


def fisher_by_layer(fisher: dict[str, torch.Tensor], n_layers: int) -> list[float]:
    """Mean diagonal Fisher over the parameters of each layer (names containing ``layers.{L}.``)."""
    sums, counts = np.zeros(n_layers), np.zeros(n_layers)
    for name, f in fisher.items():
        m = _LAYER.search(name)
        if m and int(m.group(1)) < n_layers:
            sums[int(m.group(1))] += float(f.sum())
            counts[int(m.group(1))] += f.numel()
    if (counts == 0).any():
        raise ValueError(f"no parameters found for layer(s) {np.flatnonzero(counts == 0).tolist()}")
    return (sums / counts).tolist()


def fisher_overlap(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor], n_layers: int) -> list[float]:
    """Per layer: cosine between two models' diagonal Fishers, parameters matched by exact name."""
    if set(reference) != set(other):
        diff = sorted(set(reference) ^ set(other))
        raise ValueError(f"models have different parameters (first: {diff[0]!r}); Fisher needs the same architecture")
    dots, na, nb = np.zeros(n_layers), np.zeros(n_layers), np.zeros(n_layers)
    for name in reference:
        m = _LAYER.search(name)
        if not m or int(m.group(1)) >= n_layers:
            continue
        a, b = reference[name].double().flatten(), other[name].double().flatten()
        if a.shape != b.shape:
            raise ValueError(f"parameter {name!r} has shape {tuple(reference[name].shape)} in one model and "
                             f"{tuple(other[name].shape)} in the other")
        layer = int(m.group(1))
        dots[layer] += float(a @ b)
        na[layer] += float(a @ a)
        nb[layer] += float(b @ b)
    return (dots / np.sqrt(np.maximum(na * nb, 1e-300))).tolist()


# ---------------------------------------------------------------------- all diagnostics


@dataclass
class Diagnostics:
    """Per-layer representation diagnostics of original vs edited (and optionally relearned) models."""

    pooling: str
    n_examples: int  # prompts the features were computed on (forget facts' prompts and paraphrases)
    cka: list[float]  # original vs edited
    pca_cos: list[float]
    pca_abs_cos: list[float]
    pca_shift: list[dict]  # per layer: reference/edited projections on the original PC1/PC2, shift in std
    fisher_original: list[float] | None = None  # mean diagonal Fisher per layer (true answers of forget facts)
    fisher_edited: list[float] | None = None
    fisher_cosine: list[float] | None = None  # per-layer cosine of the two Fisher diagonals
    cka_relearned: list[float] | None = None  # original vs relearned
    pca_abs_cos_relearned: list[float] | None = None
    fisher_relearned: list[float] | None = None

    def to_dict(self) -> dict:
        """JSON-serializable dict."""
        return asdict(self)


def diagnostic_texts(facts: Sequence[Fact]) -> list[str]:
    """Prompts the diagnostics use: each fact's training prompt and its paraphrases."""
    return [f.render(t) for f in facts for t in (f.prompt, *f.paraphrases)]


def diagnose(
    original: Model, edited: Model, facts: FactSet | Sequence[Fact], *, relearned: Model | None = None,
    pooling: Pooling = "last", fisher: bool = True, batch_size: int = 32, progress: bool = True,
    memo: OriginalMemo | None = None,
) -> Diagnostics:
    """PCA similarity/shift, CKA and Fisher per layer, on ``facts`` (usually the forget set) for both models.

    ``memo``: reuse the original model's features and Fisher from an earlier call (``mechedit.memo``).
    """
    facts = list(facts)
    texts = diagnostic_texts(facts)
    if len(texts) < 3:
        raise FactError(f"representation diagnostics need at least 3 prompts, got {len(texts)}")
    n_layers = arch(original).n_layers
    if arch(edited).n_layers != n_layers:
        raise ValueError("original and edited models have different numbers of layers")
    feats = {"original": remembered(memo, ("features", pooling, tuple(texts)), lambda: layer_features(
                 original, texts, pooling=pooling, batch_size=batch_size, progress=progress)),
             "edited": layer_features(edited, texts, pooling=pooling, batch_size=batch_size, progress=progress)}
    if relearned is not None:
        feats["relearned"] = layer_features(relearned, texts, pooling=pooling, batch_size=batch_size,
                                            progress=progress)
    ref, ed = feats["original"], feats["edited"]
    sims = [pca_similarity(ref[layer], ed[layer]) for layer in range(n_layers)]
    d = Diagnostics(
        pooling=pooling, n_examples=len(texts), cka=[linear_cka(ref[layer], ed[layer]) for layer in range(n_layers)],
        pca_cos=[s[0] for s in sims], pca_abs_cos=[s[1] for s in sims],
        pca_shift=[pca_shift(ref[layer], ed[layer]) for layer in range(n_layers)],
    )
    if relearned is not None:
        rl = feats["relearned"]
        d.cka_relearned = [linear_cka(ref[layer], rl[layer]) for layer in range(n_layers)]
        d.pca_abs_cos_relearned = [pca_similarity(ref[layer], rl[layer])[1] for layer in range(n_layers)]
    if fisher:
        prompts, answers = [f.render() for f in facts], [f.answer for f in facts]

        def fisher_of(model: Model) -> dict[str, torch.Tensor]:
            return diagonal_fisher(model, prompts, answers, layers_only=True, progress=progress)

        f_ref = remembered(memo, ("fisher", "layers", tuple(prompts), tuple(answers)), lambda: fisher_of(original))
        f_ed = fisher_of(edited)
        d.fisher_original, d.fisher_edited = fisher_by_layer(f_ref, n_layers), fisher_by_layer(f_ed, n_layers)
        d.fisher_cosine = fisher_overlap(f_ref, f_ed, n_layers)
        if relearned is not None:
            d.fisher_relearned = fisher_by_layer(fisher_of(relearned), n_layers)
    return d
