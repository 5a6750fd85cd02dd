"""Editing and unlearning objectives: one small function each, shared signature, registry ``OBJECTIVES``.

Every objective maps ``ObjectiveInputs`` (next-token log-probabilities at the first answer token of the
forget and retain prompts, plus references from the original model) to ``Terms``: the forget/edit term and
the retain term (``None``: the objective has none). The editor adds the fluency term and the weights:
``loss = c_f · forget + retain_weight · retain + fluency_weight · fluency``. Log-probabilities are over the
full vocabulary; "NLL" is the negative log-probability of the answer's first token, averaged over facts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from mechedit.edit.config import EditConfig, EditError


@dataclass
class ObjectiveInputs:
    """What an objective sees at one step (rows are facts; ``vocab`` is the model's vocabulary)."""

    forget_logp: Float[torch.Tensor, "n_forget vocab"]  # current model, forget prompts
    answer_ids: Int[torch.Tensor, " n_forget"]  # true answers' first tokens
    target_ids: Int[torch.Tensor, " n_forget"]  # new targets' first tokens (-1: no target)
    random_ids: Int[torch.Tensor, " n_forget"]  # a random wrong candidate per fact (fixed under the seed)
    retain_logp: Float[torch.Tensor, "n_retain vocab"] | None  # current model, maintain prompts
    retain_answer_ids: Int[torch.Tensor, " n_retain"] | None
    forget_ref_logp: Float[torch.Tensor, "n_forget vocab"] | None = None  # original model (if needed)
    retain_ref_logp: Float[torch.Tensor, "n_retain vocab"] | None = None  # original model (if needed)
    teacher_probs: Float[torch.Tensor, "n_forget vocab"] | None = None  # causal teacher (if needed)


@dataclass
class Terms:
    """An objective's forget/edit term and retain term (None when the objective has no retain term)."""

    forget: torch.Tensor
    retain: torch.Tensor | None


ObjectiveFn = Callable[[ObjectiveInputs, EditConfig], Terms]


@dataclass(frozen=True)
class Objective:
    """A registered objective: its function and which references the editor must prepare for it."""

    name: str
    fn: ObjectiveFn
    needs: frozenset[str] = frozenset()  # of: target, random, retain, forget_ref, retain_ref, teacher
    doc: str = ""

    @classmethod
    def of(cls, name: str, fn: ObjectiveFn, needs: tuple[str, ...] = ()) -> Objective:
        """An objective whose ``doc`` is the first line of ``fn``'s docstring."""
        return cls(name, fn, frozenset(needs), (fn.__doc__ or "").strip().split("\n")[0])


def get_objective(objective: str | Objective) -> Objective:
    """The registered objective called ``objective`` (an ``Objective`` passes through)."""
    if isinstance(objective, Objective):
        return objective
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective]


# ---------------------------------------------------------------------- building blocks


def nll(logp: Float[torch.Tensor, "n vocab"], ids: Int[torch.Tensor, " n"]) -> torch.Tensor:
    """Mean negative log-probability of ``ids`` (one per row)."""
    return -logp.gather(1, ids[:, None]).mean()


def kl(ref_logp: Float[torch.Tensor, "n vocab"], logp: Float[torch.Tensor, "n vocab"]) -> torch.Tensor:
    """Mean over rows of KL(p_ref ‖ p) (the reference is a constant)."""
    return F.kl_div(logp, ref_logp.detach(), log_target=True, reduction="batchmean")


def retain_nll(x: ObjectiveInputs) -> torch.Tensor:
    """The shared retain term: NLL of maintain facts' true answers."""
    return nll(x.retain_logp, x.retain_answer_ids)


# ---------------------------------------------------------------------- objectives


def edit_objective(x: ObjectiveInputs, cfg: EditConfig) -> Terms:
    """Cross-entropy toward the new target; NLL retain."""
    if bool((x.target_ids < 0).any()):
        raise EditError("objective 'edit' needs a target for every forget fact")
    return Terms(nll(x.forget_logp, x.target_ids), retain_nll(x))


def gradient_ascent(x: ObjectiveInputs, cfg: EditConfig) -> Terms:
    """Gradient ascent on the true answer (minimize log p(answer)); no retain term (that is gradiff)."""
    return Terms(-nll(x.forget_logp, x.answer_ids), None)


def gradient_difference(x: ObjectiveInputs, cfg: EditConfig) -> Terms:
    """−NLL on the forget facts + NLL on the maintain facts."""
    return Terms(-nll(x.forget_logp, x.answer_ids), retain_nll(x))


def gradient_ascent_kl(x: ObjectiveInputs, cfg: EditConfig) -> Terms:
    """−NLL on the forget facts + KL(p_original ‖ p) on the maintain prompts."""
    return Terms(-nll(x.forget_logp, x.answer_ids), kl(x.retain_ref_logp, x.retain_logp))


def negative_preference(x: ObjectiveInputs, cfg: EditConfig) -> Terms:
    """NPO (Zhang et al. 2024): −(2/β)·mean log σ(−β·log(π_θ/π_ref)) on the answer tokens; NLL retain."""
    idx = x.answer_ids[:, None]
    log_ratio = (x.forget_logp.gather(1, idx) - x.forget_ref_logp.gather(1, idx).detach()).squeeze(1)
    return Terms(-(2.0 / cfg.npo_beta) * F.logsigmoid(-cfg.npo_beta * log_ratio).mean(), retain_nll(x))


def random_label(x: ObjectiveInputs, cfg: EditConfig) -> Terms:
    """Cross-entropy toward a random wrong candidate per fact (drawn once under the seed); NLL retain."""
    return Terms(nll(x.forget_logp, x.random_ids), retain_nll(x))


def log_one_minus_p(x: ObjectiveInputs, cfg: EditConfig) -> Terms:
    """−log(1 − p(answer)) (Guo et al.'s unlearning loss; → 0 as p(answer) → 0); NLL retain."""
    logp = x.forget_logp.gather(1, x.answer_ids[:, None]).squeeze(1)
    # log(1 - p) = log(-expm1(log p)); clamp keeps it finite when p rounds to 1
    return Terms(-torch.log(-torch.expm1(logp.clamp(max=-1e-6))).mean(), retain_nll(x))


def causal_teacher(x: ObjectiveInputs, cfg: EditConfig) -> Terms:
    """KL(teacher ‖ student) on the forget prompts (Liu et al. 2024, teacher from replaced subjects); NLL retain."""
    t = x.teacher_probs.detach()
    kl_rows = (t * (torch.log(t.clamp_min(1e-30)) - x.forget_logp)).sum(-1)
    return Terms(kl_rows.mean(), retain_nll(x))


# name -> objective; the same kind of registry as mechedit.localize.METHODS (direct references)
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective.of("edit", edit_objective, ("target", "retain")),
    Objective.of("ga", gradient_ascent),
    Objective.of("gradiff", gradient_difference, ("retain",)),
    Objective.of("ga-kl", gradient_ascent_kl, ("retain", "retain_ref")),
    Objective.of("npo", negative_preference, ("retain", "forget_ref")),
    Objective.of("rlabel", random_label, ("retain", "random")),
    Objective.of("log1-p", log_one_minus_p, ("retain",)),
    Objective.of("causal-teacher", causal_teacher, ("retain", "teacher")),
)}
