"""Relearning attack (Guo et al. 2024; Xu et al. 2025): can a few fine-tuning steps bring a forgotten fact back?

On a deep **copy** of the edited model (the caller's model is never touched) we fine-tune toward the **true**
answers of the first half of the forget facts, mixed with as many maintain facts (true answers), for ``steps``
full-batch AdamW steps (short, as in the paper). ``mode="lora"`` (default, as in Guo et al.) trains a LoRA
adapter (``peft``) on every attention and MLP linear layer; ``mode="full"`` trains every weight. We then read the
true-answer accuracy of the **second** half, which was never trained on, at several steps.

**Prior-only control.** Training toward the trained half's answers also shifts the answer prior (if most
held-out facts share the trained half's common answer, held-out accuracy rises with nothing recovered). The
control runs the identical attack (same steps, lr, data, seed) with the trained half's answers shuffled among
themselves (a derangement where possible): it teaches the same answer distribution but no fact. ``recovery`` is
(attack − control) / (original − control) on the held-out half, with a bootstrap 95 % interval over held-out
facts of attack − control; the uniform-chance version (1/len(candidates) as chance) stays as
``recovery_uniform``. Maintain facts outside the attack's batch are scored at every evaluation step, so an
attack that wrecks the model is visible.
"""

from __future__ import annotations

import copy
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from tqdm.auto import tqdm

from mechedit.evaluate.answers import answer_batch, answer_loss
from mechedit.evaluate.copying import clear_captures, clone_model
from mechedit.facts import FactError, FactSet
from mechedit.models import hf_model_of, model_info
from mechedit.scoring import score_facts
from mechedit.stats import bootstrap_ci, chance_accuracy, normalized
from patching.model import Model

MODES = ("lora", "full")
DEFAULT_LR = {"lora": 3e-3, "full": 1e-3}  # lora: best maintain and recovery of 3e-3, 1e-2, 3e-2 on factworld
MIN_FORGET = 4  # two trained and two held-out facts at least
MAX_MAINTAIN_TRACKED = 64


@dataclass(frozen=True)
class RelearnConfig:
    """Relearning recipe: LoRA adapter (default) or full fine-tune with AdamW, full batch."""

    steps: int = 20
    lr: float | None = None  # None: DEFAULT_LR[mode]
    mode: str = "lora"
    rank: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA alpha (scale alpha / rank)
    targets: str = "all-linear"  # LoRA target modules: every attention and MLP linear layer (not the unembedding)
    weight_decay: float = 0.0
    maintain_ratio: float = 1.0  # maintain facts per trained forget fact in the batch
    eval_every: int = 5  # held-out accuracy is read at step 0, every eval_every steps, and at the end
    grad_clip: float = 1.0
    control: bool = True  # also run the prior-only control (shuffled trained labels)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"--relearn-mode: unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError(f"relearning needs steps >= 1 and eval_every >= 1 (got {self.steps}, {self.eval_every})")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"relearning lr must be positive, got {self.lr}")
        if self.rank < 1 or self.alpha <= 0:
            raise ValueError(f"LoRA needs rank >= 1 and alpha > 0 (got {self.rank}, {self.alpha})")

    @property
    def learning_rate(self) -> float:
        """The lr actually used (the mode's default when ``lr`` is None)."""
        return DEFAULT_LR[self.mode] if self.lr is None else self.lr

    def to_dict(self) -> dict:
        """The recipe as recorded in results (the effective lr; LoRA fields only for LoRA)."""
        d = asdict(self)
        d["lr"] = self.learning_rate
        if self.mode != "lora":
            for k in ("rank", "alpha", "targets"):
                d.pop(k)
        return d


@dataclass
class RelearnResult:
    """Curves of true-answer accuracy during the attack and its prior-only control (index-aligned with ``steps``)."""

    steps: list[int]
    heldout_accuracy: list[float]  # second half of the forget facts: never trained on
    heldout_prob: list[float]
    trained_accuracy: list[float]  # first half: the attack's training facts
    loss: list[float]  # training loss at every step
    relearn_accuracy: float  # held-out accuracy after the last step
    chance: float  # mean 1 / len(candidates) of the held-out facts
    original_heldout_accuracy: float | None  # the unedited model on the held-out half
    recovery: float | None  # (attack - control) / (original - control) on the held-out half
    n_trained: int
    n_heldout: int
    n_maintain: int
    config: dict = field(default_factory=dict)
    recovery_uniform: float | None = None  # (attack - uniform chance) / (original - chance), clipped to [0, 1]
    recovery_ci: dict | None = None  # bootstrap 95 % interval over held-out facts of (attack - control), normalized
    control_accuracy: list[float] | None = None  # held-out accuracy of the prior-only control at each step
    control_relearn_accuracy: float | None = None
    maintain_accuracy: list[float] | None = None  # maintain facts outside the attack's batch, at each step
    control_maintain_accuracy: list[float] | None = None
    n_maintain_tracked: int = 0
    n_trainable: int = 0  # parameters the attack trained
    seconds: dict = field(default_factory=dict)
    note: str | None = None

    def to_dict(self) -> dict:
        """JSON-serializable dict."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}


def relearn_split(facts: FactSet, what: str = "relearning") -> tuple[FactSet, FactSet, FactSet | None]:
    """(trained half, held-out half, maintain pool) — raises FactError when the forget set cannot be split.

    Every attack that must generalize (relearning, soft prompt, in-context) uses this split, so "held out" names
    the same facts in all of them; ``what`` names the attack in the error.
    """
    forget = facts.forget_set() if any(f.changes for f in facts) else []
    if len(forget) < MIN_FORGET:
        raise FactError(f"{what} needs at least {MIN_FORGET} forget facts (half to train on, half to test), "
                        f"'{facts.name}' has {len(forget)}")
    first, second = forget.halves()
    return first, second, facts.maintain_set() if len(forget) < len(facts) else None


def recovery_score(after: float, chance: float, original: float | None) -> float | None:
    """(after − chance) / (original − chance), clipped to [0, 1]; None when the original was not above chance."""
    if original is None or original - chance <= 1e-9:
        return None
    return float(np.clip((after - chance) / (original - chance), 0.0, 1.0))


def shuffled_answers(answers: list[str], seed: int, tries: int = 200) -> list[str]:
    """The answers permuted among themselves, with as few facts keeping their own answer as found in ``tries``."""
    rng = random.Random(seed)
    best, best_fixed = list(answers), len(answers) + 1
    for _ in range(tries):
        perm = list(answers)
        rng.shuffle(perm)
        fixed = sum(a == b for a, b in zip(perm, answers, strict=True))
        if fixed < best_fixed:
            best, best_fixed = perm, fixed
        if fixed == 0:
            break
    return best


def prior_only_answers(answers: list[str], seed: int) -> list[str]:
    """The prior-only control's answers: ``answers`` shuffled among themselves under a seed derived from ``seed``
    (shared by the relearning attack and the input-side attacks, so their controls train on the same answers)."""
    return shuffled_answers(answers, seed + 104729)


def _trainable(model: Model, cfg: RelearnConfig):
    """(parameters to train, peft model or None) on ``model`` (a private copy) for the configured mode."""
    hf = hf_model_of(model)
    if cfg.mode == "full":
        params = list(hf.parameters())
        for p in params:
            p.requires_grad_(True)
        return params, None
    import peft  # imported on use: it loads transformers' PEFT integrations (seconds) that full mode never needs

    lcfg = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=cfg.targets, lora_dropout=0.0,
                           bias="none")
    with warnings.catch_warnings():  # peft reads transformers' deprecated alias; the warning is not the user's
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        pm = peft.get_peft_model(hf, lcfg)  # injects adapters in place: the bridge's forward runs through them
    return [p for p in pm.parameters() if p.requires_grad], pm


class _Copy:
    """The private copy the attack trains: its trainable parameters, and their initial values when several runs
    share it (LoRA trains adapters only, so resetting them restores the very model a fresh copy would give)."""

    def __init__(self, edited: Model, cfg: RelearnConfig, seed: int, shared: bool):
        self.model = clone_model(edited)
        torch.manual_seed(seed)
        self.params, self.pm = _trainable(self.model, cfg)
        self.init = [p.detach().clone() for p in self.params] if shared else None

    @torch.no_grad()
    def reset(self) -> None:
        """Put the trainable parameters back to their initial values (a shared copy, between runs)."""
        for p, v in zip(self.params, self.init, strict=True):
            p.copy_(v)


def _run(copy_: _Copy, edited, prompts, answers, heldout, trained, tracked, cfg, progress, desc, keep_model=False,
         start=None):
    """One attack on ``copy_`` (of ``edited``): curves (and the trained model when ``keep_model``). ``start``: the
    step-0 read of an earlier run on the same model (before any step every run reads the same numbers)."""
    ids, mask, labels = answer_batch(edited.tokenizer, prompts, answers, model_info(edited).prepend_bos)
    model, params, pm = copy_.model, copy_.params, copy_.pm
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    eval_at = sorted({0, cfg.steps, *range(cfg.eval_every, cfg.steps, cfg.eval_every)})
    out = {"steps": [], "h_acc": [], "h_prob": [], "t_acc": [], "m_acc": [], "loss": [], "h_last": None}

    groups = [list(heldout), list(trained), [] if tracked is None else list(tracked)]
    ends = np.cumsum([len(g) for g in groups])

    def read(step: int) -> None:
        s = score_facts(model, [f for g in groups for f in g])  # one scoring pass for the three groups
        h_correct, t_correct, m_correct = np.split(s.answer_correct, ends[:-1])
        out["steps"].append(step)
        out["h_acc"].append(float(h_correct.mean()))
        out["h_prob"].append(float(s.answer_prob[:ends[0]].mean()))
        out["t_acc"].append(float(t_correct.mean()))
        out["m_acc"].append(None if tracked is None else float(m_correct.mean()))
        out["h_last"] = np.asarray(h_correct, dtype=float)

    if start is None:
        read(0)
        out["h_first"] = out["h_last"]
    else:
        for key in ("steps", "h_acc", "h_prob", "t_acc", "m_acc"):
            out[key].append(start[key][0])
        out["h_last"] = start["h_first"]
    for step in tqdm(range(1, cfg.steps + 1), desc=desc, disable=not progress, leave=False):
        with torch.enable_grad():
            loss = answer_loss(model, ids, mask, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        out["loss"].append(float(loss.detach()))
        if step in eval_at:
            read(step)
    opt.zero_grad(set_to_none=True)
    out["n_trainable"] = int(sum(p.numel() for p in params))
    clear_captures(edited)  # the copy's forward passes left TransformerLens captures (with graphs) on the source
    if keep_model:
        if pm is not None:
            pm.merge_and_unload()  # plain weights again, adapters folded in
            model.requires_grad_(False)
        out["model"] = model
    return out


def relearn_attack(
    edited: Model, facts: FactSet, config: RelearnConfig | None = None, *, original: Model | None = None,
    seed: int = 0, keep_model: bool = False, progress: bool = True,
) -> RelearnResult | tuple[RelearnResult, Model]:
    """Run the attack and its prior-only control on copies of ``edited`` (module docstring); ``edited`` is untouched.

    Returns a RelearnResult, or ``(RelearnResult, relearned model)`` when ``keep_model``.
    """
    cfg = config or RelearnConfig()
    trained, heldout, maintain_pool = relearn_split(facts)
    n_maint, tracked = 0, None
    train_facts = list(trained)
    if maintain_pool is not None:
        if cfg.maintain_ratio > 0:
            n_maint = min(len(maintain_pool), max(1, round(cfg.maintain_ratio * len(trained))))
            batch_maint = list(maintain_pool.sample(n_maint, seed=seed + 7919))
            train_facts += batch_maint
            used = {id(f) for f in batch_maint}
            rest = [f for f in maintain_pool if id(f) not in used]
        else:
            rest = list(maintain_pool)
        if rest:
            tracked = FactSet(rest[:MAX_MAINTAIN_TRACKED], name=f"{facts.name}-maintain-tracked")
    random.Random(seed).shuffle(train_facts)
    prompts = [f.render() for f in train_facts]
    answers = [f.answer for f in train_facts]
    # LoRA: both runs share one copy (the control first, adapters reset, then the attack, which keep_model
    # returns); full fine-tuning changes every weight, so each run gets its own copy
    shared = cfg.mode == "lora" and cfg.control
    t0 = time.perf_counter()
    copy_ = _Copy(edited, cfg, seed, shared)
    ctl, seconds = None, {}
    if cfg.control:
        forget_idx = [i for i, f in enumerate(train_facts) if f.changes]
        shuffled = prior_only_answers([answers[i] for i in forget_idx], seed)
        ctl_answers = list(answers)
        for i, a in zip(forget_idx, shuffled, strict=True):
            ctl_answers[i] = a
        ctl = _run(copy_, edited, prompts, ctl_answers, heldout, trained, tracked, cfg, progress, "relearn control")
        seconds["control"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if shared:
            copy_.reset()
        else:
            copy_ = _Copy(edited, cfg, seed, False)
    att = _run(copy_, edited, prompts, answers, heldout, trained, tracked, cfg, progress, "relearning", keep_model,
               start=ctl)
    seconds["attack"] = time.perf_counter() - t0
    chance = chance_accuracy([len(f.candidates) for f in heldout])
    orig, orig_per = None, None
    if original is not None:
        orig_per = np.asarray(score_facts(original, heldout).answer_correct, dtype=float)
        orig = float(orig_per.mean())
    after = att["h_acc"][-1]
    recovery = recovery_ci = None
    note = None
    if ctl is not None:
        ctrl_after = ctl["h_acc"][-1]
        recovery = normalized(after, ctrl_after, orig)
        if recovery is None:
            note = ("control-based recovery undefined: the unedited model is not above the control on the "
                    "held-out half" if orig is not None else "control-based recovery needs the original model")
        else:
            scale = orig - ctrl_after
            iv = bootstrap_ci(list((att["h_last"] - ctl["h_last"]) / scale), seed=seed)
            recovery_ci = {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n, "note": iv.note}
    res = RelearnResult(
        steps=att["steps"], heldout_accuracy=att["h_acc"], heldout_prob=att["h_prob"], trained_accuracy=att["t_acc"],
        loss=att["loss"], relearn_accuracy=after, chance=chance, original_heldout_accuracy=orig,
        recovery=recovery, n_trained=len(trained), n_heldout=len(heldout), n_maintain=n_maint,
        config=cfg.to_dict(), recovery_uniform=recovery_score(after, chance, orig), recovery_ci=recovery_ci,
        control_accuracy=None if ctl is None else ctl["h_acc"],
        control_relearn_accuracy=None if ctl is None else ctl["h_acc"][-1],
        maintain_accuracy=None if tracked is None else att["m_acc"],
        control_maintain_accuracy=None if ctl is None or tracked is None else ctl["m_acc"],
        n_maintain_tracked=0 if tracked is None else len(tracked), n_trainable=att["n_trainable"],
        seconds=seconds, note=note,
    )
    return (res, att["model"]) if keep_model else res
