"""Localizers: one function per method with a shared signature, all returning a ``Localization``.

Signature: ``fn(model, facts: FactSet, *, seed: int = 0, budget: int | None = None, progress: bool = True,
**options) -> Localization``. ``budget`` (a parameter count, e.g. another Localization's ``n_params``)
cuts ranking-based methods to a matched parameter budget.
"""

from __future__ import annotations

from collections.abc import Callable

from mechedit.facts import FactSet
from mechedit.localize.baselines import (
    localize_all_mlps,
    localize_attribution,
    localize_causal_tracing,
    localize_causal_tracing_mlp,
    localize_nonlocalized,
    localize_random,
)
from mechedit.localize.localization import Localization
from mechedit.localize.path import localize_path
from mechedit.localize.probe import localize_probe
from patching.model import Model

Localizer = Callable[..., Localization]

# method name -> localizer; the same kind of registry as mechedit.edit.OBJECTIVES (direct references)
METHODS: dict[str, Localizer] = {
    "probe": localize_probe,
    "path": localize_path,
    "causal-tracing": localize_causal_tracing,
    "causal-tracing-mlp": localize_causal_tracing_mlp,
    "attribution": localize_attribution,
    "random": localize_random,
    "all-mlps": localize_all_mlps,
    "nonlocalized": localize_nonlocalized,
}


def get_localizer(method: str) -> Localizer:
    """The localizer function registered for ``method``."""
    if method not in METHODS:
        raise ValueError(f"unknown localization method {method!r}; choose from {', '.join(METHODS)}")
    return METHODS[method]


def localize(model: Model, facts: FactSet, method: str = "probe", **kw) -> Localization:
    """Localize where ``model`` stores ``facts`` with ``method`` (see METHODS)."""
    return get_localizer(method)(model, facts, **kw)
