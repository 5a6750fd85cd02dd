"""Batched L-BFGS for many independent smooth problems at once (one per layer), and a batched Adam.

Each problem keeps its own curvature history, step size (Armijo backtracking) and convergence test, so
a badly conditioned layer neither slows down nor is slowed down by the others, while every function
evaluation is one batched tensor computation. ``fun(theta)`` maps parameters [problems, n_params] to
objective values [problems]; problem ``i``'s value may depend only on ``theta[i]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int

Objective = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class MinimizeResult:
    """Solution per problem, iterations used, convergence flags and final gradient max-norms."""

    theta: Float[torch.Tensor, "problem param"]
    n_iter: Int[torch.Tensor, " problem"]
    converged: Bool[torch.Tensor, " problem"]
    grad_max: Float[torch.Tensor, " problem"]


def _value_and_grad(fun: Objective, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        x = theta.detach().requires_grad_(True)
        f = fun(x)
        (g,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), g


def minimize_lbfgs(fun: Objective, theta0: Float[torch.Tensor, "problem param"], *, max_iter: int = 500,
                   tol: float = 1e-6, history: int = 10, c1: float = 1e-4, max_backtrack: int = 40) -> MinimizeResult:
    """Minimize every problem until its gradient max-norm is <= ``tol`` (or ``max_iter`` iterations)."""
    theta = theta0.detach().clone()
    f, g = _value_and_grad(fun, theta)
    f_prev = f + f.abs() + 1
    n_prob = theta.shape[0]
    S: list[torch.Tensor] = []
    Y: list[torch.Tensor] = []
    R: list[torch.Tensor] = []
    n_iter = torch.zeros(n_prob, dtype=torch.long)
    done = g.abs().amax(1) <= tol
    for _ in range(max_iter):
        if bool(done.all()):
            break
        # two-loop recursion, batched over problems (rho = 0 removes a pair for that problem)
        q = g.clone()
        alphas = []
        for s, y, rho in zip(reversed(S), reversed(Y), reversed(R), strict=True):
            a = rho * (s * q).sum(1)
            q -= a[:, None] * y
            alphas.append(a)
        if S:
            sy, yy = (S[-1] * Y[-1]).sum(1), (Y[-1] * Y[-1]).sum(1)
            gamma = torch.where((sy > 0) & (yy > 0), sy / yy.clamp(min=1e-300), torch.ones_like(sy))
        else:  # first step: a short gradient step, as scipy/torch do
            gamma = 1.0 / g.abs().sum(1).clamp(min=1.0)
        r = gamma[:, None] * q
        for s, y, rho, a in zip(S, Y, R, reversed(alphas), strict=True):
            b = rho * (y * r).sum(1)
            r += s * (a - b)[:, None]
        d = -r
        slope = (g * d).sum(1)
        bad = slope >= 0  # not a descent direction: fall back to steepest descent
        if bool(bad.any()):
            d[bad] = -g[bad]
            slope = (g * d).sum(1)
        d[done] = 0
        # Armijo backtracking, per problem
        t = torch.ones(n_prob, dtype=theta.dtype)
        ok = done.clone()
        for _ in range(max_backtrack):
            f_new = fun(theta + t[:, None] * d).detach()
            ok = ok | (f_new <= f + c1 * t * slope)
            if bool(ok.all()):
                break
            t = torch.where(ok, t, t * 0.5)
        t = torch.where(ok, t, torch.zeros_like(t))  # no acceptable step: stay put (counted as converged below)
        theta_new = theta + t[:, None] * d
        f_new, g_new = _value_and_grad(fun, theta_new)
        s, y = theta_new - theta, g_new - g
        sy = (s * y).sum(1)
        rho = torch.where(sy > 1e-12 * (s * s).sum(1).sqrt() * (y * y).sum(1).sqrt(), 1.0 / sy.clamp(min=1e-300),
                          torch.zeros_like(sy))
        S.append(s)
        Y.append(y)
        R.append(rho)
        if len(S) > history:
            S.pop(0), Y.pop(0), R.pop(0)
        theta, f, g = theta_new, f_new, g_new
        n_iter += (~done).long()
        stalled = (~ok) | (t == 0) | (f_prev - f <= 4 * torch.finfo(f.dtype).eps * f.abs())  # at float precision
        f_prev = f
        done = done | (g.abs().amax(1) <= tol) | stalled
    grad_max = g.abs().amax(1)
    return MinimizeResult(theta, n_iter, grad_max <= tol, grad_max)


@contextlib.contextmanager
def threads_for(work: float, small: float = 3e7):
    """Use one torch thread while running problems of less than ``small`` multiply-adds per evaluation.

    Tiny batched problems run many short kernels; with several threads on a busy machine the threads
    mostly wait for each other (10x slower measured on 2 shared cores). The setting is restored on exit.
    """
    before = torch.get_num_threads()
    if work < small and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def minimize_adam(fun: Objective, theta0: Float[torch.Tensor, "problem param"], *, max_iter: int = 2000,
                  tol: float = 1e-6, lr: float = 0.02, betas: tuple[float, float] = (0.9, 0.999),
                  eps: float = 1e-8) -> MinimizeResult:
    """Full-batch Adam on every problem; a problem stops once its gradient max-norm is <= ``tol``."""
    theta = theta0.detach().clone()
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    n_iter = torch.zeros(theta.shape[0], dtype=torch.long)
    _, g = _value_and_grad(fun, theta)
    done = g.abs().amax(1) <= tol
    for step in range(1, max_iter + 1):
        if bool(done.all()):
            break
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        upd = lr * (m / (1 - betas[0] ** step)) / ((v / (1 - betas[1] ** step)).sqrt() + eps)
        theta = theta - torch.where(done[:, None], torch.zeros_like(upd), upd)
        n_iter += (~done).long()
        _, g = _value_and_grad(fun, theta)
        done = done | (g.abs().amax(1) <= tol)
    grad_max = g.abs().amax(1)
    return MinimizeResult(theta, n_iter, grad_max <= tol, grad_max)
