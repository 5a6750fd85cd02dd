"""The result of localization: which components hold a fact set, with scores, JSON round-trip."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mechedit.components import (
    MLP,
    Component,
    Head,
    component_to_dict,
    n_params,
    parse_component,
)


@dataclass
class Localization:
    """Components chosen by a localizer (``method``), their scores, and method-specific data.

    ``scores`` maps component labels (``"mlp.3"``, ``"head.3.1"``) to the localizer's score, covering
    every component that was ranked (not only the chosen ones). ``extra`` holds curves, chosen ranges and
    the rule's parameters, so a reader can see why these components were chosen.
    """

    method: str
    components: list[Component]
    scores: dict[str, float] = field(default_factory=dict)
    n_params: int = 0
    probe_accuracy: list[float] | None = None
    extra: dict = field(default_factory=dict)

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
        """The loc.json form documented in the README."""
        d = {
            "method": self.method,
            "components": [component_to_dict(c) for c in self.components],
            "scores": self.scores,
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
            scores={k: float(v) for k, v in d.get("scores", {}).items()}, n_params=int(d.get("n_params", 0)),
            probe_accuracy=d.get("probe_accuracy"), extra=d.get("extra", {}),
        )

    def save(self, path: str | Path) -> None:
        """Write loc.json (atomically: a temporary file renamed into place)."""
        from mechedit.validate import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Localization:
        """Read loc.json; a malformed file is a ValueError naming it (and the line, for invalid JSON)."""
        from mechedit.validate import read_json

        d = read_json(path, "localization JSON")
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a localization JSON object, got {type(d).__name__}")
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"{path}: not a valid localization ({exc})") from None


def make_localization(model, method: str, components: Sequence[Component], scores: dict[str, float] | None = None,
                      budget: int | None = None, **kw) -> Localization:
    """Build a Localization, counting the chosen components' parameters on ``model``; with ``budget``, how close
    the count came to it is recorded in ``extra["budget"]``."""
    from mechedit.models import fingerprint

    comps = list(dict.fromkeys(components))
    loc = Localization(method, comps, dict(scores or {}), n_params(model, comps), **kw)
    loc.extra.setdefault("model_fingerprint", fingerprint(model))  # lets a reader refuse it for another model
    if budget is not None:
        loc.extra["budget"] = budget_record(budget, loc.n_params)
    return loc


BUDGET_TOLERANCE = 0.10  # a matched budget is met when the parameter count is within ±10 % of the target


def fit_budget(model, ranked: Sequence[Component], budget: int) -> tuple[list[Component], dict]:
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


def cut_to_budget(model, ranked: Sequence[Component], budget: int) -> list[Component]:
    """Take components in rank order while the union's parameter count stays within ``budget``.

    A component that would overshoot is skipped and smaller later ones may still fit, so the result
    comes as close to the budget from below as the ranking allows.
    """
    chosen: list[Component] = []
    for c in ranked:
        if n_params(model, chosen + [c]) <= budget:
            chosen.append(c)
    return chosen
