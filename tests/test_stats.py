"""The shared bootstrap: planted means and spreads, pairing, degenerate inputs."""

import numpy as np

from mechedit.stats import Interval, bootstrap_ci, chance_accuracy, majority_chance, normalized, paired_difference


def test_interval_covers_planted_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = bootstrap_ci(rng.binomial(1, 0.3, 20).tolist())
    large = bootstrap_ci(rng.binomial(1, 0.3, 2000).tolist())
    assert large.contains(0.3)
    assert (large.high - large.low) < (small.high - small.low) / 5


def test_two_stage_bootstrap_widens_with_between_seed_spread():
    same = [[0.5] * 10 + [0.6] * 10] * 3
    spread = [[0.1] * 20, [0.5] * 20, [0.9] * 20]
    a, b = bootstrap_ci(same), bootstrap_ci(spread)
    assert b.high - b.low > 5 * (a.high - a.low)
    assert b.sd is not None and abs(b.sd - 0.4) < 1e-9  # sample SD of the seed means


def test_paired_difference_of_identical_methods_contains_zero_and_pairing_removes_shared_variance():
    rng = np.random.default_rng(0)
    keys = [(s, i) for s in range(3) for i in range(16)]
    base = {k: float(rng.random()) for k in keys}
    same = paired_difference(base, dict(base))
    assert same.contains(0.0) and same.mean == 0.0
    shifted = {k: v + 0.05 for k, v in base.items()}
    diff = paired_difference(shifted, base)
    assert abs(diff.mean - 0.05) < 1e-12 and diff.low > 0.0  # unpaired, 0.05 would be lost in fact variance


def test_degenerate_inputs_give_notes_not_crashes():
    assert bootstrap_ci([]).mean is None
    one = bootstrap_ci([0.7])
    assert one.mean == 0.7 and one.low is None and "only 1" in one.note
    assert bootstrap_ci([float("nan"), None, 1.0, 0.0]).n == 2
    assert Interval.from_dict(one.to_dict()) == one
    assert paired_difference({(0, 1): 1.0}, {(0, 2): 0.0}).mean is None


def test_chance_helpers():
    assert chance_accuracy([4, 4, 2]) == (0.25 + 0.25 + 0.5) / 3
    assert majority_chance(["a", "a", "b", "c"]) == 0.5
    assert normalized(0.5, 0.25, 0.75) == 0.5 and normalized(0.5, 0.5, 0.5) is None
