"""Mean-difference (linear-direction) probes for two classes, one per layer, fitted in closed form.

The direction is the difference of the class means (optionally after per-feature standardization); an
example is assigned to the second class when its projection lies beyond the midpoint of the two projected
class means. Useful as a cheap, regularization-free baseline and as a steering/ablation direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float

from probes.logistic import as_layers, fitted_input
from probes.split import encode_labels


class MeanDiffProbe:
    """Per-layer two-class probe along the difference of class means."""

    def __init__(self, *, standardize: bool = False, dtype: torch.dtype = torch.float64):
        self.standardize, self.dtype = standardize, dtype

    def fit(self, X: Float[torch.Tensor, "layer n d"], y: Sequence | np.ndarray | torch.Tensor) -> MeanDiffProbe:
        """Fit directions from exactly two classes (the second of the sorted classes is the positive one)."""
        X = as_layers(X, self.dtype)
        classes, idx = encode_labels(y)
        if len(idx) != X.shape[1]:
            raise ValueError(f"X has {X.shape[1]} examples but y has {len(idx)} labels")
        if len(classes) != 2:
            raise ValueError(f"MeanDiffProbe needs exactly 2 classes, got {len(classes)} ({classes.tolist()})")
        counts = np.bincount(idx, minlength=2)
        if counts.min() < 1:
            raise ValueError(f"each class needs at least one example, got counts {counts.tolist()}")
        self.classes_ = classes
        if self.standardize:
            self.mean_ = X.mean(1, keepdim=True)
            scale = X.std(1, unbiased=False, keepdim=True)
            self.scale_ = torch.where(scale > 0, scale, torch.ones_like(scale))
        else:
            self.mean_ = torch.zeros(X.shape[0], 1, X.shape[2], dtype=self.dtype)
            self.scale_ = torch.ones(X.shape[0], 1, X.shape[2], dtype=self.dtype)
        Z = (X - self.mean_) / self.scale_
        pos = torch.as_tensor(idx == 1)
        mu1, mu0 = Z[:, pos].mean(1), Z[:, ~pos].mean(1)  # [L, d]
        self.direction_ = mu1 - mu0
        self.threshold_ = ((mu1 + mu0) / 2 * self.direction_).sum(-1)  # [L]
        return self

    @torch.no_grad()
    def decision_function(self, X: Float[torch.Tensor, "layer n d"]) -> Float[torch.Tensor, "layer n"]:
        """Signed projection minus the midpoint threshold (> 0: second class)."""
        v = getattr(self, "direction_", None)
        X = fitted_input(X, self.dtype, "MeanDiffProbe", v, *((0, 0) if v is None else v.shape))
        Z = (X - self.mean_) / self.scale_
        return torch.einsum("lnd,ld->ln", Z, self.direction_) - self.threshold_[:, None]

    def predict(self, X: Float[torch.Tensor, "layer n d"]) -> np.ndarray:
        """Predicted labels, shape [layer, n]."""
        positive = (self.decision_function(X) > 0).long().numpy()
        return self.classes_[positive]

    def score(self, X: Float[torch.Tensor, "layer n d"], y: Sequence | np.ndarray | torch.Tensor) -> np.ndarray:
        """Accuracy per layer, shape [layer]."""
        y = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        return (self.predict(X) == y[None, :]).mean(1)

    @property
    def unit_direction(self) -> Float[torch.Tensor, "layer d"]:
        """The direction in the original activation space, normalized to unit length per layer."""
        raw = self.direction_ / self.scale_[:, 0]
        return raw / raw.norm(dim=-1, keepdim=True).clamp(min=1e-30)
