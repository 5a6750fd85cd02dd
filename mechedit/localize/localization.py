"""The result of localization: which components hold a fact set, with scores, JSON round-trip."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from mechedit.components import (
    MLP,
    Component,
    Head,
    component_to_dict,
    n_params,
    parse_component,
)
from mechedit.models import fingerprint
from mechedit.results import SavedResult
from mechedit.validate import atomic_write_text, read_json
from patching.model import Model


@dataclass
class Localization(SavedResult):
    """Components chosen by a localizer (``method``), their scores, and method-specific data.

    ``scores`` maps components (``MLP(3)``, ``Head(3, 1)``) to the localizer's score, covering every component
    that was ranked (not only the chosen ones); labels such as ``"mlp.3"`` are only the JSON form. ``extra``
    holds curves, chosen ranges and the rule's parameters, so a reader can see why these components were chosen.
    """

    method: str
    components: list[Component]
    scores: dict[Component, float] = field(default_factory=dict)
    n_params: int = 0
    probe_accuracy: list[float] | None = None
    extra: dict = field(default_factory=dict)

    FILENAME: ClassVar[str] = "loc.json"
    JSON_INDENT: ClassVar[int] = 2

    @property
    def mlps(self) -> list[MLP]:
        return [c for c in self.components if isinstance(c, MLP)]

    @property
    def heads(self) -> list[Head]:
        return [c for c in self.components if isinstance(c, Head)]

    @property
    def layers(self) -> list[int]:
        """Sorted layers of the chosen MLPs."""
        return sorted(c.layer for c in self.mlps)

    def to_dict(self) -> dict:
        """The loc.json form (keys: method, components, scores, n_params, extra[, probe_accuracy])."""
        d = {
            "method": self.method,
            "components": [component_to_dict(c) for c in self.components],
            "scores": {str(c): v for c, v in self.scores.items()},
            "n_params": self.n_params,
            "extra": self.extra,
        }
        if self.probe_accuracy is not None:
            d["probe_accuracy"] = self.probe_accuracy
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Localization:
        """Inverse of ``to_dict``."""
        for key in ("method", "components"):
            if key not in d:
                raise ValueError(f"localization JSON lacks '{key}'")
        return cls(
            method=d["method"], components=[parse_component(c) for c in d["components"]],
            scores={parse_component(k): float(v) for k, v in d.get("scores", {}).items()},
            n_params=int(d.get("n_params", 0)),
            probe_accuracy=d.get("probe_accuracy"), extra=d.get("extra", {}),
        )

    def save(self, path: str | Path) -> Path:
        """Write loc.json into directory ``path`` or to the ``.json`` file ``path`` (atomically); returns the file."""
        return atomic_write_text(self.file_in(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Localization:
        """Read loc.json; a malformed file or another format version is a ValueError naming it."""
        target = cls.file_in(path)
        d = read_json(target, "localization JSON")
        if not isinstance(d, dict):
            raise ValueError(f"{target}: expected a localization JSON object, got {type(d).__name__}")
        cls.check_version(d, target)
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"{target}: not a valid localization ({exc})") from None


def make_localization(model: Model, method: str, components: Sequence[Component],
                      scores: dict[Component, float] | dict[str, float] | None = None, budget: int | None = None,
                      **kw) -> Localization:
    """Build a Localization, counting the chosen components' parameters on ``model`` (score labels are parsed);
    with ``budget``, how close the count came to it is recorded in ``extra["budget"]``."""
    comps = list(dict.fromkeys(components))
    scores = {parse_component(k) if isinstance(k, str) else k: float(v) for k, v in (scores or {}).items()}
    loc = Localization(method, comps, scores, n_params(model, comps), **kw)
    loc.extra.setdefault("model_fingerprint", fingerprint(model))  # lets a reader refuse it for another model
    if budget is not None:
        loc.extra["budget"] = budget_record(budget, loc.n_params)
    return loc


BUDGET_TOLERANCE = 0.10  # a matched budget is met when the parameter count is within ±10 % of the target


def fit_budget(model: Model, ranked: Sequence[Component], budget: int) -> tuple[list[Component], dict]:
    """Components in rank order matched to ``budget`` parameters within ±10 %, and a record of how close it came.

    First the ranking is cut from below (``cut_to_budget``); if that stays under 90 % of the budget, the
    best-ranked remaining component that keeps the total within +10 % is added. The record
    (``target``, ``achieved``, ``ratio``, ``within_tolerance``) goes into the Localization's ``extra["budget"]``;
    a budget the components are too coarse to meet is warned about, never hidden.
    """
    chosen = cut_to_budget(model, ranked, budget)
    if n_params(model, chosen) < (1 - BUDGET_TOLERANCE) * budget:
        for c in ranked:
            if c not in chosen and n_params(model, chosen + [c]) <= (1 + BUDGET_TOLERANCE) * budget:
                chosen.append(c)
                break
    record = budget_record(budget, n_params(model, chosen))
    achieved, ratio = record["achieved"], record["ratio"]
    if chosen and not record["within_tolerance"]:
        warnings.warn(f"matched budget not met: {achieved:,} parameters for a budget of {budget:,} "
                      f"(ratio {ratio:.2f}); the components are too coarse for ±{BUDGET_TOLERANCE:.0%}", stacklevel=2)
    return chosen, record


def budget_record(target: int, achieved: int) -> dict:
    """How close a parameter count came to a budget: target, achieved, ratio and whether it is within ±10 %."""
    ratio = achieved / target if target else float("nan")
    return {"target": int(target), "achieved": int(achieved), "ratio": ratio,
            "within_tolerance": bool(abs(ratio - 1) <= BUDGET_TOLERANCE)}


def budget_rule(order: str, record: dict) -> str:
    """The rule text of a budget-matched choice, e.g. 'ranked by score, matched to a budget of 98,304 parameters
    (achieved 98,304, ratio 1.00)'."""
    return (f"{order}, matched to a budget of {record['target']:,} parameters (achieved {record['achieved']:,}, "
            f"ratio {record['ratio']:.2f})")

def cut_to_budget(model: Model, ranked: Sequence[Component], budget: int) -> list[Component]:
    """Take components in rank order while the union's parameter count stays within ``budget``.

    A component that would overshoot is skipped and smaller later ones may still fit, so the result
    comes as close to the budget from below as the ranking allows.
    """
    chosen: list[Component] = []
    for c in ranked:
        if n_params(model, chosen + [c]) <= budget:
            chosen.append(c)
    return chosen
