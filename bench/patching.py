"""Benchmark: batched patching vs a one-forward-per-component loop (as TransformerLens' generic patching does).

On smollm2-135m (30 layers x 9 heads + 30 MLPs) with 32 known CounterFact facts and subject swapping:
per-head + per-MLP activation patching (denoising) and direct-effect path patching (noising, every head
and MLP into the logits). Prints a table (medians over ``--repeats`` runs, max abs difference between the
two implementations) and a final ratio line. Run: ``.venv/bin/python bench/patching.py``.

The loop costs one full forward per component (plus the two cached runs), i.e. 600+ forwards here. On a
loaded 2-core machine that is hours, so by default the loop runs on ``--baseline-sample`` components per
task spread evenly over the layers, and its time is extrapolated linearly:
``t_full = t_sample * (n_components + 2) / (n_sample + 2)`` (each component is exactly one forward; the 2 are
the clean and corrupted caching runs). The difference is measured on the sampled components.
``--baseline-sample 0`` runs the full loop.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _timing import parser, timed  # noqa: E402

from mechedit.facts import load_facts  # noqa: E402
from mechedit.localize.patch_setup import patch_setup  # noqa: E402
from mechedit.models import load_model  # noqa: E402
from mechedit.scoring import known_facts  # noqa: E402
from mechedit.tokens import validate_facts  # noqa: E402
from patching.activation import activation_patch  # noqa: E402
from patching.path import path_patch  # noqa: E402
from patching.reference import activation_patch_reference, path_patch_reference  # noqa: E402


def main() -> None:
    p = parser(__doc__, n_facts=32)
    p.add_argument("--baseline-repeats", type=int, default=None, help="default: --repeats")
    p.add_argument("--baseline-sample", type=int, default=30, help="components per task for the loop (0: all)")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    model = load_model(args.model)
    facts = validate_facts(model.tokenizer, load_facts(args.facts), on_collision="drop")
    known = known_facts(model, facts.sample(6 * args.n_facts, seed=0))
    if len(known) < args.n_facts:
        raise SystemExit(f"only {len(known)} known facts among {6 * args.n_facts} sampled; lower --n-facts")
    setup = patch_setup(model, known, max_facts=args.n_facts, seed=0)
    b = setup.batch
    inputs = (model, b.input_ids, b.attention_mask, setup.corruption, setup.metric)
    print(f"{args.model}: {len(b)} facts, {b.input_ids.shape[1]} columns, corruption {setup.notes}")

    def sample(labels: list[str]) -> list[str]:
        n = args.baseline_sample
        return labels if not n or n >= len(labels) else [labels[i * len(labels) // n] for i in range(n)]

    tasks = {
        "activation (heads+MLPs, denoising)": (
            lambda: activation_patch(*inputs, components="all", direction="denoising"),
            lambda labels: activation_patch_reference(*inputs, components=labels, direction="denoising"),
        ),
        "path direct (heads+MLPs -> logits, noising)": (
            lambda: path_patch(*inputs, senders="all", receivers="logits", direction="noising"),
            lambda labels: path_patch_reference(*inputs, senders=labels, receivers="logits", direction="noising"),
        ),
    }
    rows = []
    for name, (fast, slow) in tasks.items():
        t_fast, all_fast, r_fast = timed(fast, args.repeats)
        labels = sample(r_fast.labels)
        t_slow, all_slow, r_slow = timed(lambda slow=slow, labels=labels: slow(labels),
                                         args.baseline_repeats or args.repeats)
        n, k = len(r_fast.labels), len(labels)
        t_full = t_slow * (n + 2) / (k + 2)
        fast_values = dict(zip(r_fast.labels, r_fast.values, strict=True))
        diff = max(abs(fast_values[lab] - v) for lab, v in zip(r_slow.labels, r_slow.values, strict=True))
        rows.append((name, n, k, t_fast, t_full, diff))
        print(f"  {name}: batched {[round(t, 1) for t in all_fast]} s for {n} components; loop "
              f"{[round(t, 1) for t in all_slow]} s for {k} components -> {t_full:.1f} s for {n}", flush=True)

    print(f"\n{'task':46} {'components':>10} {'loop on':>8} {'batched s':>10} {'loop s':>10} {'speedup':>8} "
          f"{'max |diff|':>11}")
    for name, n, k, tf, ts, d in rows:
        print(f"{name:46} {n:>10} {k:>8} {tf:>10.1f} {ts:>10.1f} {ts / tf:>7.1f}x {d:>11.2e}")
    total_fast, total_slow = sum(r[3] for r in rows), sum(r[4] for r in rows)
    worst = max(r[5] for r in rows)
    sampled = any(r[2] < r[1] for r in rows)
    print(f"\npatching: batched {total_fast:.1f} s vs one-forward-per-component loop {total_slow:.1f} s"
          f"{' (extrapolated from the sampled components)' if sampled else ''} -> {total_slow / total_fast:.1f}x "
          f"faster (target >= 10x); max abs difference {worst:.1e} (target <= 1e-4)")


if __name__ == "__main__":
    main()
