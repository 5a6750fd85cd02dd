"""Baseline localizers: causal tracing (ROME's and a whole-MLP variant), attribution, random, all MLPs, none.

Ranking-based ones (``causal-tracing``, ``causal-tracing-mlp``, ``attribution``, ``random``) are matched to
``budget`` (a parameter count, e.g. the probe or path localizer's ``n_params``) within ±10 % with
``mechedit.localize.localization.fit_budget`` when one is given, and record how close they came in
``extra["budget"]``; without a budget the scoring ones keep components scoring at least ``fraction`` × the best
score. Inputs (facts, corruption, metric) are those of ``mechedit.localize.patch_setup``.

- ``causal-tracing`` (ROME, Meng et al. 2022, ``calculate_hidden_flow`` with ``kind="mlp"``): Gaussian noise
  (std 3 × std of the subject tokens' embeddings) on the subject tokens; for each layer L the clean MLP outputs
  of a window of layers around L (ROME's ``L - w//2 .. L + ceil(w/2) - 1``; w = 10, at most a third of the
  depth) are restored at the last subject token; score = indirect effect on the true answer's probability
  normalized by the clean-vs-corrupt gap, averaged over ``n_samples`` (10, as ROME) independent noise draws.
- ``causal-tracing-mlp``: each MLP (and head with ``include_heads``) restored alone, at every column or at the
  last subject token; coarser and cheaper.
- ``attribution``: attribution patching (gradient × activation difference, noising: gradient at the clean
  run) of every MLP (and head) on the logit-difference metric under subject swapping; score = estimated
  normalized effect.
- ``random``: a seeded random order of the MLPs (and heads with ``include_heads``) matched to ``budget``;
  without a budget, ``n`` MLPs (default a quarter of the layers, at least one).
- ``all-mlps``: every MLP (``budget`` is ignored and recorded in ``extra``).
- ``nonlocalized``: every MLP and every whole attention layer — all weights except the embeddings,
  unembedding and norms (``budget`` ignored).
"""

from __future__ import annotations

import random
from typing import Literal

import torch

from mechedit.components import MLP, Attn, all_components
from mechedit.facts import FactSet
from mechedit.localize.localization import Localization, budget_rule, fit_budget, make_localization
from mechedit.localize.patch_setup import CorruptionKind, patch_setup, pick
from patching.attribution import attribution_patch
from patching.model import Model, arch
from patching.tracing import causal_trace, rome_trace

CAUSAL_TRACING_SAMPLES = 10  # noise draws; ROME uses 10 (see README for the stability measurement)


def default_window(n_layers: int) -> int:
    """ROME's window of 10 layers, at most a third of the depth: on a 4-layer model 10 would restore every
    MLP for every layer and all layers would tie."""
    return min(10, max(1, n_layers // 3))


def _kinds(include_heads: bool) -> str:
    return "all" if include_heads else "mlps"


def localize_causal_tracing(
    model: Model, facts: FactSet, *, seed: int = 0, budget: int | None = None, progress: bool = True,
    max_facts: int | None = 64, n_samples: int = CAUSAL_TRACING_SAMPLES, window: int | None = None,
    fraction: float = 0.5,
) -> Localization:
    """Rank MLPs by ROME's causal trace: restore a window of clean MLP states at the last subject token."""
    if window is None:
        window = default_window(arch(model).n_layers)
    setup = patch_setup(model, facts, corruption="noise", max_facts=max_facts, seed=seed)
    b = setup.batch
    res = rome_trace(model, b.input_ids, b.attention_mask, b.subject_start, b.subject_last, setup.answer_ids,
                     window=window, n_samples=n_samples, seed=seed, progress=progress)
    scores = res.scores()
    chosen, rule = pick(model, scores, res.labels, fraction=fraction, budget=budget)
    extra = {"rule": rule, "token": "subject_last", "window": window, "n_samples": n_samples,
             "clean_prob": res.clean, "corrupt_prob": res.corrupt, "noise_scale": res.extra["noise_scale"],
             "n_facts": len(setup.facts),
             "indirect_effects": dict(zip(res.labels, res.extra["indirect_effects"], strict=True))}
    return make_localization(model, "causal-tracing", chosen, scores, budget=budget, extra=extra)


def localize_causal_tracing_mlp(
    model: Model, facts: FactSet, *, seed: int = 0, budget: int | None = None, progress: bool = True,
    max_facts: int | None = 64, n_samples: int = CAUSAL_TRACING_SAMPLES,
    positions: Literal["all", "subject_last"] = "all", include_heads: bool = False, fraction: float = 0.5,
    max_rows: int | None = None,
) -> Localization:
    """Rank whole MLPs (and heads) by the indirect effect of restoring each one alone under subject noise."""
    if positions not in ("all", "subject_last"):
        raise ValueError(f"positions must be 'all' or 'subject_last', got {positions!r}")
    setup = patch_setup(model, facts, corruption="noise", max_facts=max_facts, seed=seed)
    b = setup.batch
    mask = None
    if positions == "subject_last":
        mask = torch.zeros_like(b.input_ids, dtype=torch.bool)
        mask[torch.arange(len(b)), b.subject_last] = True
    res = causal_trace(model, b.input_ids, b.attention_mask, b.subject_start, b.subject_last, setup.answer_ids,
                       components=_kinds(include_heads), positions=mask, n_samples=n_samples, seed=seed,
                       max_rows=max_rows, progress=progress)
    scores = res.scores()
    chosen, rule = pick(model, scores, res.labels, fraction=fraction, budget=budget)
    extra = {"rule": rule, "positions": positions, "n_samples": n_samples, "clean_prob": res.clean,
             "corrupt_prob": res.corrupt, "noise_scale": res.extra["noise_scale"], "n_facts": len(setup.facts),
             "indirect_effects": dict(zip(res.labels, res.extra["indirect_effects"], strict=True))}
    return make_localization(model, "causal-tracing-mlp", chosen, scores, budget=budget, extra=extra)


def localize_attribution(
    model: Model, facts: FactSet, *, seed: int = 0, budget: int | None = None, progress: bool = True,
    max_facts: int | None = 64, corruption: CorruptionKind = "swap", include_heads: bool = False,
    fraction: float = 0.5,
) -> Localization:
    """Rank MLPs (and heads) by attribution patching's estimated effect on the logit difference."""
    setup = patch_setup(model, facts, corruption=corruption, max_facts=max_facts, seed=seed)
    b = setup.batch
    res = attribution_patch(model, b.input_ids, b.attention_mask, setup.corruption, setup.metric,
                            components=_kinds(include_heads), direction="noising")
    scores = res.scores()
    chosen, rule = pick(model, scores, res.labels, fraction=fraction, budget=budget)
    extra = {"rule": rule, "clean_logit_diff": res.clean, "corrupt_logit_diff": res.corrupt, **setup.notes}
    return make_localization(model, "attribution", chosen, scores, budget=budget, extra=extra)


def localize_random(
    model: Model, facts: FactSet, *, seed: int = 0, budget: int | None = None, progress: bool = True,
    include_heads: bool = False, n: int | None = None,
) -> Localization:
    """A seeded random choice of MLPs (and heads) cut to ``budget`` (or ``n`` MLPs without one)."""
    pool = all_components(model, ("mlp", "head") if include_heads else ("mlp",))
    order = list(pool)
    random.Random(f"random-localizer-{seed}").shuffle(order)
    if budget is not None:
        chosen, rec = fit_budget(model, order, budget)
        if not chosen:
            raise ValueError(f"budget {budget:,} parameters is smaller than any single component")
        rule = budget_rule("seeded random order", rec)
    else:
        k = n if n is not None else max(1, round(arch(model).n_layers / 4))
        mlps = [c for c in order if isinstance(c, MLP)]
        if not 1 <= k <= len(mlps):
            raise ValueError(f"n must be between 1 and {len(mlps)} (the number of MLPs), got {k}")
        chosen = mlps[:k]
        rule = f"{k} seeded random MLPs"
    scores = {str(c): float(len(order) - i) for i, c in enumerate(order)}  # the random rank, best = highest
    return make_localization(model, "random", chosen, scores, budget=budget, extra={"rule": rule, "seed": seed})


def localize_all_mlps(model: Model, facts: FactSet, *, seed: int = 0, budget: int | None = None,
                      progress: bool = True) -> Localization:
    """Every MLP layer."""
    comps = all_components(model, ("mlp",))
    return make_localization(model, "all-mlps", comps, extra={"rule": "every MLP", "ignored_budget": budget})


def localize_nonlocalized(model: Model, facts: FactSet, *, seed: int = 0, budget: int | None = None,
                          progress: bool = True) -> Localization:
    """Every MLP and attention layer: the whole model except embeddings, unembedding and norms."""
    s = arch(model)
    comps = [c for layer in range(s.n_layers) for c in (Attn(layer), MLP(layer))]
    return make_localization(model, "nonlocalized", comps,
                             extra={"rule": "every MLP and attention layer (not embeddings/norms)",
                                    "ignored_budget": budget})

