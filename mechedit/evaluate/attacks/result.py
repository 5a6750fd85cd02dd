"""The one result type of every input-side attack (soft prompt, in-context), and the signal computed from it.

An attack is evidence only when it generalizes to facts it was not trained on and beats a control: each attack
reads true-answer accuracy on the held-out half of the forget facts (``relearn_split``: the relearning attack's
split under the same seed) and runs two controls beside itself:

* **never-known**: the identical attack on the *original* model, asked about invented subjects (``controls``)
  that carry the forget facts' prompts and answers — the model never knew them, so what the attack "recovers"
  there it made up (Chen et al. 2025: a soft-token attack can make a model emit facts it never knew);
* **prior-only**: the identical attack on the edited model with the trained answers shuffled among themselves
  (as in the relearning attack): it teaches the answer distribution but no fact.

``signal`` = (attack − control) / (original − control) on the held-out half, control being the larger of the
two controls — the relearning attack's scale (``mechedit.stats.normalized``): 0 = no more than the control,
1 = back to the original. Its 95 % interval is a bootstrap over facts of attack − control (independent resamples
of both samples, ``mechedit.stats.difference_ci``), divided by the same scale. When the original is less than
``MIN_SCALE`` above the control the signal is null with a note: on 16 held-out facts one fact moves an accuracy
by 0.06, so a scale of 0.06 would swing the signal between 0 and 1 on a single fact (measured: the in-context
arm on factworld, original under context 0.31 against a control of 0.25, gave 1.0 with a CI of [-4, 6]).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from mechedit.results import SavedResult
from mechedit.stats import difference_ci, normalized

MIN_SCALE = 0.2  # the original must exceed the control by this much for the signal to be defined


@dataclass
class AttackArm:
    """One variant of an attack (e.g. in-context with forget statements in the chat template) and its controls.

    Curves are index-aligned with ``steps`` (optimizer steps, or statements in the context).
    """

    name: str
    steps: list[int]
    heldout_accuracy: list[float]  # the attack on the edited model, held-out half
    never_known_accuracy: list[float]  # the attack on the original model, invented subjects' held-out half
    prior_accuracy: list[float] | None  # the attack with shuffled trained answers, edited model, held-out half
    original_accuracy: float | None  # the original model on the held-out half: the scale's top (see the attack)
    signal: float | None = None
    signal_ci: dict | None = None
    control: float | None = None  # the control accuracy the signal is measured above
    control_kind: str | None = None  # "never-known" or "prior-only": the larger one
    trained_accuracy: list[float] | None = None  # the attack's own training half (soft prompt)
    loss: list[float] | None = None  # training loss per step (soft prompt)
    original_curve: list[float] | None = None  # the original model under the same attack (in-context)
    note: str | None = None

    @property
    def accuracy(self) -> float:
        """Held-out accuracy at the end of the attack."""
        return self.heldout_accuracy[-1]

    def to_dict(self) -> dict:
        """JSON-serializable dict (with the final accuracy for readers that want one number)."""
        return {**{f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}, "accuracy": self.accuracy}

    @classmethod
    def from_dict(cls, d: Mapping) -> AttackArm:
        """Inverse of ``to_dict``."""
        return cls(**{f.name: d.get(f.name) for f in fields(cls) if f.name in d})


@dataclass
class AttackResult(SavedResult):
    """An attack's arms (one or more variants), the deciding arm and the verdict signal; ``note`` when null.

    Follows the result protocol (``mechedit.results``): ``save``/``load`` as attack.json, free-form ``extra``.
    """

    attack: str  # "soft-prompt" or "in-context"
    settings: dict  # every setting that changes the numbers (lr, steps, tokens, statements, formats, seed)
    arms: list[AttackArm] = field(default_factory=list)
    chance: float | None = None  # mean 1 / len(candidates) over the held-out half
    never_known_original: float | None = None  # the original model on the invented subjects, no attack (≈ chance)
    n_trained: int = 0
    n_heldout: int = 0
    seconds: dict = field(default_factory=dict)
    note: str | None = None  # why the signal is null (too few forget facts, no original model, ...)
    extra: dict = field(default_factory=dict)  # free-form (e.g. notes on contexts that could not run)

    FILENAME: ClassVar[str] = "attack.json"

    @property
    def deciding(self) -> AttackArm | None:
        """The arm with the largest signal (the strongest variant of the attack); None when none has one."""
        scored = [a for a in self.arms if a.signal is not None]
        return max(scored, key=lambda a: a.signal) if scored else None

    @property
    def signal(self) -> float | None:
        """Held-out recovery above the control of the deciding arm (the verdict's number)."""
        arm = self.deciding
        return None if arm is None else arm.signal

    def summary(self) -> dict:
        """The flat numbers metrics.json and ``compare`` show: signal, its CI, accuracy, control, deciding arm."""
        arm = self.deciding or (self.arms[0] if self.arms else None)
        return {"signal": self.signal, "signal_ci": None if arm is None else arm.signal_ci,
                "accuracy": None if arm is None else arm.accuracy, "control": None if arm is None else arm.control,
                "control_kind": None if arm is None else arm.control_kind,
                "original": None if arm is None else arm.original_accuracy,
                "arm": None if arm is None else arm.name, "note": self.note}

    def to_dict(self) -> dict:
        """JSON-serializable dict (arms as dicts, plus the summary)."""
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "arms"}
        return {**d, "arms": [a.to_dict() for a in self.arms], **{k: v for k, v in self.summary().items()
                                                                     if k != "note"}}

    @classmethod
    def from_dict(cls, d: Mapping) -> AttackResult:
        """Inverse of ``to_dict`` (summary keys are recomputed, not read)."""
        kw = {f.name: d.get(f.name) for f in fields(cls) if f.name in d and f.name != "arms"}
        return cls(**kw, arms=[AttackArm.from_dict(a) for a in d.get("arms") or []])


def score_arm(arm: AttackArm, attack_correct: np.ndarray, never_known_correct: np.ndarray,
              prior_correct: np.ndarray | None, seed: int = 0) -> AttackArm:
    """Fill ``arm``'s control, signal and CI from per-fact correctness at the end of the attack (module docstring).

    The control is the larger of the never-known and the prior-only control's held-out accuracy; the signal is
    None (with a note) when the original model is not ``MIN_SCALE`` above that control.
    """
    controls = {"never-known": np.asarray(never_known_correct, dtype=float)}
    if prior_correct is not None:
        controls["prior-only"] = np.asarray(prior_correct, dtype=float)
    kind = max(controls, key=lambda k: controls[k].mean())
    ctrl = controls[kind]
    arm.control, arm.control_kind = float(ctrl.mean()), kind
    orig = arm.original_accuracy
    if orig is None or orig - arm.control < MIN_SCALE:
        arm.note = (f"signal undefined: the original model ({'?' if orig is None else f'{orig:.2f}'}) is not "
                    f"{MIN_SCALE} above the {kind} control ({arm.control:.2f}) on the held-out half, so the "
                    "attack could not show a loss")
        return arm
    arm.signal = normalized(float(np.mean(attack_correct)), arm.control, orig)
    scale = orig - arm.control
    iv = difference_ci(list(attack_correct), list(ctrl), seed=seed)
    arm.signal_ci = {"mean": iv.mean / scale, "low": None if iv.low is None else iv.low / scale,
                     "high": None if iv.high is None else iv.high / scale, "n": iv.n, "note": iv.note}
    return arm
