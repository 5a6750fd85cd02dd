"""Multinomial logistic-regression probes for every layer at once (batched torch, sklearn-style interface).

Objective per layer (the same as ``sklearn.linear_model.LogisticRegression(C=C)``, penalty l2, intercept
unpenalized): ``mean_i CE(x_i, y_i) + ||W||^2 / (2 * C * n)``. As in sklearn, two classes use one weight
vector (logit of the second class against a fixed zero), more classes use one vector per class (symmetric
softmax). The layers are independent problems, minimized together by batched L-BFGS (``probes.lbfgs``:
per-layer history, step size and stopping) or full-batch Adam. Features are standardized per layer on
the training data (as ``StandardScaler`` would) unless ``standardize=False``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float

from probes.lbfgs import minimize_adam, minimize_lbfgs, threads_for
from probes.split import encode_labels, label_name


class ProbeConvergenceWarning(UserWarning):
    """The optimizer stopped at ``max_iter`` before the gradient tolerance was reached."""


def as_layers(X, dtype: torch.dtype) -> torch.Tensor:
    """X as a [layers, n, d] tensor of ``dtype`` (raises on other ranks)."""
    X = torch.as_tensor(X)
    if X.ndim != 3:
        raise ValueError(f"expected X of shape [layers, examples, d], got {tuple(X.shape)}; "
                         "for a single layer pass X[None]")
    if not torch.isfinite(X).all():
        raise ValueError("X contains NaN or inf values")
    return X.to(dtype)


def fitted_input(X, dtype: torch.dtype, name: str, fitted: torch.Tensor | None, layers: int, d: int,
                  fit_call: str = "fit(X, y)") -> torch.Tensor:
    """X as ``as_layers`` gives it, checked against a fitted probe's layer count and width (None: unfitted)."""
    if fitted is None:
        raise RuntimeError(f"{name} is not fitted; call {fit_call} first")
    X = as_layers(X, dtype)
    if X.shape[0] != layers or X.shape[2] != d:
        raise ValueError(f"X has shape {tuple(X.shape)} but the probe was fitted on [{layers}, n, {d}]")
    return X


class LogisticProbe:
    """L2-regularized multinomial logistic regression fitted independently for each layer of ``X``."""

    def __init__(
        self,
        C: float = 1.0,
        *,
        standardize: bool = True,
        solver: Literal["lbfgs", "adam"] = "lbfgs",
        max_iter: int = 1000,
        tol: float = 1e-4,
        lr: float = 0.02,
        min_per_class: int = 2,
        dtype: torch.dtype = torch.float64,
    ):
        if C <= 0:
            raise ValueError(f"C must be positive, got {C}")
        if solver not in ("lbfgs", "adam"):
            raise ValueError(f"unknown solver {solver!r}; use 'lbfgs' or 'adam'")
        self.C, self.standardize, self.solver = C, standardize, solver
        self.max_iter, self.tol, self.lr, self.min_per_class, self.dtype = max_iter, tol, lr, min_per_class, dtype

    # ------------------------------------------------------------------ fitting
    def _check_labels(self, y, n: int) -> tuple[np.ndarray, np.ndarray]:
        classes, idx = encode_labels(y)
        if len(idx) != n:
            raise ValueError(f"X has {n} examples but y has {len(idx)} labels")
        if len(classes) < 2:
            raise ValueError(f"need at least 2 classes to fit a probe, got {len(classes)} ({classes.tolist()})")
        counts = np.bincount(idx, minlength=len(classes))
        small = {label_name(classes[c]): int(counts[c]) for c in range(len(classes)) if counts[c] < self.min_per_class}
        if small:
            raise ValueError(f"class(es) with fewer than {self.min_per_class} training examples: {small}")
        return classes, idx

    def _logits(self, Z: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = torch.baddbmm(b[:, None, :], Z, W)  # [L, n, k]
        if out.shape[-1] == 1:  # binary: class 0 has a fixed zero logit (sklearn's parameterization)
            out = torch.cat([torch.zeros_like(out), out], -1)
        return out

    def _objective(self, Z, target, W, b) -> torch.Tensor:
        """Per-layer objective: mean cross-entropy + ||W||^2 / (2 C n)."""
        L, n, _ = Z.shape
        logits = self._logits(Z, W, b)
        ce = torch.nn.functional.cross_entropy(logits.reshape(L * n, -1), target.repeat(L), reduction="none")
        return ce.view(L, n).mean(1) + (W**2).sum((1, 2)) / (2 * self.C * n)

    def fit(self, X: Float[torch.Tensor, "layer n d"], y: Sequence | np.ndarray | torch.Tensor) -> LogisticProbe:
        """Fit one probe per layer of ``X`` on labels ``y`` (any sortable labels; classes_ holds them)."""
        X = as_layers(X, self.dtype)
        L, n, d = X.shape
        classes, idx = self._check_labels(y, n)
        target = torch.as_tensor(idx)
        if self.standardize:
            self.mean_ = X.mean(1, keepdim=True)
            scale = X.std(1, unbiased=False, keepdim=True)
            self.scale_ = torch.where(scale > 1e-12 * scale.amax().clamp(min=1e-30), scale, torch.ones_like(scale))
        else:
            self.mean_ = torch.zeros(L, 1, d, dtype=self.dtype)
            self.scale_ = torch.ones(L, 1, d, dtype=self.dtype)
        Z = (X - self.mean_) / self.scale_
        k = 1 if len(classes) == 2 else len(classes)

        subsets: dict[tuple, torch.Tensor] = {}  # the active layers' features, gathered once per active set

        def fun(theta: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            key = tuple(idx.tolist())
            if key not in subsets:
                if len(subsets) >= 3:
                    subsets.pop(next(iter(subsets)))
                subsets[key] = Z if len(key) == L else Z[idx]
            return self._objective(subsets[key], target, theta[:, : d * k].reshape(-1, d, k), theta[:, d * k:])

        theta0 = torch.zeros(L, d * k + k, dtype=self.dtype)
        with threads_for(L * n * d * k, small=1e9):
            if self.solver == "lbfgs":
                res = minimize_lbfgs(fun, theta0, max_iter=self.max_iter, tol=self.tol)
            else:
                res = minimize_adam(fun, theta0, max_iter=self.max_iter, tol=self.tol, lr=self.lr)
        self.weight_, self.bias_ = res.theta[:, : d * k].reshape(L, d, k), res.theta[:, d * k:].clone()
        self.n_iter_, self.converged_, self.classes_ = res.n_iter.numpy(), res.converged.numpy(), classes
        with torch.no_grad():
            self.loss_ = self._objective(Z, target, self.weight_, self.bias_).numpy()
        if not res.converged.all():
            bad = (~res.converged).nonzero().flatten().tolist()
            warnings.warn(f"LogisticProbe ({self.solver}) did not reach tol {self.tol:.0e} on layer(s) {bad} "
                          f"(max |gradient| {float(res.grad_max.max()):.1e}) within max_iter={self.max_iter}",
                          ProbeConvergenceWarning, stacklevel=2)
        return self

    # ------------------------------------------------------------------ prediction
    def _check_fitted(self, X) -> torch.Tensor:
        w = getattr(self, "weight_", None)
        return fitted_input(X, self.dtype, "LogisticProbe", w, *((0, 0) if w is None else w.shape[:2]))

    @torch.no_grad()
    def decision_function(self, X: Float[torch.Tensor, "layer n d"]) -> Float[torch.Tensor, "layer n classes"]:
        """Logits per layer, example and class (binary: the first class's logit is 0)."""
        X = self._check_fitted(X)
        return self._logits((X - self.mean_) / self.scale_, self.weight_, self.bias_)

    def predict_proba(self, X: Float[torch.Tensor, "layer n d"]) -> Float[torch.Tensor, "layer n classes"]:
        """Class probabilities per layer and example (columns ordered as ``classes_``)."""
        return torch.softmax(self.decision_function(X), -1)

    def predict(self, X: Float[torch.Tensor, "layer n d"]) -> np.ndarray:
        """Predicted labels, shape [layer, n]."""
        best = self.decision_function(X).argmax(-1).numpy()
        return self.classes_[best]

    def score(self, X: Float[torch.Tensor, "layer n d"], y: Sequence | np.ndarray | torch.Tensor) -> np.ndarray:
        """Accuracy per layer, shape [layer]."""
        y = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        pred = self.predict(X)
        if pred.shape[1] != len(y):
            raise ValueError(f"X has {pred.shape[1]} examples but y has {len(y)} labels")
        return (pred == y[None, :]).mean(1)

    @property
    def coef_(self) -> Float[torch.Tensor, "layer k d"]:
        """Weights in the original (unstandardized) feature space, sklearn orientation [layer, k, d]."""
        return (self.weight_ / self.scale_.transpose(1, 2)).transpose(1, 2)

    @property
    def intercept_(self) -> Float[torch.Tensor, "layer k"]:
        """Intercepts in the original feature space."""
        return self.bias_ - torch.einsum("lkd,ld->lk", self.coef_, self.mean_[:, 0])
