"""Statistics every decision in mechedit shares: bootstrap intervals over facts (and seeds), paired differences.

One implementation, so that an interval in the verdict, in ``compare`` and in the report means the same thing:
a percentile bootstrap 95 % interval that resamples *clusters* (seeds) and the facts inside them, the usual
two-stage bootstrap for repeated measurements. With one cluster it is the plain bootstrap over facts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap interval, the number of values behind it and the sample SD across clusters."""

    mean: float | None
    low: float | None
    high: float | None
    n: int  # values (facts x clusters) behind the mean
    n_clusters: int
    sd: float | None = None  # sample SD (ddof=1) of the cluster means; None with fewer than 2 clusters
    note: str | None = None  # why an interval could not be computed

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Interval:
        """Inverse of ``to_dict``."""
        return cls(**dict(d))

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval (False when there is none)."""
        return self.low is not None and self.high is not None and self.low <= value <= self.high

    def fmt(self, digits: int = 2) -> str:
        """'0.42 [0.31, 0.55]' (or the mean alone, or 'null')."""
        if self.mean is None:
            return "null"
        if self.low is None or self.high is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _clean(clusters: Sequence[Sequence[float | None]]) -> list[np.ndarray]:
    out = []
    for c in clusters:
        a = np.asarray([v for v in c if v is not None], dtype=float)
        a = a[np.isfinite(a)]
        if a.size:
            out.append(a)
    return out


def bootstrap_ci(
    clusters: Sequence[Sequence[float | None]] | Sequence[float | None],
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
    min_values: int = 2,
) -> Interval:
    """Mean and percentile bootstrap interval of per-fact values, resampling clusters (seeds) then facts within each.

    ``clusters`` is a list of per-seed lists of per-fact values, or one flat list (one cluster). ``None`` and
    non-finite values are ignored. Fewer than ``min_values`` values: the interval is None with a note.
    """
    if len(clusters) and not isinstance(clusters[0], (list, tuple, np.ndarray)):
        clusters = [clusters]  # one flat list of values
    cs = _clean(clusters)  # type: ignore[arg-type]
    n = int(sum(c.size for c in cs))
    if n == 0:
        return Interval(None, None, None, 0, 0, note="no values")
    means = np.array([c.mean() for c in cs])
    mean = float(np.concatenate(cs).mean()) if len(cs) == 1 else float(means.mean())
    sd = float(means.std(ddof=1)) if len(cs) >= 2 else None
    if n < min_values:
        return Interval(mean, None, None, n, len(cs), sd, note=f"only {n} value(s): no interval")
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(0, len(cs), len(cs)) if len(cs) > 1 else np.zeros(1, dtype=int)
        boots[b] = np.mean([cs[i][rng.integers(0, cs[i].size, cs[i].size)].mean() for i in picked])
    alpha = (1 - level) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return Interval(mean, float(low), float(high), n, len(cs), sd)


def paired_difference(
    a: Mapping[tuple, float], b: Mapping[tuple, float], *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
) -> Interval:
    """Bootstrap interval of ``a - b`` over the keys both share, keys being ``(seed, fact_id)`` pairs.

    Pairing on the same seed and fact removes the between-fact and between-seed variance both methods share;
    keys present in only one of ``a``/``b`` are ignored (and counted in the note).
    """
    shared = sorted(set(a) & set(b), key=repr)
    dropped = len(set(a) ^ set(b))
    by_cluster: dict = {}
    for k in shared:
        va, vb = a[k], b[k]
        if va is None or vb is None or not (np.isfinite(va) and np.isfinite(vb)):
            continue
        by_cluster.setdefault(k[0], []).append(float(va) - float(vb))
    iv = bootstrap_ci(list(by_cluster.values()), n_boot=n_boot, level=level, seed=seed)
    if dropped:
        note = f"{dropped} unpaired value(s) left out"
        iv = Interval(iv.mean, iv.low, iv.high, iv.n, iv.n_clusters, iv.sd, note if iv.note is None else
                      f"{iv.note}; {note}")
    return iv


def chance_accuracy(n_candidates: Sequence[int]) -> float:
    """Expected accuracy of a uniform guess among each fact's candidates, averaged over facts."""
    if not len(n_candidates):
        raise ValueError("chance accuracy of no facts")
    return float(np.mean([1.0 / n for n in n_candidates]))


def majority_chance(labels: Sequence) -> float:
    """Accuracy of always answering the most frequent label (the floor a categorical probe must beat)."""
    if not len(labels):
        raise ValueError("majority chance of no labels")
    _, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    return float(counts.max() / counts.sum())


def normalized(acc: float | None, chance: float | None, reference: float | None) -> float | None:
    """(acc - chance) / (reference - chance): 0 at chance, 1 at the reference; None when undefined."""
    if acc is None or chance is None or reference is None or reference - chance <= 1e-9:
        return None
    return float((acc - chance) / (reference - chance))
