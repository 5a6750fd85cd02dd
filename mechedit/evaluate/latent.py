"""Latent-probe verification (Guo et al. 2024): is the true answer still linearly decodable after an edit?

For each relation of the forget facts, linear probes (one per layer and position, fitted all at once) are trained
to predict the true answer from the residual stream after every block, at the last subject token and at the last
token, on **maintain** facts of that relation (a seeded 75 % of them; the other 25 % give the probe's held-out
quality). ``train_facts`` adds more facts to that pool (e.g. every known fact of the relation, as ``mechedit
compare`` does); facts about a forget subject are never used for training. Two probe kinds:

- **categorical** (``probes.LogisticProbe``) when answers repeat: every true answer of the relation's forget facts
  has at least ``MIN_PER_CLASS`` maintain examples (classes with fewer are dropped from the pool);
- **open-vocabulary** (``probes.RidgeProbe``) otherwise (capitals, most real relations): a ridge map from the
  residual stream to the **unembedding row** of the answer's first token, decoded by forced choice among each
  fact's candidates. The unembedding row, not the embedding row: it is the direction in which the model itself
  writes an answer into the residual stream to say it (for tied embeddings, as in SmolLM2, the two are equal).
  It needs ``MIN_OPEN`` pool facts; with fewer, the relation is not probed (a note says why).

The same probes, fitted on the original model, are applied to the forget facts of the original (``before``) and
of the edited model (``after``); as a control, they are also applied to the edited model's held-out maintain
facts (``selected.quality_on_edited``: a probe that fails there too reads a drifted representation, and its loss
on the forget facts says little about the facts). The verdict uses one (position, layer): the one with the best
held-out quality on maintain facts among the layers **at or after the first edited layer** (below it the residual
stream of the edited model is bit-identical to the original's, so those layers can only copy the before-accuracy —
their maximum is reported as ``untouched_floor``, the layers as ``excluded_layers``). The forget facts never choose the
probe; the selected after/before accuracies and their difference carry bootstrap 95 % intervals over forget facts
(``mechedit.stats.bootstrap_ci``). Fresh probes (fitted on the edited model) are reported, not decided on.

Per position and layer the tables give accuracies on the true answer (and on the new answer, for edits) and
``delta`` = after − before. ``chance``: the best constant prediction on the forget facts (share of the most common
true answer, at least 1/len(candidates)); ``quality_chance``: the same on the held-out maintain facts. When no
relation can be probed, every table is None and ``reason`` says why (the evaluation goes on).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from mechedit.facts import Fact, FactError, FactSet
from mechedit.memo import OriginalMemo, remembered
from mechedit.models import model_info
from mechedit.stats import bootstrap_ci, chance_accuracy, majority_chance
from mechedit.tokens import encode, first_token_id
from patching.families import unembedding
from patching.model import Model, arch
from probes import LogisticProbe, ProbeConvergenceWarning, RidgeProbe, collect_activations, stratified_split

POSITIONS = ("subject_last", "last")
MIN_PER_CLASS = 4  # a categorical class needs this many maintain facts (>= 2 on each side of the split)
MIN_OPEN = 8  # an open-vocabulary probe needs this many maintain facts (>= 2 held out)


@dataclass
class LatentProbes:
    """Per-layer probe accuracies keyed by position (lists per layer), the selected probe and the floor."""

    original_true: dict[str, list[float]] | None = None  # original probes on the edited model's forget facts
    original_new: dict[str, list[float]] | None = None  # ... predicting the new answer (None without targets)
    original_before: dict[str, list[float]] | None = None  # original probes on the original model's forget facts
    original_quality: dict[str, list[float]] | None = None  # original probes on held-out maintain facts
    fresh_true: dict[str, list[float]] | None = None  # fresh probes (fit on the edited model), reported only
    fresh_new: dict[str, list[float]] | None = None
    fresh_quality: dict[str, list[float]] | None = None  # fresh probes on held-out maintain facts (edited model)
    chance: float | None = None
    n_train: int = 0
    n_test: int = 0
    relations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kind: dict[str, str] = field(default_factory=dict)  # relation -> "categorical" | "open_vocab"
    quality_chance: float | None = None
    delta: dict[str, list[float]] | None = None  # original_true - original_before
    first_edited_layer: int | None = None
    first_edited_source: str | None = None  # "edit" (its components) or "activations" (first differing layer)
    excluded_layers: list[int] = field(default_factory=list)
    untouched_floor: float | None = None  # max before-accuracy over excluded layers and positions
    selected: dict | None = None  # position, layer, quality, before/after/delta intervals (mechedit.stats)
    reason: str | None = None  # why there is no latent signal (None when there is one)

    def to_dict(self) -> dict:
        """JSON-serializable dict."""
        return asdict(self)

    def best(self, which: str = "original_true") -> float:
        """Highest accuracy over positions and layers of one table (descriptive; the verdict uses ``selected``)."""
        table = getattr(self, which)
        if table is None:
            raise ValueError(f"latent probes have no {which!r} table" + (f" ({self.reason})" if self.reason else ""))
        return float(max(max(v) for v in table.values()))

    @property
    def after(self) -> float | None:
        """Selected probe's true-answer accuracy on the edited model's forget facts (None without a signal)."""
        return None if self.selected is None else self.selected["after"]["mean"]

    @property
    def before(self) -> float | None:
        """Selected probe's true-answer accuracy on the original model's forget facts."""
        return None if self.selected is None else self.selected["before"]["mean"]


def _features(model: Model, facts: list[Fact], batch_size: int, progress: bool) -> torch.Tensor:
    """Residual stream after every block at (last subject token, last token): [layer, n, 2, d]."""
    b = encode(model.tokenizer, [f.render() for f in facts], [f.subject for f in facts],
               prepend_bos=model_info(model).prepend_bos)
    pos = torch.stack([b.subject_last, b.last], 1)
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(arch(model).n_layers)]
    return collect_activations(model, b.input_ids, b.attention_mask, pos, hooks, batch_size=batch_size,
                               progress=progress)


def _keys(facts) -> tuple:
    """What identifies a list of facts for a memo: each fact's prompt and answer, in order."""
    return tuple((f.render(), f.answer) for f in facts)


def _stack(X: torch.Tensor) -> torch.Tensor:
    """[layer, n, position, d] -> [position * layer, n, d] (position-major)."""
    return X.permute(2, 0, 1, 3).reshape(-1, X.shape[1], X.shape[3])


def _unstack(values: np.ndarray, n_layers: int) -> dict[str, np.ndarray]:
    """Inverse of ``_stack`` for per-(position, layer) results."""
    return {pos: values[k * n_layers:(k + 1) * n_layers] for k, pos in enumerate(POSITIONS)}


def _fit(X: torch.Tensor, y: np.ndarray, C: float) -> LogisticProbe:
    """A logistic probe per (position, layer); convergence warnings are silenced (probes are judged held-out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProbeConvergenceWarning)
        return LogisticProbe(C=C, max_iter=300).fit(X, y)


def _hits(pred: np.ndarray, y: list[str | None]) -> np.ndarray:
    """[layer, n] 0/1 hits of predicted labels against ``y``; NaN where the label is None (no target)."""
    out = np.full(pred.shape, np.nan)
    for i, v in enumerate(y):
        if v is not None:
            out[:, i] = pred[:, i] == v
    return out


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


class _Categorical:
    """A LogisticProbe over the relation's repeated answers, with label predictions as hits."""

    def __init__(self, C: float):
        self.C = C

    def fit(self, X, facts, X_held, held) -> np.ndarray:
        self.probe = _fit(X, np.array([f.answer for f in facts], dtype=object).astype(str), self.C)
        return self.hits(X_held, held, "answer")

    def hits(self, X, facts, which: str) -> np.ndarray:
        return _hits(self.probe.predict(X), [getattr(f, which) for f in facts])


class _OpenVocab:
    """A RidgeProbe to the answers' unembedding rows, forced choice among each fact's candidates."""

    def __init__(self, rows: torch.Tensor, tokenizer):
        self.rows, self.tok = rows, tokenizer

    def _vec(self, answer: str) -> torch.Tensor:
        return self.rows[first_token_id(self.tok, answer)]

    def _cands(self, facts) -> list[torch.Tensor]:
        return [torch.stack([self._vec(c) for c in f.candidates]) for f in facts]

    def fit(self, X, facts, X_held, held) -> np.ndarray:
        self.probe = RidgeProbe().fit(X, torch.stack([self._vec(f.answer) for f in facts]))
        self.probe.choose_alpha(X_held, self._cands(held), [f.candidates.index(f.answer) for f in held])
        return self.hits(X_held, held, "answer")

    def hits(self, X, facts, which: str) -> np.ndarray:
        picks = self.probe.choose(X, self._cands(facts))  # [layer, n] candidate index
        pred = np.array([[f.candidates[j] for j, f in zip(row, facts, strict=True)] for row in picks], dtype=object)
        return _hits(pred, [getattr(f, which) for f in facts])


def _plan(rel: str, group: FactSet, pool: list[Fact], seed: int, max_train: int):
    """(kind, train, held) for one relation, or (None, reason, None) when no probe kind can be trained."""
    counts: dict[str, int] = {}
    for f in pool:
        counts[f.answer] = counts.get(f.answer, 0) + 1
    name = f"relation {rel or '-'!r}"
    rng = random.Random(f"latent-{seed}-{rel}")
    if all(counts.get(f.answer, 0) >= MIN_PER_CLASS for f in group):
        cat = [f for f in pool if counts[f.answer] >= MIN_PER_CLASS]
        rng.shuffle(cat)
        cat = cat[:max_train]
        if len({f.answer for f in cat}) >= 2:
            try:
                tr, te = stratified_split([f.answer for f in cat], test_size=0.25, seed=seed)
                return "categorical", [cat[i] for i in tr.tolist()], [cat[i] for i in te.tolist()]
            except ValueError:
                pass  # classes thinned by max_train: fall through to the open-vocabulary probe
    usable = [f for f in pool if f.answer in f.candidates and len(f.candidates) >= 2]
    if len(usable) < MIN_OPEN:
        rare = sum(counts.get(f.answer, 0) < MIN_PER_CLASS for f in group)
        return None, (f"{name}: {rare}/{len(group)} forget answer(s) have < {MIN_PER_CLASS} maintain facts "
                      f"(no categorical probe) and only {len(usable)} maintain fact(s) with candidates "
                      f"(< {MIN_OPEN}, no open-vocabulary probe); {len(group)} forget fact(s) not probed"), None
    rng.shuffle(usable)
    usable = usable[:max_train]
    n_held = max(2, round(0.25 * len(usable)))
    return "open_vocab", usable[n_held:], usable[:n_held]


def _chance(facts: list[Fact], kind: str) -> float:
    """Best constant prediction's accuracy on ``facts`` (most common answer's share, at least uniform)."""
    return max(majority_chance([f.answer for f in facts]), chance_accuracy([max(1, len(f.candidates)) for f in facts]))


def _identical_layers(A: torch.Tensor, B: torch.Tensor) -> list[bool]:
    """Per layer: are two [layer, n, 2, d] activation tensors bit-identical?"""
    return [bool(torch.equal(A[layer], B[layer])) for layer in range(A.shape[0])]


def latent_probes(
    original: Model, edited: Model, facts: FactSet, *, seed: int = 0, max_train: int = 400, C: float = 1.0,
    fresh: bool = True, batch_size: int = 32, progress: bool = True, train_facts: FactSet | None = None,
    first_edited_layer: int | None = None, memo: OriginalMemo | None = None,
) -> LatentProbes:
    """Probe the true (and new) answers of the forget facts in ``edited`` at every layer (see module docstring).

    ``first_edited_layer``: the earliest layer of the edit's components (0 for a nonlocalized edit); None: the
    first layer whose residual stream differs between the two models on the forget facts. ``memo``: reuse the
    original model's features and probes from an earlier call (``mechedit.memo``).
    """
    if not any(f.changes for f in facts):
        raise FactError(f"fact set '{facts.name}' has no forget facts to probe")
    forget = facts.forget_set()
    n_layers = arch(original).n_layers
    if len(forget) == len(facts) and train_facts is None:
        return LatentProbes(reason=f"no maintain facts (facts not marked to change) in '{facts.name}' to train "
                                   "probes on")
    maintain = facts.maintain_set() if len(forget) < len(facts) else facts.subset([])
    rows = unembedding(original).weight.detach().to(torch.float64)
    tables = ("true", "new", "before", "quality")
    hits = {(m, t): [] for m in ("original", "fresh") for t in tables}
    hits["original", "quality_edited"] = []
    chances, quality_chances, kinds, notes, relations = [], [], {}, [], []
    n_train_total = 0
    X_or_all, X_ed_all = [], []
    maint_by_rel = _training_pool(maintain, forget, train_facts).by_relation()
    for rel, group in forget.by_relation().items():
        pool = list(maint_by_rel[rel]) if rel in maint_by_rel else []
        kind, train, held = _plan(rel, group, pool, seed, max_train)
        if kind is None:
            notes.append(train)
            continue
        relations.append(rel)
        kinds[rel] = kind
        n_train_total += len(train)
        if kind == "categorical":
            unseen = sorted({f.answer for f in group} - {f.answer for f in train})
            if unseen:
                notes.append(f"relation {rel or '-'!r}: true answer(s) {unseen} absent from the probe's training "
                             "facts (counted as misses)")
        chances += [_chance(list(group), kind)] * len(group)
        quality_chances += [_chance(held, kind)] * len(held)
        X_ed = _features(edited, list(group), batch_size, False)  # [L, n, 2, d]
        X_or = remembered(memo, ("latent-features", _keys(group)),
                          lambda group=group: _features(original, list(group), batch_size, False))
        X_ed_all.append(X_ed)
        X_or_all.append(X_or)
        for model_name, model in (("original", original), ("fresh", edited))[: 2 if fresh else 1]:
            def fit(model=model, train=train, held=held, kind=kind):
                X_pool = _features(model, train + held, batch_size, progress)
                probe = _Categorical(C) if kind == "categorical" else _OpenVocab(rows, original.tokenizer)
                return X_pool, probe, probe.fit(_stack(X_pool[:, : len(train)]), train,
                                                _stack(X_pool[:, len(train):]), held)

            # the original model's probes do not depend on the edit: fitted once per memo
            X_pool, probe, quality = (remembered(memo, ("latent-probe", kind, C, _keys(train), _keys(held)), fit)
                                      if model_name == "original" else fit())
            hits[model_name, "quality"].append(quality)
            hits[model_name, "true"].append(probe.hits(_stack(X_ed), list(group), "answer"))
            hits[model_name, "new"].append(probe.hits(_stack(X_ed), list(group), "target"))
            hits[model_name, "before"].append(probe.hits(_stack(X_or), list(group), "answer"))
            if model_name == "original":
                original_probe = probe
            else:  # control: do the original probes still read the edited model's held-out maintain facts?
                hits["original", "quality_edited"].append(original_probe.hits(_stack(X_pool[:, len(train):]), held,
                                                                              "answer"))
    if not relations:
        return LatentProbes(reason="no forget fact could be probed: " + "; ".join(notes), notes=notes)
    H = {k: np.concatenate(v, 1) for k, v in hits.items() if v}  # [position * layer, facts]

    def table(key) -> dict[str, list[float]] | None:
        if key not in H or np.isnan(H[key]).all():
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {p: v.tolist() for p, v in _unstack(np.nanmean(H[key], 1), n_layers).items()}

    out = LatentProbes(
        original_true=table(("original", "true")), original_new=table(("original", "new")),
        original_before=table(("original", "before")), original_quality=table(("original", "quality")),
        fresh_true=table(("fresh", "true")), fresh_new=table(("fresh", "new")),
        fresh_quality=table(("fresh", "quality")), chance=float(np.mean(chances)),
        n_train=n_train_total, n_test=len(chances), relations=relations, notes=notes, kind=kinds,
        quality_chance=float(np.mean(quality_chances)),
    )
    out.delta = {p: (np.array(out.original_true[p]) - np.array(out.original_before[p])).tolist() for p in POSITIONS}
    # the first edited layer: declared by the edit, else the first layer whose activations differ
    same = _identical_layers(torch.cat(X_or_all, 1), torch.cat(X_ed_all, 1))
    measured = next((layer for layer, s in enumerate(same) if not s), None)
    if first_edited_layer is not None:
        first, out.first_edited_source = int(first_edited_layer), "edit"
        if measured is not None and measured < first:
            notes.append(f"the residual stream already differs at layer {measured}, before the edit's first "
                         f"component (layer {first}); deciding from layer {measured}")
            first, out.first_edited_source = measured, "activations"
    else:
        first, out.first_edited_source = (measured, "activations") if measured is not None else (0, "activations")
        if measured is None:
            notes.append("the edited model's residual stream equals the original's at every layer on the forget "
                         "facts")
    first = max(0, first)
    out.first_edited_layer, out.excluded_layers = first, list(range(min(first, n_layers)))
    if first > 0:
        out.untouched_floor = float(max(max(v[:first]) for v in out.original_before.values()))
    if first >= n_layers:
        out.reason = f"the first edited layer ({first}) is past the last block: no layer to decide on"
        return out
    quality = np.nanmean(H["original", "quality"], 1).reshape(len(POSITIONS), n_layers)
    quality[:, :first] = -np.inf
    k_pos, k_layer = np.unravel_index(int(np.argmax(quality)), quality.shape)
    k = int(k_pos) * n_layers + int(k_layer)
    after, before = H["original", "true"][k], H["original", "before"][k]
    out.selected = {
        "position": POSITIONS[int(k_pos)], "layer": int(k_layer),
        "quality": float(quality[k_pos, k_layer]), "quality_chance": out.quality_chance,
        "after": bootstrap_ci(after.tolist(), seed=seed).to_dict(),
        "before": bootstrap_ci(before.tolist(), seed=seed).to_dict(),
        "after_minus_before": bootstrap_ci((after - before).tolist(), seed=seed).to_dict(),
        "fresh_after": None if ("fresh", "true") not in H else float(np.nanmean(H["fresh", "true"][k])),
        "quality_on_edited": None if ("original", "quality_edited") not in H
        else float(np.nanmean(H["original", "quality_edited"][k])),
        "chosen_on": "held-out maintain facts (probe quality), layers >= first edited layer",
    }
    return out
