"""Benchmark: `compare` cells on SmolLM2-135M at 32 facts, split by stage, against a pinned older commit in the
same run.

Each path runs ``mechedit.compare.compare`` exactly as a user does, in its own subprocess, with the settings of
the paper preset (30 edit steps, 32 maintain facts, LoRA relearning, latent probes, diagnostics) but one seed
and two methods (default: probe, then path — the two fact-lookup localizers): the first cell of a seed
also does the work every method of that seed shares (the original model's behaviour and MCQ shot choice, and on
the current code its features, probes, Fisher diagonal and fluency log-probabilities, ``OriginalMemo``); the
second cell is what every further method of a seed costs. The baseline is the code at ``--baseline`` (default
dff4067, before packed forwards and the shared original-model results), checked out in a temporary git worktree.

Printed: the stage table of both cells for both paths (localize, edit, then evaluate's stages: behaviour,
original behaviour, fluency, relearn, latent, diagnostics, other), the metrics of both paths side by side (exact,
or the paired difference's 95 % CI over facts, which must contain 0; one-number-per-run columns must be exact or
inside the baseline's own interval where it has one), and a final ratio line: baseline seconds / current seconds
for the second cell (a cell of a running comparison).

Measured (2-core CPU, against dff4067, same run): further cell (path) 303 s -> 150 s (2.02x), first cell of a
seed (probe) 303 s -> 158 s (1.93x); every summary metric of both cells exact, fluency KL equal to float rounding.
The ratio moves by a few percent between runs on a shared machine. Causal tracing's localization (ROME tracing of
32 facts, 10 draws) was ~158 s per seed at the time of that measurement; it now runs packed and resumes each
restored run at its window (34.5 s -> 20.8 s at 2 draws on the same facts).

Usage: python bench/compare.py [--baseline COMMIT] [--methods probe,path] [--relation P37]
       [--n-facts 32] [--current-only]
Takes ~20 min on 2 cores (the baseline's two cells are ~12 of them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

# run as a script, this directory comes first on sys.path and bench/patching.py would shadow the patching package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

REPO = Path(__file__).resolve().parent.parent
BASELINE = "dff4067"
STAGES = ("localize", "edit", "behaviour", "original_behaviour", "fluency", "relearn", "latent", "diagnostics")


def worker(args) -> None:
    """Run compare under the code at ``args.root`` and write each cell's stage times and metrics as JSON."""
    sys.path.insert(0, str(Path(args.root).resolve()))
    import mechedit  # noqa: F401  (imported from args.root)
    from mechedit.compare import CompareSettings, compare

    assert Path(sys.modules["mechedit"].__file__).resolve().is_relative_to(Path(args.root).resolve())
    settings = CompareSettings(**json.loads(args.settings))
    t0 = time.perf_counter()
    summary = compare(settings, progress=False)
    cells = []
    for r in summary.runs:
        timings = r.metrics["extra"]["timings_s"]
        stages = {"localize": r.seconds["localize"], "edit": r.seconds["edit"]}
        stages.update({k: timings.get(k, 0.0) for k in STAGES[2:]})
        stages["other"] = r.seconds["evaluate"] - sum(timings.get(k, 0.0) for k in STAGES[2:])
        cells.append({"method": r.method, "stages": stages, "total": sum(r.seconds.values()),
                      "metrics": r.metrics})
    Path(args.out).write_text(json.dumps({"cells": cells, "elapsed": time.perf_counter() - t0}))


def paper_cell(args) -> dict:
    """The paper preset's settings with one seed and the benchmark's methods (passed to both paths as plain
    fields, so the baseline needs no preset support)."""
    from mechedit.compare import CompareSettings, apply_preset

    s = apply_preset(CompareSettings(model="smollm2-135m", facts="counterfact", relation=args.relation), "paper")
    return {**asdict(s), "methods": args.methods.split(","), "n_facts": args.n_facts, "seeds": 1}


def run_path(name: str, root: Path, args, out: Path) -> dict:
    """One path in a fresh subprocess (so each has its own memory and threads)."""
    print(f"running {name} ({root}) ...", flush=True)
    cmd = [sys.executable, __file__, "--worker", "--root", str(root), "--out", str(out),
           "--settings", json.dumps(paper_cell(args))]
    subprocess.run(cmd, check=True, cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.read_text())


def metric_rows(old: dict, new: dict) -> list[tuple[str, str, str, str]]:
    """(column, baseline, current, agreement) for the summary columns of one cell."""
    from mechedit.compare import COLUMNS, run_values
    from mechedit.stats import paired_difference

    rows = []
    for _, key in COLUMNS:
        a, b = old.get(key), new.get(key)
        if a is None and b is None:
            continue
        fmt = (lambda v: "-" if v is None else f"{v:.3f}")
        if a == b:
            status = "exact"
        else:
            va, unit = run_values(old, key)
            vb, _ = run_values(new, key)
            if unit != "runs" and set(va) == set(vb):
                iv = paired_difference({(0, k): v for k, v in vb.items()}, {(0, k): v for k, v in va.items()})
                ok = iv.low is not None and iv.low <= 0 <= iv.high
                status = f"diff {iv.mean:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}] {'ok' if ok else 'DIFFERS'}"
            else:
                ci = (old.get("relearn_recovery_ci") or {}) if key == "relearn_accuracy" else {}
                status = f"diff {b - a:+.3f} (one number per run)" if a is not None and b is not None else "DIFFERS"
                if ci:
                    status += f"; baseline recovery CI [{ci['low']:.2f}, {ci['high']:.2f}]"
        rows.append((key, fmt(a), fmt(b), status))
    rows.append(("verdict", str(old.get("verdict")), str(new.get("verdict")),
                 "exact" if old.get("verdict") == new.get("verdict") else "DIFFERS"))
    return rows


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    line = lambda r: "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)  # noqa: E731
                               for i, (x, w) in enumerate(zip(r, widths, strict=True)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default=BASELINE, help="commit to compare against (checked out in a worktree)")
    p.add_argument("--methods", default="probe,path", help="two methods: the first warms the seed")
    p.add_argument("--relation", default="P37")
    p.add_argument("--n-facts", type=int, default=32)
    p.add_argument("--current-only", action="store_true", help="time the current code only (no ratio)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results = {}
        if not args.current_only:
            tree = tmp / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.baseline],
                           check=True, capture_output=True)
            try:
                results["baseline"] = run_path(f"baseline {args.baseline}", tree, args, tmp / "baseline.json")
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        results["current"] = run_path("current", REPO, args, tmp / "current.json")
    names = list(results)
    n_cells = len(results["current"]["cells"])
    for c in range(n_cells):
        method = results["current"]["cells"][c]["method"]
        kind = "first cell of a seed" if c == 0 else "a further cell of the seed"
        print(f"\n# cell {c + 1}: {method} ({kind}), smollm2-135m, CounterFact {args.relation}, {args.n_facts} facts, "
              "seed 0 — seconds per stage")
        rows = []
        for stage in (*STAGES, "other"):
            vals = [results[n]["cells"][c]["stages"][stage] for n in names]
            rows.append([stage, *[f"{v:.1f}" for v in vals]]
                        + ([f"{vals[0] / vals[1]:.2f}x" if vals[1] > 0.05 else "-"] if len(vals) == 2 else []))
        totals = [results[n]["cells"][c]["total"] for n in names]
        rows.append(["total", *[f"{v:.1f}" for v in totals]]
                    + ([f"{totals[0] / totals[1]:.2f}x"] if len(totals) == 2 else []))
        print(table(["stage", *names] + (["ratio"] if len(names) == 2 else []), rows))
        if len(names) == 2:
            print(f"\n# cell {c + 1} metrics: baseline vs current")
            print(table(["column", "baseline", "current", "agreement"],
                        [list(r) for r in metric_rows(results["baseline"]["cells"][c]["metrics"],
                                                      results["current"]["cells"][c]["metrics"])]))
    if len(names) == 2:
        first = [results[n]["cells"][0]["total"] for n in names]
        last = [results[n]["cells"][-1]["total"] for n in names]
        print(f"\nfirst cell of a seed: baseline {first[0]:.0f} s, current {first[1]:.0f} s, "
              f"ratio {first[0] / first[1]:.2f}")
        print(f"ratio (baseline / current seconds, a further cell of a running comparison): {last[0] / last[1]:.2f}")


if __name__ == "__main__":
    main()
