"""The probe (fact-lookup) localizer: find the MLP layers over which a fact's attribute becomes decodable.

Recipe (Guo et al. 2024, made automatic): for the facts of one relation, fit a linear probe for the true
answer (the class label) on ``resid_post`` of every layer, at the last subject token, once on the full
prompt and once on the subject alone (no relation text). The accuracy curve ``a`` has the embedding
(``blocks.0.hook_resid_pre``) as baseline ``a[-1]`` and ``a[L]`` after layer ``L`` (MLP ``L`` writes into
``resid_post`` of layer ``L``).

Choice rule (parameters ``rise_fraction`` f, ``min_rise``): let the rise be ``R = max(a) - a[-1]``. The
fact-lookup MLPs are the **smallest contiguous layer range** ``[s, e]`` with ``a[e] - a[s-1] >= f * R``
(ties: larger rise, then earlier). So the layer before the range is within ``(1 - f) * R`` of the baseline
and the range's last layer within ``(1 - f) * R`` of the plateau. A curve that never rises by ``min_rise``
raises ValueError (the attribute is not linearly decodable at the subject, so no MLP range can be read off).

Positions: ``subject_last`` (default, the paper's), ``subject_mean`` (mean over the subject's tokens) or
``last`` (the prediction token; mixes lookup with extraction). A range ending at the final layer with a
subject position is kept but flagged (``extra["warnings"]`` and a Python warning): that MLP's output at the
subject reaches no later layer. So is a range longer than half the layers (a slowly rising curve: on SmolLM2's
CounterFact "mother tongue" facts the embeddings already give 0.80 against a 0.74 majority class, and the
range becomes layers 0-23 — not a localization).

Facts mixing relations: only ``relation`` (default: the largest relation) is probed. Subjects repeated within
the relation keep their first fact. Answers with fewer than ``min_class_size`` facts are dropped (listed in
``extra["dropped_classes"]``). ``budget`` (a parameter count): the range is trimmed from whichever end has the
smaller gain until it fits; ValueError if not even one MLP fits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mechedit.components import MLP, n_params
from mechedit.facts import FactError, FactSet
from mechedit.localize.localization import Localization, make_localization
from mechedit.models import model_info
from mechedit.stats import majority_chance
from mechedit.tokens import encode
from patching.model import Model, arch
from probes import LogisticProbe, collect_activations, rare_classes, stratified_split

Variant = Literal["subject", "full"]
Position = Literal["subject_last", "subject_mean", "last"]


@dataclass
class ProbeCurves:
    """Per-layer probe test accuracy for each prompt variant, plus what the curves were fitted on."""

    accuracy: dict[str, list[float]]  # variant -> accuracy after each layer (resid_post)
    embed_accuracy: dict[str, float]  # variant -> accuracy on the embeddings (baseline)
    chance: float  # majority-class frequency in the test set
    classes: list[str]
    n_train: int
    n_test: int


def choose_layer_range(curve: list[float], baseline: float, rise_fraction: float = 0.8,
                       min_rise: float = 0.1) -> tuple[int, int]:
    """Smallest contiguous layer range [start, end] explaining ``rise_fraction`` of the accuracy rise."""
    if not 0 < rise_fraction <= 1:
        raise ValueError(f"rise_fraction must be in (0, 1], got {rise_fraction}")
    if not curve:
        raise ValueError("empty accuracy curve")
    a = [baseline] + list(curve)  # a[l + 1] = accuracy after layer l
    rise = max(a) - baseline
    if rise < min_rise:
        raise ValueError(f"probe accuracy never rises more than {min_rise:.2f} above the embedding baseline "
                         f"{baseline:.3f} (max {max(a):.3f}): the attribute is not linearly decodable here, so "
                         "no fact-lookup layer range can be chosen")
    best = None
    for start in range(len(curve)):
        for end in range(start, len(curve)):
            gain = a[end + 1] - a[start]
            if gain >= rise_fraction * rise - 1e-12:
                key = (end - start, -gain, start)
                if best is None or key < best[0]:
                    best = (key, (start, end))
                break  # longer ranges from this start are never smaller
    assert best is not None  # [0, argmax] always explains the whole rise
    return best[1]


def _trim_to_budget(model, start: int, end: int, gains: list[float], budget: int) -> tuple[int, int]:
    """Drop the end layer with the smaller gain until the range's MLPs fit in ``budget`` parameters."""
    while n_params(model, [MLP(layer) for layer in range(start, end + 1)]) > budget:
        if start == end:
            raise ValueError(f"budget {budget:,} parameters is smaller than one MLP "
                             f"({n_params(model, [MLP(start)]):,}); no probe localization fits")
        if gains[start] < gains[end]:
            start += 1
        else:
            end -= 1
    return start, end


def select_facts(facts: FactSet, relation: str | None, min_class_size: int) -> tuple[FactSet, dict, str]:
    """One relation's facts, one per subject, answers with enough examples; (facts, dropped, relation)."""
    groups = facts.by_relation()
    if relation is None:
        relation = max(groups, key=lambda r: len(groups[r]))  # first of the largest (dict keeps order)
    elif relation not in groups:
        raise FactError(f"relation {relation!r} not in the fact set; it has {list(groups)}")
    seen: set[str] = set()
    unique = []
    for f in groups[relation]:
        if f.subject not in seen:
            seen.add(f.subject)
            unique.append(f)
    dropped = rare_classes([f.answer for f in unique], min_class_size)
    kept = [f for f in unique if f.answer not in dropped]
    n_classes = len({f.answer for f in kept})
    if n_classes < 2:
        raise FactError(f"relation {relation!r}: need at least 2 answers with >= {min_class_size} facts each to "
                        f"probe, got {n_classes} (answers dropped as too rare: {dropped})")
    return facts.subset(kept, f"{facts.name}:{relation}"), dropped, relation


def _activations(model, batch, position: Position, hooks: list[str], batch_size: int,
                 progress: bool) -> torch.Tensor:
    """[hook, n, d] activations at the last subject token, the last token, or averaged over the subject."""
    if position != "subject_mean":
        pos = batch.subject_last if position == "subject_last" else batch.last
        return collect_activations(model, batch.input_ids, batch.attention_mask, pos, hooks,
                                   batch_size=batch_size, progress=progress)
    span = batch.subject_last - batch.subject_start + 1
    offsets = torch.arange(int(span.max()))
    pos = torch.minimum(batch.subject_start[:, None] + offsets, batch.subject_last[:, None])  # pad by repeating
    X = collect_activations(model, batch.input_ids, batch.attention_mask, pos, hooks, batch_size=batch_size,
                            progress=progress)
    weight = (offsets[None, :] < span[:, None]).to(X.dtype)
    return torch.einsum("hnkd,nk->hnd", X, weight / span[:, None])


def probe_curves(model: Model, facts: FactSet, *, seed: int = 0, position: Position = "subject_last",
                 test_size: float = 0.25, C: float = 1.0, batch_size: int = 32,
                 progress: bool = True) -> ProbeCurves:
    """Fit all-layer probes for the facts' true answers on the full and the subject-only prompts."""
    shape = arch(model)
    hooks = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(shape.n_layers)]
    labels = np.array([f.answer for f in facts])
    train, test = stratified_split(labels, test_size=test_size, seed=seed)
    bos = model_info(model).prepend_bos
    prompts = {"full": [f.render() for f in facts], "subject": [f.subject_only() for f in facts]}
    accuracy, embed = {}, {}
    for variant, texts in prompts.items():
        batch = encode(model.tokenizer, texts, [f.subject for f in facts], prepend_bos=bos)
        X = _activations(model, batch, position, hooks, batch_size, progress)
        probe = LogisticProbe(C=C).fit(X[:, train], labels[train])
        acc = probe.score(X[:, test], labels[test])
        embed[variant] = float(acc[0])
        accuracy[variant] = [float(v) for v in acc[1:]]
    return ProbeCurves(accuracy, embed, majority_chance(labels[test].tolist()), sorted(set(labels.tolist())),
                       len(train), len(test))


def localize_probe(
    model: Model,
    facts: FactSet,
    *,
    seed: int = 0,
    budget: int | None = None,
    progress: bool = True,
    relation: str | None = None,
    choose_on: Variant = "subject",
    position: Position = "subject_last",
    rise_fraction: float = 0.8,
    min_rise: float = 0.1,
    min_class_size: int = 8,
    test_size: float = 0.25,
    C: float = 1.0,
    batch_size: int = 32,
) -> Localization:
    """Localize the fact-lookup MLPs from all-layer probe accuracy at the last subject token (module docstring)."""
    if choose_on not in ("subject", "full"):
        raise ValueError(f"choose_on must be 'subject' or 'full', got {choose_on!r}")
    if position not in ("subject_last", "subject_mean", "last"):
        raise ValueError(f"position must be 'subject_last', 'subject_mean' or 'last', got {position!r}")
    smallest = min(n_params(model, [MLP(layer)]) for layer in range(arch(model).n_layers))
    if budget is not None and budget < smallest:
        raise ValueError(f"budget {budget:,} parameters is smaller than one MLP ({smallest:,}); "
                         "no probe localization fits")
    chosen_facts, dropped, relation = select_facts(facts, relation, min_class_size)
    curves = probe_curves(model, chosen_facts, seed=seed, position=position, test_size=test_size, C=C,
                          batch_size=batch_size, progress=progress)
    curve, baseline = curves.accuracy[choose_on], curves.embed_accuracy[choose_on]
    start, end = choose_layer_range(curve, baseline, rise_fraction, min_rise)
    gains = [b - a for a, b in zip([baseline] + curve[:-1], curve, strict=True)]
    trimmed_from = None
    if budget is not None:
        trimmed_from = [start, end]
        start, end = _trim_to_budget(model, start, end, gains, budget)
        if [start, end] == trimmed_from:
            trimmed_from = None
    notes = []
    if end == arch(model).n_layers - 1 and position != "last":
        notes.append(f"the chosen range ends at the final layer {end}: its MLP output at subject positions reaches no "
                     "later layer, so it cannot be read by the prediction at a later token (the attribute becomes "
                     "linearly decodable at the subject only at the very end; the lookup may be distributed or "
                     "nonlinear in earlier layers)")
        warnings.warn(notes[-1], stacklevel=2)
    n_layers = arch(model).n_layers
    if end - start + 1 > n_layers // 2:
        notes.append(f"the chosen range spans {end - start + 1} of {n_layers} layers: the accuracy curve rises slowly "
                     f"(embeddings {baseline:.2f}, max {max(curve):.2f}, chance {curves.chance:.2f}), so it does not "
                     "single out fact-lookup MLPs; the attribute may be guessable from the name itself")
        warnings.warn(notes[-1], stacklevel=2)
    extra = {
        "warnings": notes,
        "curves": curves.accuracy, "embed_accuracy": curves.embed_accuracy, "chance": curves.chance,
        "chosen_range": [start, end], "chosen_on": choose_on, "relation": relation, "position": position,
        "hook": "blocks.{L}.hook_resid_post", "classes": curves.classes, "dropped_classes": dropped,
        "n_facts": len(chosen_facts), "n_train": curves.n_train, "n_test": curves.n_test,
        "rule": {"name": "smallest contiguous range explaining rise_fraction of the rise from the embedding "
                         "baseline to the maximum", "rise_fraction": rise_fraction, "min_rise": min_rise,
                 "test_size": test_size, "C": C, "min_class_size": min_class_size, "seed": seed},
        "budget": budget, "trimmed_from": trimmed_from,
    }
    return make_localization(
        model, "probe", [MLP(layer) for layer in range(start, end + 1)],
        {str(MLP(layer)): float(g) for layer, g in enumerate(gains)}, probe_accuracy=list(curve), extra=extra,
    )
