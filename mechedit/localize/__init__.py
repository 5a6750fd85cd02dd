"""Localizers: one function per method with a shared signature, all returning a ``Localization``.

Signature: ``fn(model, facts: FactSet, *, seed: int = 0, budget: int | None = None, progress: bool = True,
**options) -> Localization``. ``budget`` (a parameter count, e.g. another Localization's ``n_params``)
cuts ranking-based methods to a matched parameter budget.
"""

from __future__ import annotations

import importlib

from mechedit.facts import FactSet
from mechedit.localize.localization import Localization

# method name -> (module, function); modules are imported on first use so that importing mechedit stays fast
METHODS: dict[str, tuple[str, str]] = {
    "probe": ("mechedit.localize.probe", "localize_probe"),
    "path": ("mechedit.localize.path", "localize_path"),
    "causal-tracing": ("mechedit.localize.baselines", "localize_causal_tracing"),
    "causal-tracing-mlp": ("mechedit.localize.baselines", "localize_causal_tracing_mlp"),
    "attribution": ("mechedit.localize.baselines", "localize_attribution"),
    "random": ("mechedit.localize.baselines", "localize_random"),
    "all-mlps": ("mechedit.localize.baselines", "localize_all_mlps"),
    "nonlocalized": ("mechedit.localize.baselines", "localize_nonlocalized"),
}


def get_localizer(method: str):
    """The localizer function registered for ``method``."""
    if method not in METHODS:
        raise ValueError(f"unknown localization method {method!r}; choose from {', '.join(METHODS)}")
    module, fn = METHODS[method]
    return getattr(importlib.import_module(module), fn)


def localize(model, facts: FactSet, method: str = "probe", **kw) -> Localization:
    """Localize where ``model`` stores ``facts`` with ``method`` (see METHODS)."""
    return get_localizer(method)(model, facts, **kw)
