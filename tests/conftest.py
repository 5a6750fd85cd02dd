"""Shared fixtures: one factworld model per session (trained once, cached), SmolLM2 for marked tests.

Tests must never change the session models' weights; a test that edits loads its own copy with
``fresh_factworld()`` (a cached load takes well under a second) or reverts bit-exactly.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def factworld():
    """The factworld bridge (shared; do not modify its weights)."""
    from mechedit.models import load_model

    return load_model("factworld")


@pytest.fixture(scope="session")
def world_facts():
    """Ground truth of factworld: 320 subjects x 3 relations."""
    from mechedit.factworld import factworld_facts

    return factworld_facts()


@pytest.fixture(scope="session")
def sport_facts(world_facts):
    """The factworld sport relation only (4 values)."""
    return world_facts.by_relation()["sport"]


@pytest.fixture()
def fresh_factworld():
    """A factory returning a private factworld copy that a test may modify."""
    from mechedit.models import load_model

    return lambda: load_model("factworld")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (dequantized once and cached); only for tests marked ``smollm2``."""
    from mechedit.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def small_comparison(tmp_path_factory):
    """(output directory, summary) of one small real comparison, run once per session for the compare and report
    tests: 2 seeds x (probe, path, random, nonlocalized), short edits and attacks."""
    from mechedit.compare import CompareSettings, compare

    out = tmp_path_factory.mktemp("compare")
    settings = CompareSettings(model="factworld", facts="factworld", relation="sport",
                               methods=["probe", "path", "random", "nonlocalized"], n_facts=8, seeds=2, steps=20,
                               max_maintain=24, relearn_steps=6)
    return out, compare(settings, out, progress=False)
