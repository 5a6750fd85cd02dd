"""Results on the original model that every edit of one fact set shares, computed once.

``compare`` evaluates several edits (one per method) of the same facts against the same original model: the
original model's features, Fisher diagonal, fluency log-probabilities and latent probes do not depend on the
edit, and neither do the editor's reference hidden states (computed on the unedited weights), so
``edit(..., memo=m)`` and ``evaluate(..., memo=m)`` compute each of them at its first use and reuse it. A key names
everything the result depends on besides the original model, so one memo must only ever see one original model
(the editor's keys also carry the model's fingerprint).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")


class OriginalMemo:
    """Original-model results keyed by what they were computed on (one memo per original model)."""

    def __init__(self) -> None:
        self._store: dict[Hashable, object] = {}
        self.hits = 0

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The result stored under ``key``, computed by ``compute()`` on first use."""
        if key in self._store:
            self.hits += 1
        else:
            self._store[key] = compute()
        return self._store[key]  # type: ignore[return-value]


def remembered(memo: OriginalMemo | None, key: Hashable, compute: Callable[[], T]) -> T:
    """``memo.get(key, compute)``, or ``compute()`` when there is no memo."""
    return compute() if memo is None else memo.get(key, compute)
