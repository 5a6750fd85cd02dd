"""Latent-probe verification (Guo et al. 2024): is the true answer still linearly decodable after an edit?

For each relation of the forget facts, linear probes (``probes.LogisticProbe``, one per layer, fitted all at once)
are trained to predict the true answer from the residual stream after every block, at the last subject token and
at the last token, on **maintain** facts of that relation (a seeded stratified 75 % of them; the other 25 % give
the probe's held-out accuracy, its quality). ``train_facts`` adds more facts to that pool (e.g. every known fact of
the relation, as ``mechedit compare`` does: a few dozen maintain facts make weak probes); facts about a forget
subject are never used for training. Two probe sets:

- **original probes**: trained on the original model's activations, then applied to the edited model's
  activations of the forget facts (and, as the reference, to the original model's);
- **fresh probes**: trained the same way on the edited model's own activations, then applied to its forget facts.

Reported per position and layer: accuracy on the true answer and on the new answer (edits). Accuracies of
several relations are averaged weighted by their number of forget facts. ``chance`` is the accuracy of the best
constant prediction on the forget facts (the share of their most common true answer; at least 1/len(candidates)):
a probe that collapses to one class on a damaged model scores that much without decoding anything, and when all
forget facts share their answer (chance 1) decodability cannot be measured at all. A forget fact whose true
answer never occurs among its relation's maintain facts can never be decoded and counts as a miss.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from mechedit.facts import Fact, FactError, FactSet
from mechedit.models import model_info
from mechedit.stats import chance_accuracy, majority_chance
from mechedit.tokens import encode
from patching.model import Model, arch
from probes import LogisticProbe, ProbeConvergenceWarning, collect_activations, stratified_split

POSITIONS = ("subject_last", "last")


@dataclass
class LatentProbes:
    """Per-layer probe accuracies, keyed by position (``subject_last``, ``last``); lists are per layer."""

    original_true: dict[str, list[float]]  # original probes on the edited model's forget facts, true answer
    original_new: dict[str, list[float]] | None  # ... predicting the new answer (None without targets)
    original_before: dict[str, list[float]]  # original probes on the original model's forget facts (reference)
    original_quality: dict[str, list[float]]  # original probes on held-out maintain facts of the original model
    fresh_true: dict[str, list[float]] | None  # fresh probes (fit on the edited model) on its forget facts
    fresh_new: dict[str, list[float]] | None
    fresh_quality: dict[str, list[float]] | None  # fresh probes on held-out maintain facts of the edited model
    chance: float
    n_train: int
    n_test: int
    relations: list[str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-serializable dict."""
        return asdict(self)

    def best(self, which: str = "original_true") -> float:
        """Highest accuracy over positions and layers of one table (e.g. ``original_true``)."""
        table = getattr(self, which)
        if table is None:
            raise ValueError(f"latent probes have no {which!r} table")
        return float(max(max(v) for v in table.values()))


def _features(model, facts: list[Fact], batch_size: int, progress: bool) -> torch.Tensor:
    """Residual stream after every block at (last subject token, last token): [layer, n, 2, d]."""
    b = encode(model.tokenizer, [f.render() for f in facts], [f.subject for f in facts],
               prepend_bos=model_info(model).prepend_bos)
    pos = torch.stack([b.subject_last, b.last], 1)
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(arch(model).n_layers)]
    return collect_activations(model, b.input_ids, b.attention_mask, pos, hooks, batch_size=batch_size,
                               progress=progress)


def _stack(X: torch.Tensor) -> torch.Tensor:
    """[layer, n, position, d] -> [position * layer, n, d] (position-major)."""
    return X.permute(2, 0, 1, 3).reshape(-1, X.shape[1], X.shape[3])


def _unstack(values: np.ndarray, n_layers: int) -> dict[str, np.ndarray]:
    """Inverse of ``_stack`` for per-(position, layer) results."""
    return {pos: values[k * n_layers:(k + 1) * n_layers] for k, pos in enumerate(POSITIONS)}


def _fit(X: torch.Tensor, y: np.ndarray, C: float):

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbeConvergenceWarning)
        return LogisticProbe(C=C, max_iter=300).fit(X, y)


def _score(probe, X: torch.Tensor, y: list[str | None]) -> np.ndarray:
    """Accuracy per layer; a None label (no target) is skipped, an unseen label counts as a miss."""
    keep = [i for i, v in enumerate(y) if v is not None]
    if not keep:
        return np.full(X.shape[0], np.nan)
    pred = probe.predict(X[:, keep])
    return (pred == np.array([y[i] for i in keep], dtype=object)[None, :]).mean(1)


def _training_pool(maintain: FactSet, forget: FactSet, extra: FactSet | None) -> FactSet:
    """Maintain facts plus ``extra`` facts, without duplicates and without any fact about a forget subject."""
    if extra is None:
        return maintain
    banned = {(f.relation, f.subject) for f in forget}
    seen, out = set(), []
    for f in (*maintain, *extra):
        key = (f.relation, f.subject, f.prompt)
        if key in seen or (f.relation, f.subject) in banned:
            continue
        seen.add(key)
        out.append(f)
    return maintain.subset(out)


def latent_probes(
    original: Model, edited: Model, facts: FactSet, *, seed: int = 0, max_train: int = 400, C: float = 1.0,
    fresh: bool = True, batch_size: int = 32, progress: bool = True, train_facts: FactSet | None = None,
) -> LatentProbes:
    """Probe the true (and new) answers of the forget facts in ``edited`` at every layer (see module docstring)."""
    if not any(f.changes for f in facts):
        raise FactError(f"fact set '{facts.name}' has no forget facts to probe")
    forget = facts.forget_set()
    maintain = facts.maintain_set() if len(forget) < len(facts) else None
    if maintain is None:
        raise FactError("latent probes need maintain facts (facts not marked to change) to train on; "
                        f"'{facts.name}' has none")
    n_layers = arch(original).n_layers
    acc = {k: {p: np.zeros(n_layers) for p in POSITIONS} for k in
           ("original_true", "original_new", "original_before", "original_quality",
            "fresh_true", "fresh_new", "fresh_quality")}
    weights_test, weights_quality, chance_sum = 0, 0, 0.0
    n_train_total, notes, relations = 0, [], []
    has_targets = any(f.target for f in forget)
    maint_by_rel = _training_pool(maintain, forget, train_facts).by_relation()
    for rel, group in forget.by_relation().items():
        pool = list(maint_by_rel[rel]) if rel in maint_by_rel else []
        counts: dict[str, int] = {}
        for f in pool:
            counts[f.answer] = counts.get(f.answer, 0) + 1
        pool = [f for f in pool if counts[f.answer] >= 4]  # stratified split keeps >= 2 per class per side
        random.Random(f"latent-{seed}-{rel}").shuffle(pool)
        pool = pool[:max_train]
        if len({f.answer for f in pool}) < 2:
            notes.append(f"relation {rel or '-'!r}: fewer than 2 answers with >= 4 maintain facts; "
                         f"{len(group)} forget fact(s) not probed")
            continue
        try:
            tr, te = stratified_split([f.answer for f in pool], test_size=0.25, seed=seed)
        except ValueError as exc:
            notes.append(f"relation {rel or '-'!r}: {exc}; not probed")
            continue
        relations.append(rel)
        train = [pool[i] for i in tr.tolist()]
        held = [pool[i] for i in te.tolist()]
        y_train = np.array([f.answer for f in train], dtype=object)
        y_held = [f.answer for f in held]
        y_true = [f.answer for f in group]
        y_new = [f.target for f in group]
        unseen = sorted({a for a in y_true if a not in set(y_train)})
        if unseen:
            notes.append(f"relation {rel or '-'!r}: true answer(s) {unseen} absent from the maintain facts "
                         "(counted as misses)")
        # the best constant prediction: a probe that collapses to one class scores this much on these facts
        chance_rel = max(majority_chance(y_true), chance_accuracy([len(f.candidates) for f in group]))
        n_test, n_held = len(group), len(held)
        weights_test += n_test
        weights_quality += n_held
        chance_sum += chance_rel * n_test
        n_train_total += len(train)
        X_forget_ed = _features(edited, list(group), batch_size, False)  # [L, n, 2, d]
        X_forget_or = _features(original, list(group), batch_size, False)
        n_new = sum(t is not None for t in y_new)
        for model_name, model in (("original", original), ("fresh", edited))[: 2 if fresh else 1]:
            X_pool = _features(model, train + held, batch_size, progress)
            # one fit for every (position, layer): positions stacked as extra "layers"
            probe = _fit(_stack(X_pool[:, : len(train)]), y_train.astype(str), C)
            quality = _unstack(_score(probe, _stack(X_pool[:, len(train):]), y_held), n_layers)
            true = _unstack(_score(probe, _stack(X_forget_ed), y_true), n_layers)
            new = _unstack(_score(probe, _stack(X_forget_ed), y_new), n_layers) if n_new else None
            before = _unstack(_score(probe, _stack(X_forget_or), y_true), n_layers)
            for pos in POSITIONS:
                acc[f"{model_name}_quality"][pos] += quality[pos] * n_held
                acc[f"{model_name}_true"][pos] += true[pos] * n_test
                if new is not None:
                    acc[f"{model_name}_new"][pos] += new[pos] * n_new
                if model_name == "original":
                    acc["original_before"][pos] += before[pos] * n_test
    if weights_test == 0:
        raise FactError("no forget fact could be probed: " + "; ".join(notes))
    n_new_total = sum(f.target is not None for f in forget if f.relation in relations)

    def table(name: str, denom: int) -> dict[str, list[float]] | None:
        if name.startswith("fresh") and not fresh:
            return None
        if name.endswith("_new") and (not has_targets or n_new_total == 0):
            return None
        return {p: (acc[name][p] / denom).tolist() for p in POSITIONS}

    return LatentProbes(
        original_true=table("original_true", weights_test), original_new=table("original_new", n_new_total),
        original_before=table("original_before", weights_test),
        original_quality=table("original_quality", weights_quality),
        fresh_true=table("fresh_true", weights_test), fresh_new=table("fresh_new", n_new_total),
        fresh_quality=table("fresh_quality", weights_quality), chance=chance_sum / weights_test,
        n_train=n_train_total, n_test=weights_test, relations=relations, notes=notes,
    )
