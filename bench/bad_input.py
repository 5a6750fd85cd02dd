"""Benchmark: refusing oversized input costs what importing mechedit costs, not what scoring it would.

Runs ``mechedit edit factworld FILE`` in a subprocess on (a) a 64-fact factworld CSV whose second fact's subject is
``--chars`` characters long (the size limit must refuse it before any model is loaded or any text tokenized) and
(b) ``mechedit facts factworld`` on the same CSV without the long subject (a normal run, as the baseline).
Reports wall time and peak RSS of each child process; target: (a) exits 2 within a few seconds with an RSS no
larger than (b)'s. Run: ``.venv/bin/python bench/bad_input.py``.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from mechedit.components import MLP  # noqa: E402
from mechedit.facts import load_facts  # noqa: E402

CLI = "import sys; from mechedit.cli import main; sys.argv[0] = 'mechedit'; main()"


def run(args: list[str], cwd: Path) -> tuple[int, float, float, str]:
    """(exit status, wall seconds, peak RSS in MB of this child, last stderr line) of one CLI run."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "HF_HUB_OFFLINE": "1"}
    with open(cwd / "stdout.txt", "w") as out, open(cwd / "stderr.txt", "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CLI, *args], cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    lines = (cwd / "stderr.txt").read_text().strip().splitlines()
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 1024, lines[-1] if lines else ""


def main() -> None:
    """Write the two CSVs, run both commands, print the table and the ratio line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chars", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        fs = load_facts("factworld").by_relation()["sport"]
        fs.subset(fs.facts[:64]).to_csv(d / "ok.csv")
        rows = list(csv.DictReader(open(d / "ok.csv", newline="")))
        rows[1]["subject"] = "X" * args.chars
        with open(d / "big.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        from mechedit.localize.localization import Localization

        Localization("manual", [MLP(1)]).save(d / "loc.json")
        big = run(["edit", "factworld", "big.csv", "--localization", "loc.json", "--out", "ed"], d)
        ok = run(["facts", "factworld", "ok.csv"], d)
        assert not (d / "ed").exists(), "the refused edit wrote its output"
    print(f"{'run':<44} {'exit':>4} {'wall s':>7} {'peak RSS MB':>12}")
    print(f"{f'edit, {args.chars:,}-character subject (refused)':<44} {big[0]:>4} {big[1]:>7.1f} {big[2]:>12.0f}")
    print(f"{'facts, same CSV without it (baseline)':<44} {ok[0]:>4} {ok[1]:>7.1f} {ok[2]:>12.0f}")
    print(f"refusal message: {big[3]}")
    print(f"ratio refused/baseline: wall {big[1] / ok[1]:.2f}, peak RSS {big[2] / ok[2]:.2f} "
          f"(maxrss of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
