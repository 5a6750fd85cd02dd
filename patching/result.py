"""The result type every patching function returns: raw metric values per patch, plus the two baselines."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Literal

Direction = Literal["denoising", "noising"]
DIRECTIONS = ("denoising", "noising")


class UnchangedMetricWarning(UserWarning):
    """The corruption leaves the metric (almost) unchanged, so normalized effects are undefined."""


def check_direction(direction: str) -> None:
    """Raise ValueError for anything but 'denoising' or 'noising'."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'denoising' or 'noising', got {direction!r}")


@dataclass
class PatchResult:
    """Metric values with each component patched, and the unpatched clean and corrupt values.

    ``direction="denoising"``: the run is on the corrupted input and each component gets its clean value;
    ``"noising"``: the run is on the clean input and each component gets its corrupted value.
    ``effects`` normalizes both to "the fraction of the clean-vs-corrupt gap this component carries":
    1 means the patch alone moves the metric all the way (restores it, or destroys it), 0 means no effect.
    """

    method: str
    labels: list[str]
    values: list[float]
    clean: float
    corrupt: float
    direction: str = "denoising"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.labels) != len(self.values):
            raise ValueError(f"{len(self.labels)} labels but {len(self.values)} values")

    @property
    def gap(self) -> float:
        """clean − corrupt metric (the denominator of ``effects``)."""
        return self.clean - self.corrupt

    @property
    def effects(self) -> list[float]:
        """Direction-aware normalized effects, one per label (see class docstring).

        When the corruption leaves the metric unchanged (|gap| < 1e-6 · max(1, |clean|)) a
        ``UnchangedMetricWarning`` is issued and the effects are the raw differences (denominator 1).
        """
        gap = self.gap
        if abs(gap) < 1e-6 * max(1.0, abs(self.clean)) or not math.isfinite(gap):
            warnings.warn(
                f"{self.method}: the corruption leaves the metric unchanged (clean {self.clean:.6g}, corrupt "
                f"{self.corrupt:.6g}); effects are unnormalized differences", UnchangedMetricWarning, stacklevel=2,
            )
            gap = 1.0
        if self.direction == "noising":
            return [(self.clean - v) / gap for v in self.values]
        return [(v - self.corrupt) / gap for v in self.values]

    def scores(self) -> dict[str, float]:
        """``{label: effect}``."""
        return dict(zip(self.labels, self.effects, strict=True))

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` labels with the largest effect, best first."""
        return sorted(self.scores().items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self) -> dict:
        """A JSON-serializable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PatchResult:
        """Inverse of ``to_dict``."""
        return cls(**d)
