"""The result of localization: which components hold a fact set, with scores, JSON round-trip."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from mechedit.components import (
    MLP,
    Component,
    Head,
    component_to_dict,
    n_params,
    parse_component,
)
from mechedit.results import SavedResult
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


def make_localization(model: Model, method: str, components: Sequence[Component],
                      scores: dict[Component, float] | dict[str, float] | None = None, **kw) -> Localization:
    """Build a Localization, counting the chosen components' parameters on ``model`` (score labels are parsed)."""
    comps = list(dict.fromkeys(components))
    scores = {parse_component(k) if isinstance(k, str) else k: float(v) for k, v in (scores or {}).items()}
    return Localization(method, comps, scores, n_params(model, comps), **kw)


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
