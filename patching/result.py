"""The result type every patching function returns, and the save/load protocol every result type shares.

``SavedResult`` is the one result protocol of the project (mechedit's result types use it too; it lives here
because ``patching`` never imports ``mechedit``): ``to_dict``/``from_dict``, ``save(path) -> Path``,
``load(path)``, a ``format_version`` written on save and checked on load, and one free-form field, ``extra``.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

Direction = Literal["denoising", "noising"]
DIRECTIONS = ("denoising", "noising")


class UnchangedMetricWarning(UserWarning):
    """The corruption leaves the metric (almost) unchanged, so normalized effects are undefined."""


def check_direction(direction: str) -> None:
    """Raise ValueError for anything but 'denoising' or 'noising'."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'denoising' or 'noising', got {direction!r}")


def json_default(o):
    """JSON fallback for arrays and tensors (``tolist``) and NumPy scalars (``item``)."""
    for name in ("tolist", "item"):
        if hasattr(o, name):
            return getattr(o, name)()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


R = TypeVar("R", bound="SavedResult")


class FormatError(ValueError):
    """A saved result has a format version this code does not read."""


class SavedResult:
    """Mixin: JSON save/load with a checked format version. Subclasses define ``to_dict``/``from_dict``,
    ``FILENAME`` (the file written inside a directory) and ``FORMAT_VERSION`` (bump when the layout changes)."""

    FILENAME: ClassVar[str]
    FORMAT_VERSION: ClassVar[int] = 1
    JSON_INDENT: ClassVar[int] = 1
    extra: dict[str, Any]  # free-form details (curves, settings, timings) under the same name in every result

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[R], d: dict) -> R:
        raise NotImplementedError

    @classmethod
    def file_in(cls, path: str | Path) -> Path:
        """``path`` itself when it names a ``.json`` file, else ``path / FILENAME`` (a directory)."""
        path = Path(path)
        return path if path.suffix == ".json" else path / cls.FILENAME

    def to_json(self) -> str:
        """The saved file's text: ``format_version`` first, then ``to_dict``."""
        d = {"format_version": self.FORMAT_VERSION, **self.to_dict()}
        return json.dumps(d, indent=self.JSON_INDENT, default=json_default)

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON into directory ``path`` (as ``FILENAME``) or to the ``.json`` file ``path``."""
        target = self.file_in(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.to_json())
        return target

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """Read a result written by ``save`` (a directory or the ``.json`` file); refuse another format version."""
        target = cls.file_in(path)
        d = json.loads(target.read_text())
        cls.check_version(d, target)
        return cls.from_dict(d)

    @classmethod
    def check_version(cls, d: dict, source: str | Path) -> None:
        """Raise FormatError unless ``d`` has this class's format version (files without one predate it: v1)."""
        version = d.get("format_version", 1)
        if version != cls.FORMAT_VERSION:
            raise FormatError(f"{source}: {cls.__name__} format version {version!r}, this mechedit reads "
                              f"version {cls.FORMAT_VERSION}")


@dataclass
class PatchResult(SavedResult):
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

    FILENAME: ClassVar[str] = "patch.json"

    def to_dict(self) -> dict:
        """A JSON-serializable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PatchResult:
        """Inverse of ``to_dict`` (a ``format_version`` key is ignored)."""
        return cls(**{k: v for k, v in d.items() if k != "format_version"})
