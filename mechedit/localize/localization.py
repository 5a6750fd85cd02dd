"""The result of localization: which components hold a fact set, with scores, JSON round-trip."""

from __future__ import annotations

import json
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
        """The loc.json form (GUIDE §3)."""
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
                      **kw) -> Localization:
    """Build a Localization, counting the chosen components' parameters on ``model``."""
    from mechedit.models import fingerprint

    comps = list(dict.fromkeys(components))
    loc = Localization(method, comps, dict(scores or {}), n_params(model, comps), **kw)
    loc.extra.setdefault("model_fingerprint", fingerprint(model))  # lets a reader refuse it for another model
    return loc


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
