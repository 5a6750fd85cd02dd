"""Which relations does a model *look up*? Per relation: known facts, answer classes, a lexical baseline, the probe.

A fact-lookup localizer can only find MLPs that look a fact up. When the answer can be read off the subject's own
tokens ("Google Chrome" → Google, "Windows 7" → Microsoft), probes decode it from the embeddings, no MLP edit
can remove it, and the relation cannot test localization. ``profile_relations`` measures, for each relation of a
fact set, on the facts the model knows:

- ``n_facts``, ``n_known``, ``n_classes`` (answers with at least ``min_class_size`` known facts, one fact per
  subject) and ``majority`` — the share of the most common answer (a constant guess's accuracy);
- the **lexical baseline** ``lexical`` = the larger of ``embed_probe`` (a logistic probe on the embedding at the
  last subject token, ``blocks.0.hook_resid_pre``, before any block) and ``bag_of_tokens`` (a logistic
  regression on the counts of the subject's tokens, which sees every subject token, not only the last);
- ``best_probe`` and ``best_layer``: the highest held-out accuracy of the same probe on ``resid_post`` of any
  layer, full prompt at the last subject token (the probe localizer's curve);
- ``lookup_gain`` = ``best_probe − lexical`` and ``looked_up`` = ``lookup_gain >= margin`` (default 0.2).

All accuracies are on the same seeded stratified held-out split (``test_size``). A relation that cannot be
probed (too few known facts or classes) gets ``note`` and no numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from tqdm.auto import tqdm

from mechedit.facts import FactError, FactSet
from mechedit.localize.probe import probe_curves, select_facts
from mechedit.scoring import known_facts
from patching.model import Model
from probes import stratified_split

LOOKUP_MARGIN = 0.2  # best probe above the lexical baseline by this much: the answer is looked up, not read off


@dataclass
class RelationProfile:
    """One relation's facts, classes, lexical baseline and best probe (module docstring); ``note`` if not probed."""

    relation: str
    n_facts: int
    n_known: int
    n_classes: int = 0
    majority: float | None = None
    embed_probe: float | None = None
    bag_of_tokens: float | None = None
    lexical: float | None = None
    best_probe: float | None = None
    best_layer: int | None = None
    lookup_gain: float | None = None
    looked_up: bool | None = None
    n_test: int = 0
    note: str | None = None

    def to_dict(self) -> dict:
        """JSON-serializable dict."""
        return asdict(self)


def bag_of_tokens_accuracy(tokenizer, subjects: list[str], labels: np.ndarray, train: np.ndarray,
                           test: np.ndarray, C: float = 1.0) -> float:
    """Held-out accuracy of a logistic regression on the counts of each subject's tokens (a lexical shortcut)."""
    rows = tokenizer([" " + s for s in subjects], add_special_tokens=False)["input_ids"]
    vocab = {t: i for i, t in enumerate(sorted({t for r in rows for t in r}))}
    X = np.zeros((len(rows), len(vocab)), dtype=np.float32)
    for i, r in enumerate(rows):
        for t in r:
            X[i, vocab[t]] += 1.0
    clf = LogisticRegression(C=C, max_iter=2000).fit(X[train], labels[train])
    return float((clf.predict(X[test]) == labels[test]).mean())


def profile_relation(model: Model, known: FactSet, relation: str, n_facts: int, *, seed: int = 0,
                     min_class_size: int = 8, test_size: float = 0.25, margin: float = LOOKUP_MARGIN,
                     progress: bool = False) -> RelationProfile:
    """The profile of one relation from the facts ``model`` knows (``known``; ``n_facts`` before the filter)."""
    n_known = sum(f.relation == relation for f in known)
    out = RelationProfile(relation, n_facts, n_known)
    try:
        chosen, _, _ = select_facts(known, relation, min_class_size)
        labels = np.array([f.answer for f in chosen])
        train, test = (t.numpy() for t in stratified_split(labels, test_size=test_size, seed=seed))
    except (FactError, ValueError) as exc:
        out.note = " ".join(str(exc).split())
        return out
    curves = probe_curves(model, chosen, seed=seed, test_size=test_size, progress=progress)
    curve = curves.accuracy["full"]
    out.n_classes, out.majority, out.n_test = len(curves.classes), curves.chance, curves.n_test
    out.embed_probe = curves.embed_accuracy["full"]
    out.bag_of_tokens = bag_of_tokens_accuracy(model.tokenizer, [f.subject for f in chosen], labels, train, test)
    out.lexical = max(out.embed_probe, out.bag_of_tokens)
    out.best_layer = int(np.argmax(curve))
    out.best_probe = float(curve[out.best_layer])
    out.lookup_gain = out.best_probe - out.lexical
    out.looked_up = bool(out.lookup_gain >= margin)
    return out


def profile_relations(model: Model, facts: FactSet, *, seed: int = 0, min_class_size: int = 8,
                      min_known: int = 24, test_size: float = 0.25, margin: float = LOOKUP_MARGIN,
                      progress: bool = True) -> list[RelationProfile]:
    """Profile every relation of ``facts`` on ``model`` (module docstring), largest relation first.

    Relations with fewer than ``min_known`` known facts are listed with a note, not probed (a probe on a handful
    of facts has an interval too wide to choose by)."""
    sizes = {r: len(g) for r, g in facts.by_relation().items()}
    known = known_facts(model, facts, progress=progress)
    out = []
    for relation in tqdm(sorted(sizes, key=lambda r: -sizes[r]), desc="profiling relations", disable=not progress):
        n_known = sum(f.relation == relation for f in known)
        if n_known < min_known:
            out.append(RelationProfile(relation, sizes[relation], n_known,
                                       note=f"{n_known} known fact(s), fewer than {min_known}: not probed"))
            continue
        out.append(profile_relation(model, known, relation, sizes[relation], seed=seed,
                                    min_class_size=min_class_size, test_size=test_size, margin=margin))
    return out
