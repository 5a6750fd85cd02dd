"""Open-vocabulary linear probes: ridge regression from activations to an answer's vector, for every layer at once.

A categorical probe needs every answer it should recognise among its training labels; when answers hardly repeat
(capitals, most relations of real facts) it cannot be trained. ``RidgeProbe`` instead learns, per layer, a linear
map from the (standardized) activation to a vector representing the answer (e.g. the unembedding row of its first
token) and decodes by **forced choice**: the candidate whose vector is closest in cosine to the prediction, both
centred on the mean training target. It can therefore name answers it never saw in training, as long as their
vectors lie in directions the training targets span.

Closed form, deterministic (no optimizer, no random state): in the dual, per layer,
``A = (Z Zᵀ + λ I)⁻¹ (Y − ȳ)`` and ``ŷ(x) = z(x) Zᵀ A + ȳ``, with ``λ = alpha · mean(diag Z Zᵀ)`` so ``alpha`` is
scale-free. Several ``alphas`` are fitted at once; ``choose_alpha`` keeps, per layer, the one that decodes a
held-out set best.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float

from probes.logistic import as_layers, fitted_input


class RidgeProbe:
    """Per-layer ridge regression to answer vectors, scored by forced choice among candidate vectors."""

    def __init__(self, alphas: Sequence[float] = (0.1, 1.0, 10.0), *, dtype: torch.dtype = torch.float64):
        if not len(alphas) or any(a <= 0 for a in alphas):
            raise ValueError(f"alphas must be positive, got {list(alphas)}")
        self.alphas, self.dtype = tuple(float(a) for a in alphas), dtype

    def fit(self, X: Float[torch.Tensor, "layer n d"], Y: Float[torch.Tensor, "n k"]) -> RidgeProbe:
        """Fit one map per layer and alpha from ``X`` to the target vectors ``Y`` (one row per example)."""
        X = as_layers(X, self.dtype)
        Y = torch.as_tensor(Y).to(self.dtype)
        L, n, _ = X.shape
        if Y.ndim != 2 or Y.shape[0] != n:
            raise ValueError(f"Y must be [n={n}, k], got {tuple(Y.shape)}")
        if n < 2:
            raise ValueError(f"need at least 2 training examples, got {n}")
        self.mean_ = X.mean(1, keepdim=True)
        scale = X.std(1, unbiased=False, keepdim=True)
        self.scale_ = torch.where(scale > 1e-12 * scale.amax().clamp(min=1e-30), scale, torch.ones_like(scale))
        self.Z_ = (X - self.mean_) / self.scale_  # [L, n, d]
        self.y_mean_ = Y.mean(0)
        K = self.Z_ @ self.Z_.transpose(1, 2)  # [L, n, n]
        base = K.diagonal(dim1=1, dim2=2).mean(1).clamp(min=1e-12)  # [L]
        eye = torch.eye(n, dtype=self.dtype)
        Yc = (Y - self.y_mean_)[None].expand(L, n, -1)
        self.dual_ = torch.stack([torch.linalg.solve(K + (a * base)[:, None, None] * eye, Yc) for a in self.alphas])
        self.alpha_index_ = torch.zeros(L, dtype=torch.long)  # first alpha until choose_alpha is called
        return self

    def _check(self, X) -> torch.Tensor:
        Z = getattr(self, "Z_", None) if hasattr(self, "dual_") else None
        return fitted_input(X, self.dtype, "RidgeProbe", Z, *((0, 0) if Z is None else (Z.shape[0], Z.shape[2])),
                             fit_call="fit(X, Y)")

    @torch.no_grad()
    def predict_all(self, X: Float[torch.Tensor, "layer n d"]) -> Float[torch.Tensor, "alpha layer n k"]:
        """Predicted answer vectors for every alpha and layer."""
        Zq = (self._check(X) - self.mean_) / self.scale_
        Kq = Zq @ self.Z_.transpose(1, 2)  # [L, m, n]
        return Kq[None] @ self.dual_ + self.y_mean_

    def predict(self, X: Float[torch.Tensor, "layer n d"]) -> Float[torch.Tensor, "layer n k"]:
        """Predicted answer vectors with each layer's chosen alpha."""
        out = self.predict_all(X)
        return out[self.alpha_index_, torch.arange(out.shape[1])]

    def _choices(self, pred: torch.Tensor, cand: Sequence[torch.Tensor]) -> np.ndarray:
        """Index of the chosen candidate per (..., example): cosine of centred vectors."""
        out = np.empty(pred.shape[:-1], dtype=np.int64)
        p = pred - self.y_mean_
        p = p / p.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        for i, c in enumerate(cand):
            c = torch.as_tensor(c).to(self.dtype) - self.y_mean_
            c = c / c.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            out[..., i] = (p[..., i, :] @ c.T).argmax(-1).numpy()
        return out

    def choose(self, X: Float[torch.Tensor, "layer n d"], candidates: Sequence[torch.Tensor]) -> np.ndarray:
        """Forced choice per layer and example: index into that example's candidate vectors ([n_cand_i, k])."""
        if len(candidates) != X.shape[1]:
            raise ValueError(f"X has {X.shape[1]} examples but {len(candidates)} candidate sets were given")
        return self._choices(self.predict(X), candidates)

    def choose_alpha(self, X: Float[torch.Tensor, "layer n d"], candidates: Sequence[torch.Tensor],
                     correct: Sequence[int]) -> np.ndarray:
        """Per layer, keep the alpha whose forced choice is most often ``correct`` on (X, candidates); accuracies.

        Ties go to the larger alpha (the smoother map). Returns the accuracy per layer at the chosen alpha.
        """
        if len(candidates) != X.shape[1] or len(correct) != X.shape[1]:
            raise ValueError("X, candidates and correct must describe the same examples")
        picks = self._choices(self.predict_all(X), candidates)  # [alpha, L, n]
        acc = (picks == np.asarray(correct)[None, None, :]).mean(2)  # [alpha, L]
        rev = acc[::-1]
        best = len(self.alphas) - 1 - rev.argmax(0)
        self.alpha_index_ = torch.as_tensor(best, dtype=torch.long)
        return acc[best, np.arange(acc.shape[1])]
