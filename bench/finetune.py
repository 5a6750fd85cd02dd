"""Benchmark: localized vs nonlocalized fine-tuning of SmolLM2-135M with the same data and steps.

Localized = a few early MLP layers (default MLPs 2-5, the fact-lookup range used for the README's SmolLM2 edit;
``--probe`` runs the probe localizer instead, cut to the same 4-MLP parameter budget: on P103 its accuracy curve
is already at 0.8 on the embeddings (names reveal the language), so the unbudgeted rule picks MLPs 0-23 and the
localizer takes ~5 min here); nonlocalized = every MLP and attention layer (embeddings, norms and unembedding
stay frozen in both). Both run ``mechedit.edit.edit`` with the same EditConfig on the same 16
CounterFact edits (known facts of one relation, the rest of the relation as maintain facts).

Measured, each configuration in its own subprocess (so memory numbers are its own), configurations alternating
over ``--rounds`` rounds:
- step time: wall time of one optimizer step (forward, backward, clip, AdamW); median over all steps but the
  first of each run (≥3 repeats per configuration);
- optimizer-state bytes: the tensors AdamW holds (exp_avg, exp_avg_sq, step) after training;
- prefix cache: one-time cost of caching the residual stream entering the earliest trained layer (training
  forwards start there, ``mechedit.edit.prefix``); reported, not included in the step time;
- peak RSS of the edit: the process's resident-set high-water mark during ``edit`` (reset through
  /proc/self/clear_refs just before it) minus the RSS before it: gradients, optimizer state, the originals
  kept for revert, activations. Falls back to ru_maxrss (whole process) where clear_refs is not allowed.

Usage: python bench/finetune.py [--steps 4] [--rounds 2] [--threads 1] [--relation P103]
       [--probe | --localization loc.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# run as a script, this directory comes first on sys.path and bench/patching.py would shadow the patching package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

N_EDITS = 16
FIXED_LAYERS = (2, 3, 4, 5)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(args) -> None:
    """Run one configuration and print a JSON line with its measurements."""
    import torch

    from mechedit.components import MLP, Attn
    from mechedit.edit import EditConfig, edit
    from mechedit.facts import load_facts
    from mechedit.localize.localization import Localization, make_localization
    from mechedit.models import load_model
    from mechedit.tokens import validate_facts
    from patching.model import arch

    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m")
    subjects = set(json.loads(Path(args.facts).read_text()))
    rel = validate_facts(model.tokenizer, load_facts("counterfact"), on_collision="drop").by_relation()[args.relation]
    facts = rel.subset([f for f in rel if f.subject in subjects]).mark_forget(N_EDITS, seed=0)
    if args.worker == "localized":
        loc = Localization.load(args.localization)
    else:
        layers = range(arch(model).n_layers)
        loc = make_localization(model, "nonlocalized", [c for i in layers for c in (Attn(i), MLP(i))])
    cfg = EditConfig(steps=args.steps)
    rss_before = _status_kb("VmRSS")
    exact_peak = _reset_peak()
    t0 = time.perf_counter()
    result = edit(model, facts, loc, "edit", cfg, progress=False)
    wall = time.perf_counter() - t0
    peak = _status_kb("VmHWM") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "config": args.worker, "components": [str(c) for c in loc.components][:8], "n_components": len(loc.components),
        "n_params_trained": result.n_params_trained, "step_times": result.extra["step_times_s"][1:],
        "optimizer_state_bytes": result.extra["optimizer_state_bytes"], "rss_before_kb": rss_before,
        "peak_kb": peak, "exact_peak": exact_peak, "wall_s": wall, "prefix_cache_s": result.extra["prefix_cache_s"],
        "from_first_trained_layer": result.extra["forward_from_first_trained_layer"],
        "final": result.final_losses(),
    }))


def prepare(args, workdir: Path) -> tuple[Path, Path, str]:
    """Known facts of one relation (CSV) and the localized configuration's loc.json."""
    import torch

    from mechedit.components import MLP
    from mechedit.facts import load_facts
    from mechedit.localize.localization import Localization, make_localization
    from mechedit.models import load_model
    from mechedit.scoring import known_facts
    from mechedit.tokens import validate_facts

    torch.set_num_threads(args.threads)
    model = load_model("smollm2-135m")
    facts = validate_facts(model.tokenizer, load_facts("counterfact"), on_collision="drop")
    rel = known_facts(model, facts.by_relation()[args.relation], batch_size=64)
    facts_csv = workdir / "known_subjects.json"  # (FactSet.to_csv cannot round-trip paraphrases containing '|')
    facts_csv.write_text(json.dumps([f.subject for f in rel]))
    loc_path = workdir / "loc.json"
    if args.localization:
        Localization.load(args.localization).save(loc_path)
        how = f"from {args.localization}"
    else:
        fixed = make_localization(model, "fixed", [MLP(layer) for layer in FIXED_LAYERS])
        loc, how = fixed, "fixed MLP layers"
        if args.probe:
            from mechedit.localize import localize

            loc = localize(model, rel, "probe", budget=fixed.n_params, progress=False)
            how = "probe localizer (4-MLP budget)"
        loc.save(loc_path)
    return facts_csv, loc_path, how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--relation", default="P103")
    parser.add_argument("--localization", default=None, help="use this loc.json instead of the probe localizer")
    parser.add_argument("--probe", action="store_true", help="localize with the probe localizer (slow)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1: best on a busy machine)")
    parser.add_argument("--worker", choices=["localized", "nonlocalized"], help=argparse.SUPPRESS)
    parser.add_argument("--facts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.steps < 4:
        parser.error("--steps must be >= 4 (the first step is warm-up; need >= 3 timed repeats)")

    with tempfile.TemporaryDirectory() as tmp:
        facts_csv, loc_path, how = prepare(args, Path(tmp))
        runs: dict[str, list[dict]] = {"localized": [], "nonlocalized": []}
        for r in range(args.rounds):
            for config in ("localized", "nonlocalized"):
                cmd = [sys.executable, __file__, "--worker", config, "--facts", str(facts_csv), "--localization",
                       str(loc_path), "--steps", str(args.steps), "--threads", str(args.threads),
                       "--relation", args.relation]
                out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
                if out.returncode != 0:
                    sys.exit(f"{config} run failed:\n{out.stderr[-3000:]}")
                runs[config].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1}/{args.rounds} {config}: {runs[config][-1]['wall_s']:.1f} s", file=sys.stderr)

    rows = {}
    for config, rs in runs.items():
        times = [t for r in rs for t in r["step_times"]]
        rows[config] = {
            "components": rs[0]["n_components"], "params": rs[0]["n_params_trained"],
            "step_s": statistics.median(times), "n_steps_timed": len(times),
            "opt_mb": rs[0]["optimizer_state_bytes"] / 2**20,
            "peak_mb": statistics.median((r["peak_kb"] - r["rss_before_kb"]) / 1024 for r in rs),
            "exact_peak": all(r["exact_peak"] for r in rs),
            "setup_s": statistics.median(r["prefix_cache_s"] for r in rs),
        }
    print(f"SmolLM2-135M, {N_EDITS} CounterFact edits ({args.relation}), {args.steps} steps x {args.rounds} rounds; "
          f"localized = {how}: {runs['localized'][0]['components']}")
    header = f"{'config':<14}{'components':>11}{'params trained':>16}{'step s (median)':>17}{'timed':>7}" \
             f"{'optimizer MB':>14}{'edit peak RSS MB':>18}{'prefix cache s':>16}"
    print(header)
    print("-" * len(header))
    for config, row in rows.items():
        print(f"{config:<14}{row['components']:>11}{row['params']:>16,}{row['step_s']:>17.3f}{row['n_steps_timed']:>7}"
              f"{row['opt_mb']:>14.1f}{row['peak_mb']:>18.1f}{row['setup_s']:>16.1f}")
    if not all(r["exact_peak"] for r in rows.values()):
        print("note: /proc/self/clear_refs not writable; peak RSS is the whole process's ru_maxrss")
    loc, non = rows["localized"], rows["nonlocalized"]
    print(f"ratio localized/nonlocalized: step time {loc['step_s'] / non['step_s']:.2f} (target <= 0.5), "
          f"optimizer memory {loc['opt_mb'] / non['opt_mb']:.3f} (target <= 0.3), "
          f"edit peak RSS {loc['peak_mb'] / non['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
