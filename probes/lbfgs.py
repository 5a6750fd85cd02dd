"""Batched L-BFGS for many independent smooth problems at once (one per layer), and a batched Adam.

Each problem keeps its own curvature history, step size (Armijo backtracking) and stopping test, so a
badly conditioned layer neither slows down nor is slowed down by the others. Finished problems leave the
batch (the work per iteration shrinks with them); the gradient at a full step is reused when the step is
accepted, so most iterations cost one forward and one backward pass of the active problems.

``fun(theta, idx)`` gets parameters ``[len(idx), n_params]`` for the problems ``idx`` (indices into the
batch) and returns their objective values ``[len(idx)]``; problem ``i``'s value may depend only on its row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MinimizeResult:
    """Solution per problem, iterations used, convergence flags and final gradient max-norms."""

    theta: Float[torch.Tensor, "problem param"]
    n_iter: Int[torch.Tensor, " problem"]
    converged: Bool[torch.Tensor, " problem"]
    grad_max: Float[torch.Tensor, " problem"]


def _value_and_grad(fun: Objective, theta: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        x = theta.detach().requires_grad_(True)
        f = fun(x, idx)
        (g,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), g


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products without a [problems, params] temporary."""
    return torch.einsum("lp,lp->l", a, b)


def _direction(g: torch.Tensor, S: list, Y: list, R: list) -> torch.Tensor:
    """L-BFGS two-loop recursion, batched over problems (rho = 0 removes a pair for that problem)."""
    q = g.clone()
    alphas = []
    for s, y, rho in zip(reversed(S), reversed(Y), reversed(R), strict=True):
        a = rho * _dot(s, q)
        q.addcmul_(y, a[:, None], value=-1)
        alphas.append(a)
    if S:
        sy, yy = _dot(S[-1], Y[-1]), _dot(Y[-1], Y[-1])
        gamma = torch.where((sy > 0) & (yy > 0), sy / yy.clamp(min=1e-300), torch.ones_like(sy))
    else:  # first step: a short gradient step, as scipy/torch do
        gamma = 1.0 / g.abs().sum(1).clamp(min=1.0)
    r = gamma[:, None] * q
    for s, y, rho, a in zip(S, Y, R, reversed(alphas), strict=True):
        b = rho * _dot(y, r)
        r.addcmul_(s, (a - b)[:, None])
    d = -r
    bad = _dot(g, d) >= 0  # not a descent direction: fall back to steepest descent
    if bool(bad.any()):
        d[bad] = -g[bad]
    return d


def minimize_lbfgs(fun: Objective, theta0: Float[torch.Tensor, "problem param"], *, max_iter: int = 500,
                   tol: float = 1e-4, history: int = 10, c1: float = 1e-4, max_backtrack: int = 40) -> MinimizeResult:
    """Minimize every problem until its gradient max-norm is <= ``tol`` (sklearn's rule) or ``max_iter``."""
    theta_out = theta0.detach().clone()
    n_prob = theta_out.shape[0]
    n_iter = torch.zeros(n_prob, dtype=torch.long)
    grad_out = torch.zeros(n_prob, dtype=theta_out.dtype)
    act = torch.arange(n_prob)
    theta = theta_out.clone()
    f, g = _value_and_grad(fun, theta, act)
    f_prev = f + f.abs() + 1
    S: list[torch.Tensor] = []
    Y: list[torch.Tensor] = []
    R: list[torch.Tensor] = []
    finished = torch.zeros(n_prob, dtype=torch.bool)
    for step in range(max_iter + 1):
        gmax = g.abs().amax(1)
        stalled = f_prev - f <= 4 * torch.finfo(f.dtype).eps * f.abs()  # no progress at float precision
        leave = (gmax <= tol) | stalled | torch.full_like(stalled, step == max_iter)
        if bool(leave.any()):  # finished problems leave the batch
            theta_out[act[leave]], grad_out[act[leave]] = theta[leave], gmax[leave]
            finished[act[leave]] = True
            keep = ~leave
            act, theta, f, g, f_prev = act[keep], theta[keep], f[keep], g[keep], f_prev[keep]
            S, Y, R = [s[keep] for s in S], [y[keep] for y in Y], [r[keep] for r in R]
        if len(act) == 0:
            break
        d = _direction(g, S, Y, R)
        slope = _dot(g, d)
        # full step, with its gradient (reused when the step is accepted, the usual case)
        f_new, g_new = _value_and_grad(fun, theta + d, act)
        t = torch.ones(len(act), dtype=theta.dtype)
        ok = f_new <= f + c1 * slope
        if not bool(ok.all()):  # Armijo backtracking on the failing problems only
            bad = (~ok).nonzero().flatten()
            tb = torch.ones(len(bad), dtype=theta.dtype)
            okb = torch.zeros(len(bad), dtype=torch.bool)
            for _ in range(max_backtrack):
                tb = torch.where(okb, tb, tb * 0.5)
                fb = fun((theta[bad] + tb[:, None] * d[bad]).detach(), act[bad]).detach()
                okb = okb | (fb <= f[bad] + c1 * tb * slope[bad])
                if bool(okb.all()):
                    break
            tb = torch.where(okb, tb, torch.zeros_like(tb))  # no acceptable step: stay (stalls next round)
            t[bad] = tb
            fb, gb = _value_and_grad(fun, theta[bad] + tb[:, None] * d[bad], act[bad])
            f_new, g_new = f_new.clone(), g_new.clone()
            f_new[bad], g_new[bad] = fb, gb
        theta_new = theta + t[:, None] * d
        s, y = theta_new - theta, g_new - g
        sy = _dot(s, y)
        curv = sy > 1e-12 * _dot(s, s).sqrt() * _dot(y, y).sqrt()
        S.append(s)
        Y.append(y)
        R.append(torch.where(curv, 1.0 / sy.clamp(min=1e-300), torch.zeros_like(sy)))
        if len(S) > history:
            S.pop(0), Y.pop(0), R.pop(0)
        f_prev, theta, f, g = f, theta_new, f_new, g_new
        n_iter[act] += 1
    return MinimizeResult(theta_out, n_iter, grad_out <= tol, grad_out)


@contextlib.contextmanager
def threads_for(work: float, small: float = 3e7):
    """Use one torch thread while running problems of less than ``small`` multiply-adds per evaluation.

    Probe fits and small models run many short, memory-bound kernels; with several threads on a busy
    machine the threads mostly wait for each other (a 30-layer smollm2 probe fit: 3.6 s on one thread,
    34 s on two, measured on 2 shared cores). The previous setting is restored on exit.
    """
    before = torch.get_num_threads()
    if work < small and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def minimize_adam(fun: Objective, theta0: Float[torch.Tensor, "problem param"], *, max_iter: int = 2000,
                  tol: float = 1e-4, lr: float = 0.02, betas: tuple[float, float] = (0.9, 0.999),
                  eps: float = 1e-8) -> MinimizeResult:
    """Full-batch Adam on every problem; a problem stops once its gradient max-norm is <= ``tol``."""
    theta = theta0.detach().clone()
    idx = torch.arange(theta.shape[0])
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    n_iter = torch.zeros(theta.shape[0], dtype=torch.long)
    _, g = _value_and_grad(fun, theta, idx)
    done = g.abs().amax(1) <= tol
    for step in range(1, max_iter + 1):
        if bool(done.all()):
            break
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        upd = lr * (m / (1 - betas[0] ** step)) / ((v / (1 - betas[1] ** step)).sqrt() + eps)
        theta = theta - torch.where(done[:, None], torch.zeros_like(upd), upd)
        n_iter += (~done).long()
        _, g = _value_and_grad(fun, theta, idx)
        done = done | (g.abs().amax(1) <= tol)
    grad_max = g.abs().amax(1)
    return MinimizeResult(theta, n_iter, grad_max <= tol, grad_max)
