"""Relation profiles: a planted lexical leak is caught by the bag-of-tokens baseline; factworld's facts are looked up.

Planted truths, thresholds set before the first run: (1) when each subject contains its answer's own word, the
bag-of-tokens classifier reads the answer off the subject (held-out accuracy 1.0 by construction), and when
subjects are unrelated random names it is near the majority share; (2) factworld's subjects are random
syllable names whose attributes exist only in the training data, so no relation can be read off the subject:
the lexical baseline stays near the majority share and the best layer's probe is far above it.
"""

from __future__ import annotations

import random

import numpy as np
from typer.testing import CliRunner

from mechedit.cli import app
from mechedit.localize.profile import bag_of_tokens_accuracy, profile_relations
from probes import stratified_split


def _split(labels):
    return (t.numpy() for t in stratified_split(labels, test_size=0.25, seed=0))


def test_bag_of_tokens_reads_a_planted_leak_and_not_random_names(factworld):
    tok = factworld.tokenizer
    rng = random.Random(0)
    answers = ["ka", "lo", "mi", "nu"]
    labels = np.array([answers[i % 4] for i in range(80)])
    names = ["".join(rng.choice("bdfgprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(80)]
    leaky = [f"{n} {a}" for n, a in zip(names, labels, strict=True)]
    train, test = _split(labels)
    assert bag_of_tokens_accuracy(tok, leaky, labels, train, test) == 1.0
    plain = bag_of_tokens_accuracy(tok, names, labels, train, test)
    assert plain <= 0.5, plain  # majority 0.25; 20 test names, so well below a leak's 1.0


def test_factworld_relations_are_looked_up_not_read_off(factworld, world_facts):
    facts = world_facts.subset([f for f in world_facts if f.relation in ("sport", "instrument")])
    profiles = {p.relation: p for p in profile_relations(factworld, facts, progress=False)}
    for p in profiles.values():
        assert p.note is None and p.n_known >= 300
        assert p.lexical <= p.majority + 0.15, p
        assert p.best_probe >= 0.9 and p.looked_up, p


def test_profile_cli_refuses_other_options():
    res = CliRunner().invoke(app, ["facts", "factworld", "factworld", "--profile", "--known-only"])
    assert res.exit_code == 2 and "--profile takes no" in res.output
