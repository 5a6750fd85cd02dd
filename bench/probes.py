"""Benchmark: all-layer probes (one-pass gathering + batched probe fit) vs full cache + one sklearn fit per layer.

On smollm2-135m with 512 CounterFact facts it knows (answers with >= ``--min-class`` known facts; fewer facts
if not enough, the count is printed): probe the true answer at the last subject token on ``resid_post`` of
every layer.

- (a) baseline, as the reference research code: ``run_with_cache`` without ``names_filter`` per batch, pick
  the positions, then ``StandardScaler`` + ``sklearn LogisticRegression(C=1)`` per layer.
- (b) mechedit: ``probes.collect_activations`` (gathering inside hooks, stops after the last hook) +
  ``probes.LogisticProbe`` (all layers at once).
- (c) floor: one filtered forward pass (``run_with_cache`` with ``names_filter`` = the 30 hooks, full
  [batch, pos, d] kept) over the same batches, plus (b)'s fit time. A plain forward (no cache) is shown too.

Targets: (a)/(b) >= 5 and (b)/(c) <= 1.3. Medians of ``--repeats`` runs; the baseline is slow, so it runs
``--baseline-repeats`` times (default 1) — the output says so. Known facts are cached per model fingerprint
under the mechedit cache (scoring 2,189 facts is itself a few minutes). Run: ``.venv/bin/python bench/probes.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import fields
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # this file is named probes.py: import the package
sys.path.insert(1, str(Path(__file__).resolve().parent))  # for _timing

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _timing import parser, timed  # noqa: E402

from mechedit import scoring  # noqa: E402
from mechedit.cache import cache_dir  # noqa: E402
from mechedit.facts import Fact, FactSet, load_facts  # noqa: E402
from mechedit.models import fingerprint, load_model  # noqa: E402
from mechedit.tokens import encode, validate_facts  # noqa: E402
from patching.model import arch  # noqa: E402
from probes import LogisticProbe, collect_activations, layer_hooks, stratified_split  # noqa: E402


def known_facts(model, name: str) -> FactSet:
    """Facts of ``name`` the model knows, cached per model fingerprint."""
    path = cache_dir() / "bench" / f"known-{name}-{fingerprint(model)}.jsonl"
    if path.exists():
        keys = {f.name for f in fields(Fact)}
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return FactSet([Fact(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items() if k in keys})
                        for r in rows], name=f"{name}:known")
    t0 = time.perf_counter()
    known = scoring.known_facts(model, validate_facts(model.tokenizer, load_facts(name), on_collision="drop"))
    print(f"scored {name} for known facts in {time.perf_counter() - t0:.0f} s (cached at {path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    known.to_jsonl(path)
    return known


def select(known: FactSet, n: int, min_class: int, seed: int) -> FactSet:
    """Up to ``n`` facts (one per subject) whose answers have >= ``min_class`` facts in the selection."""
    seen, unique = set(), []
    for f in known.shuffled(seed):
        if f.subject not in seen:
            seen.add(f.subject)
            unique.append(f)
    eligible = unique
    while True:  # cutting to n can push a class below min_class: drop such classes and refill
        counts = Counter(f.answer for f in eligible[:n])
        keep = [f for f in eligible if counts[f.answer] >= min_class]
        if len(keep) == len(eligible):
            return known.subset(eligible[:n])
        eligible = keep


def main() -> None:
    p = parser(__doc__, n_facts=512)
    p.add_argument("--min-class", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--baseline-repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    facts = select(known_facts(model, args.facts), args.n_facts, args.min_class, seed=0)
    short = f"fewer than the {args.n_facts} requested" if len(facts) < args.n_facts else "as requested"
    print(f"{len(facts)} known facts ({short}), {len(set(f.answer for f in facts))} answers, "
          f"relations {sorted(set(f.relation for f in facts))}")
    batch = encode(model.tokenizer, [f.render() for f in facts], [f.subject for f in facts])
    hooks = layer_hooks(model)
    labels = np.array([f.answer for f in facts])
    train, test = stratified_split(labels, test_size=0.25, seed=0)
    chunks = [(s, min(s + args.batch_size, len(facts))) for s in range(0, len(facts), args.batch_size)]
    rows = torch.arange(len(facts))
    print(f"{len(hooks)} hooks, {len(chunks)} batches of {args.batch_size}, {len(train)} train / {len(test)} test, "
          f"{args.threads} torch threads")

    def trimmed(s: int, e: int):
        sub = batch.slice(s, e)
        return sub.input_ids, sub.attention_mask, sub.subject_last

    # ---------------------------------------------------------------- (a) baseline
    def baseline():
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        t0 = time.perf_counter()
        X = torch.empty(len(hooks), len(facts), arch(model).d_model)
        for s, e in chunks:
            ids, mask, pos = trimmed(s, e)
            _, cache = model.run_with_cache(ids, attention_mask=mask)
            for h, name in enumerate(hooks):
                X[h, s:e] = cache[name][rows[: e - s], pos]
            del cache
        t_collect = time.perf_counter() - t0
        acc = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for h in range(len(hooks)):
                scaler = StandardScaler().fit(X[h, train].numpy())
                clf = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(X[h, train].numpy()), labels[train])
                acc.append(clf.score(scaler.transform(X[h, test].numpy()), labels[test]))
        return t_collect, np.array(acc)

    # ---------------------------------------------------------------- (b) mechedit
    def ours():
        t0 = time.perf_counter()
        X = collect_activations(model, batch.input_ids, batch.attention_mask, batch.subject_last, hooks,
                                batch_size=args.batch_size, progress=False)
        t_collect = time.perf_counter() - t0
        t1 = time.perf_counter()
        probe = LogisticProbe(C=1.0).fit(X[:, train], labels[train])
        acc = probe.score(X[:, test], labels[test])
        return t_collect, time.perf_counter() - t1, acc

    # ---------------------------------------------------------------- (c) floors
    def filtered_forward():
        names = set(hooks)
        for s, e in chunks:
            ids, mask, _ = trimmed(s, e)
            model.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n in names)

    @torch.no_grad()
    def plain_forward():
        for s, e in chunks:
            ids, mask, _ = trimmed(s, e)
            model(ids, attention_mask=mask)

    def stage(what, fn, repeats):
        out = timed(fn, repeats)
        print(f"  {what}: {', '.join(f'{x:.1f}' for x in out[1])} s", flush=True)
        return out

    stage("warm-up (mechedit)", ours, 1)  # first-call overheads, lazy imports
    t_b, times_b, (tb_collect, tb_fit, acc_b) = stage("(b) mechedit", ours, args.repeats)
    t_filtered, times_filtered, _ = stage("filtered forward", filtered_forward, args.repeats)
    t_plain, times_plain, _ = stage("plain forward", plain_forward, args.repeats)
    t_a, times_a, (ta_collect, acc_a) = stage("(a) baseline", baseline, args.baseline_repeats)
    t_c = t_filtered + tb_fit

    diff = acc_b - acc_a
    print(f"\n{'layer':>5} {'sklearn acc':>11} {'mechedit acc':>12} {'diff':>7}")
    for layer in range(len(hooks)):
        print(f"{layer:>5} {acc_a[layer]:>11.3f} {acc_b[layer]:>12.3f} {diff[layer]:>+7.3f}")
    print(f"max |accuracy difference| over layers: {np.abs(diff).max():.3f}")
    print(f"\n{'what':<52} {'median s':>9}  runs")
    table = [
        (f"(a) baseline: full run_with_cache + sklearn x{len(hooks)}", t_a, times_a),
        ("    of which full-cache collection", ta_collect, [ta_collect]),
        ("(b) mechedit: collect_activations + LogisticProbe", t_b, times_b),
        ("    of which collection (last run)", tb_collect, [tb_collect]),
        ("    of which fit + score (last run)", tb_fit, [tb_fit]),
        ("(c) filtered run_with_cache + (b)'s fit", t_c, times_filtered),
        ("    plain forward (no cache)", t_plain, times_plain),
    ]
    for what, t, ts in table:
        print(f"{what:<52} {t:>9.2f}  {', '.join(f'{x:.1f}' for x in ts)}")
    if args.baseline_repeats < 3:
        print(f"note: the baseline ran {args.baseline_repeats}x (slow); mechedit and floors are medians of "
              f"{args.repeats}")
    print(f"\nratio baseline/mechedit: {t_a / t_b:.1f}x faster (target >= 5x); "
          f"mechedit/(filtered forward + fit): {t_b / t_c:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
