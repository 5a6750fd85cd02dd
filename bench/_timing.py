"""Timing helper shared by the benchmarks (run as scripts: ``python bench/NAME.py``)."""

from __future__ import annotations

import argparse
import statistics
import time


def parser(doc: str, n_facts: int) -> argparse.ArgumentParser:
    """The options every model benchmark takes: --model, --facts, --n-facts, --repeats."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--facts", default="counterfact")
    p.add_argument("--n-facts", type=int, default=n_facts)
    p.add_argument("--repeats", type=int, default=3)
    return p


def timed(fn, repeats: int):
    """(median seconds, all times, last result) over ``repeats`` calls of ``fn``."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out
