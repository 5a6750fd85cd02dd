"""Relearning attack (Guo et al. 2024; Xu et al. 2025): can a few fine-tuning steps bring a forgotten fact back?

On a deep **copy** of the edited model (the caller's model is never touched) we fine-tune **all weights** (full
fine-tune, AdamW) toward the **true** answers of the first half of the forget facts, mixed with as many maintain
facts (true answers), for ``steps`` full-batch steps (default 20, short as in the paper). We then read the
true-answer accuracy of the **second** half, which was never trained on, at several steps. If the fact was only
suppressed, training on other forgotten facts undoes the suppression and the held-out half comes back; if it was
removed, the held-out half stays near chance.

``recovery`` puts the held-out accuracy on a 0..1 scale: (after − chance) / (original − chance), clipped, where
chance is the mean 1/len(candidates) and original is the unedited model's accuracy on the same facts. Caveat:
when all forget facts share one answer (e.g. "forget every golf player"), part of a recovery can be a shift of
the answer's prior rather than recovered knowledge; the maintain facts in the batch (other answers) limit this.
"""

from __future__ import annotations

import copy
import random
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from tqdm.auto import tqdm

from mechedit.evaluate.answers import answer_batch, answer_loss
from mechedit.evaluate.copying import clear_captures, clone_model
from mechedit.facts import FactError, FactSet
from mechedit.models import hf_model_of, model_info
from mechedit.scoring import score_facts
from mechedit.stats import chance_accuracy
from patching.model import Model


@dataclass(frozen=True)
class RelearnConfig:
    """Relearning recipe: full fine-tune of every weight with AdamW, full batch."""

    steps: int = 20
    lr: float = 1e-3
    weight_decay: float = 0.0
    maintain_ratio: float = 1.0  # maintain facts per trained forget fact in the batch
    eval_every: int = 5  # held-out accuracy is read at step 0, every eval_every steps, and at the end
    grad_clip: float = 1.0

    def __post_init__(self):
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError(f"relearning needs steps >= 1 and eval_every >= 1 (got {self.steps}, {self.eval_every})")
        if self.lr <= 0:
            raise ValueError(f"relearning lr must be positive, got {self.lr}")


@dataclass
class RelearnResult:
    """Curves of true-answer accuracy during the attack (index-aligned with ``steps``)."""

    steps: list[int]
    heldout_accuracy: list[float]  # second half of the forget facts: never trained on
    heldout_prob: list[float]
    trained_accuracy: list[float]  # first half: the attack's training facts
    loss: list[float]  # training loss at every step
    relearn_accuracy: float  # held-out accuracy after the last step
    chance: float  # mean 1 / len(candidates) of the held-out facts
    original_heldout_accuracy: float | None  # the unedited model on the held-out half
    recovery: float | None  # (relearn_accuracy - chance) / (original - chance), clipped to [0, 1]
    n_trained: int
    n_heldout: int
    n_maintain: int
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serializable dict."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}


def relearn_split(facts: FactSet) -> tuple[FactSet, FactSet, FactSet | None]:
    """(trained half, held-out half, maintain pool) — raises FactError when the forget set cannot be split."""
    forget = facts.forget_set() if any(f.changes for f in facts) else []
    if len(forget) < 2:
        raise FactError(f"relearning needs at least 2 forget facts (half to train on, half to test), "
                        f"'{facts.name}' has {len(forget)}")
    first, second = forget.halves()
    return first, second, facts.maintain_set() if len(forget) < len(facts) else None


def recovery_score(after: float, chance: float, original: float | None) -> float | None:
    """(after − chance) / (original − chance), clipped to [0, 1]; None when the original was not above chance."""
    if original is None or original - chance <= 1e-9:
        return None
    return float(np.clip((after - chance) / (original - chance), 0.0, 1.0))


def relearn_attack(
    edited: Model, facts: FactSet, config: RelearnConfig | None = None, *, original: Model | None = None, seed: int = 0,
    keep_model: bool = False, progress: bool = True,
) -> RelearnResult | tuple[RelearnResult, Model]:
    """Run the relearning attack on a copy of ``edited`` (see the module docstring); ``edited`` is not modified.

    ``keep_model=True`` returns ``(result, relearned copy)``: results never hold live models."""
    cfg = config or RelearnConfig()
    trained, heldout, maintain_pool = relearn_split(facts)
    n_maint = 0
    train_facts = list(trained)
    if maintain_pool is not None and cfg.maintain_ratio > 0:
        n_maint = min(len(maintain_pool), max(1, round(cfg.maintain_ratio * len(trained))))
        train_facts += list(maintain_pool.sample(n_maint, seed=seed + 7919))
    random.Random(seed).shuffle(train_facts)
    ids, mask, labels = answer_batch(edited.tokenizer, [f.render() for f in train_facts],
                                     [f.answer for f in train_facts], model_info(edited).prepend_bos)
    model = clone_model(edited)
    params = list(hf_model_of(model).parameters())
    for p in params:
        p.requires_grad_(True)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    eval_at = sorted({0, cfg.steps, *range(cfg.eval_every, cfg.steps, cfg.eval_every)})
    steps, h_acc, h_prob, t_acc, losses = [], [], [], [], []

    def read(step: int) -> None:
        h = score_facts(model, heldout)
        t = score_facts(model, trained)
        steps.append(step)
        h_acc.append(float(h.answer_correct.mean()))
        h_prob.append(float(h.answer_prob.mean()))
        t_acc.append(float(t.answer_correct.mean()))

    read(0)
    for step in tqdm(range(1, cfg.steps + 1), desc="relearning", disable=not progress, leave=False):
        with torch.enable_grad():
            loss = answer_loss(model, ids, mask, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if step in eval_at:
            read(step)
    opt.zero_grad(set_to_none=True)
    clear_captures(edited)  # the copy's forward passes left TransformerLens captures (with graphs) on the source
    chance = chance_accuracy([len(f.candidates) for f in heldout])
    orig = float(score_facts(original, heldout).answer_correct.mean()) if original is not None else None
    result = RelearnResult(
        steps=steps, heldout_accuracy=h_acc, heldout_prob=h_prob, trained_accuracy=t_acc, loss=losses,
        relearn_accuracy=h_acc[-1], chance=chance, original_heldout_accuracy=orig,
        recovery=recovery_score(h_acc[-1], chance, orig), n_trained=len(trained), n_heldout=len(heldout),
        n_maintain=n_maint, config=asdict(cfg),
    )
    return (result, model) if keep_model else result
