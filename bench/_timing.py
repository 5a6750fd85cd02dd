"""Timing helper shared by the benchmarks (run as scripts: ``python bench/NAME.py``)."""

from __future__ import annotations

import statistics
import time


def timed(fn, repeats: int):
    """(median seconds, all times, last result) over ``repeats`` calls of ``fn``."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out
