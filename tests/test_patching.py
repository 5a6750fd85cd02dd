"""The batched patching functions against one-forward-per-component references, corruptions, bad input."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from patching.activation import activation_patch
from patching.attribution import attribution_patch
from patching.corrupt import Noise, embedding_std, gaussian_noise, random_subject_tokens, subject_mask, swap_subjects
from patching.metrics import answer_prob, logit_diff
from patching.packing import plan
from patching.path import path_patch
from patching.reference import (
    activation_patch_reference,
    attribution_reference,
    path_patch_reference,
    rome_trace_reference,
)
from patching.result import PatchResult, UnchangedMetricWarning
from patching.tracing import causal_trace, noise_seed, rome_trace, window_layers

TOL = 1e-4


@pytest.fixture(scope="module")
def setup(swap_setup):
    """The shared subject-swap patching inputs (tests/conftest.py)."""
    return swap_setup


def _args(s):
    return s.batch.input_ids, s.batch.attention_mask, s.corruption, s.metric


def _close(a: PatchResult, b: PatchResult) -> float:
    assert a.labels == b.labels
    assert abs(a.clean - b.clean) < TOL and abs(a.corrupt - b.corrupt) < TOL
    return max(abs(x - y) for x, y in zip(a.values, b.values, strict=True))


SOME = ["head.0.1", "head.1.2", "head.2.0", "head.3.1", "mlp.0", "mlp.2", "mlp.3"]  # every layer, both kinds


@pytest.mark.parametrize(("direction", "components"), [("denoising", "all"), ("noising", SOME)])
def test_activation_heads_and_mlps_match_reference(factworld, setup, direction, components):
    fast = activation_patch(factworld, *_args(setup), components=components, direction=direction, max_rows=40)
    slow = activation_patch_reference(factworld, *_args(setup), components=components, direction=direction)
    assert len(fast.labels) == (4 * 4 + 4 if components == "all" else len(SOME))
    assert _close(fast, slow) < TOL
    assert max(abs(e) for e in fast.effects) > 0.05  # the patches do something


def test_activation_resid_and_position_mask_match_reference(factworld, setup):
    b = setup.batch
    pos = b.input_ids.shape[1]
    assert len(activation_patch(factworld, *_args(setup), components="resid").labels) == 4 * pos
    resid = [f"resid.{layer}.{p}" for layer, p in [(0, pos - 1), (1, int(b.subject_last[0])), (2, 3), (3, pos - 1)]]
    fast = activation_patch(factworld, *_args(setup), components=resid)
    slow = activation_patch_reference(factworld, *_args(setup), components=resid)
    assert _close(fast, slow) < TOL
    mask = subject_mask(b.subject_start, b.subject_last, b.input_ids.shape[1])
    fast = activation_patch(factworld, *_args(setup), components=["head.0.1", "mlp.0", "mlp.2"], positions=mask,
                            direction="noising")
    slow = activation_patch_reference(factworld, *_args(setup), components=["head.0.1", "mlp.0", "mlp.2"],
                                      positions=mask, direction="noising")
    assert _close(fast, slow) < TOL


@pytest.mark.parametrize(("direction", "senders"), [("noising", "all"), ("denoising", SOME)])
def test_path_direct_matches_reference(factworld, setup, direction, senders):
    fast = path_patch(factworld, *_args(setup), senders=senders, receivers="logits", direction=direction, max_rows=50)
    slow = path_patch_reference(factworld, *_args(setup), senders=senders, receivers="logits", direction=direction)
    assert _close(fast, slow) < TOL
    assert max(abs(e) for e in fast.effects) > 0.05


@pytest.mark.parametrize("inputs", [("q", "k", "v"), ("k",)])
def test_path_to_heads_matches_reference(factworld, setup, inputs):
    receivers = ["head.3.0", "head.3.1", "head.2.2"]
    senders = ["head.0.1", "head.1.3", "head.2.2", "head.3.0", "mlp.0", "mlp.1", "mlp.2", "mlp.3"]
    fast = path_patch(factworld, *_args(setup), senders=senders, receivers=receivers, receiver_inputs=inputs,
                      max_rows=30)
    slow = path_patch_reference(factworld, *_args(setup), senders=senders, receivers=receivers,
                                receiver_inputs=inputs)
    assert _close(fast, slow) < TOL
    scores = fast.scores()
    assert scores["head.3.0"] == 0 and scores["mlp.3"] == 0  # not upstream of any receiver
    assert max(abs(scores[f"mlp.{layer}"]) for layer in range(3)) > 0.01


def test_path_patches_share_one_recording_bit_for_bit(factworld, setup):
    """Recording path_hooks once and path-patching into the logits and then into heads gives exactly the numbers
    of each call recording its own runs; runs of another direction, or missing a hook, are refused."""
    from patching.path import path_hooks
    from patching.runs import make_runs

    runs = make_runs(factworld, *_args(setup), "noising", path_hooks(factworld))
    receivers = ["head.3.0", "head.2.2"]
    for kw in (dict(senders="heads", receivers="logits"), dict(senders="mlps", receivers=receivers)):
        alone = path_patch(factworld, *_args(setup), **kw)
        shared = path_patch(factworld, *_args(setup), **kw, runs=runs)
        assert (shared.values, shared.clean, shared.corrupt) == (alone.values, alone.clean, alone.corrupt)
    with pytest.raises(ValueError, match="direction 'noising'"):
        path_patch(factworld, *_args(setup), senders="mlps", receivers=receivers, direction="denoising", runs=runs)
    few = make_runs(factworld, *_args(setup), "noising", ["blocks.3.hook_resid_post"])
    with pytest.raises(ValueError, match="do not cache 'blocks.0.attn.hook_z'"):
        path_patch(factworld, *_args(setup), senders="heads", receivers="logits", runs=few)


def test_attribution_matches_finite_differences(factworld, setup):
    res = attribution_patch(factworld, *_args(setup), components=SOME, direction="noising")
    base = res.clean
    fd = attribution_reference(factworld, *_args(setup), components=SOME, direction="noising")
    scale = max(abs(x) for x in fd)
    assert scale > 0.1
    assert max(abs((v - base) - d) for v, d in zip(res.values, fd, strict=True)) < 2e-3 * scale + 1e-3
    assert all(p.grad is None for p in factworld.parameters())  # only activation gradients were taken


def test_causal_trace_matches_reference_and_is_seeded(factworld, setup):
    b = setup.batch
    args = (b.input_ids, b.attention_mask, b.subject_start, b.subject_last, setup.answer_ids)
    res = causal_trace(factworld, *args, components=SOME, seed=3)
    noise = gaussian_noise(factworld, b.input_ids, b.subject_start, b.subject_last, seed=noise_seed(3, 0))
    subject_tokens = b.input_ids[subject_mask(b.subject_start, b.subject_last, b.input_ids.shape[1])]
    assert noise.scale == pytest.approx(3 * embedding_std(factworld, subject_tokens))
    assert res.extra["noise_scale"] == pytest.approx(noise.scale)
    slow = activation_patch_reference(factworld, b.input_ids, b.attention_mask, noise, answer_prob(setup.answer_ids),
                                      components=SOME)
    assert _close(res, slow) < TOL
    assert res.clean > res.corrupt  # the noise hurts the true answer
    again = causal_trace(factworld, *args, components=["mlp.2"], seed=3)
    assert abs(again.values[0] - res.values[res.labels.index("mlp.2")]) < 1e-6  # same seed, same noise
    other = causal_trace(factworld, *args, components=["mlp.2"], seed=4)
    assert other.corrupt != pytest.approx(res.corrupt, abs=1e-7)
    two = causal_trace(factworld, *args, components=["mlp.2", "mlp.0"], seed=3, n_samples=2)
    assert two.extra["n_samples"] == 2 and len(two.extra["indirect_effects"]) == 2


def test_corruptions_touch_only_the_subject_and_are_seeded(factworld, setup):
    b = setup.batch
    ids, start, last = b.input_ids, b.subject_start, b.subject_last
    mask = subject_mask(start, last, ids.shape[1])
    swapped, partners = swap_subjects(ids, start, last, seed=5, fallback="random")
    assert torch.equal(swapped[~mask], ids[~mask])
    lonely = [i for i, j in enumerate(partners) if j < 0]
    lengths = (last - start).tolist()
    assert all(lengths.count(lengths[i]) == 1 for i in lonely)  # only rows with a unique subject length
    assert len(lonely) < len(partners) // 2
    if lonely:
        with pytest.raises(ValueError, match=rf"rows \[{lonely[0]}"):
            swap_subjects(ids, start, last, seed=5)
    for i, j in enumerate(partners):
        if j < 0:
            continue
        assert last[j] - start[j] == last[i] - start[i]
        assert torch.equal(swapped[i, start[i]:last[i] + 1], ids[j, start[j]:last[j] + 1])
        assert not torch.equal(ids[i, start[i]:last[i] + 1], ids[j, start[j]:last[j] + 1])
    assert torch.equal(swap_subjects(ids, start, last, seed=5, fallback="random")[0], swapped)
    rnd = random_subject_tokens(ids, start, last, vocab_ids=torch.arange(3, 50), seed=1)
    assert torch.equal(rnd[~mask], ids[~mask]) and bool(((rnd[mask] >= 3) & (rnd[mask] < 50)).all())
    assert torch.equal(rnd, random_subject_tokens(ids, start, last, vocab_ids=torch.arange(3, 50), seed=1))
    one_long = last.clone()
    one_long[0] = start[0] + 7  # a subject length nobody else has
    with pytest.raises(ValueError, match="no other subject of the same token length"):
        swap_subjects(ids, start, one_long.clamp(max=ids.shape[1] - 1), seed=0)
    n = Noise(mask, 0.5, seed=2)
    assert torch.equal(n.sample(8), n.sample(8)) and bool((n.sample(8)[~mask] == 0).all())


@pytest.mark.unchecked
def test_bad_input_is_rejected_with_clear_errors(factworld, setup):
    ids, am, corrupt, metric = _args(setup)
    with pytest.raises(ValueError, match="corrupted input_ids have shape"):
        activation_patch(factworld, ids, am, corrupt[:, 1:], metric)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        path_patch(factworld, ids, am[:-1], corrupt, metric)
    with pytest.raises(ValueError, match="metric must return a scalar"):
        activation_patch(factworld, ids, am, corrupt, lambda logits: logits[:, 0], components=["mlp.0"])
    with pytest.raises(ValueError, match="layer 7 out of range"):
        activation_patch(factworld, ids, am, corrupt, metric, components=["mlp.7"])
    with pytest.raises(ValueError, match="head 4 out of range"):
        path_patch(factworld, ids, am, corrupt, metric, receivers=["head.3.4"])
    with pytest.raises(ValueError, match="not a head"):
        path_patch(factworld, ids, am, corrupt, metric, receivers=["mlp.3"])
    with pytest.raises(ValueError, match="direction"):
        attribution_patch(factworld, ids, am, corrupt, metric, direction="sideways")
    with pytest.raises(ValueError, match="noise positions have shape"):
        activation_patch(factworld, ids, am, Noise(torch.ones(2, 2, dtype=torch.bool), 1.0), metric)
    with pytest.raises(ValueError, match="same length"):
        logit_diff(torch.tensor([1, 2]), torch.tensor([1]))


def test_unchanged_corruption_warns_instead_of_dividing_by_zero(factworld, setup):
    ids, am, _, metric = _args(setup)
    res = activation_patch(factworld, ids, am, ids.clone(), metric, components=["mlp.1", "head.2.0"])
    with pytest.warns(UnchangedMetricWarning, match="unchanged"):
        effects = res.effects
    assert all(abs(e) < 1e-4 for e in effects)


def test_hooks_removed_and_weights_untouched_even_on_error(factworld, setup, helpers):
    before = helpers.snapshot(factworld)
    ids, am, corrupt, metric = _args(setup)
    calls = []

    def flaky(logits):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("metric failed")
        return metric(logits)

    with pytest.raises(RuntimeError, match="metric failed"):
        path_patch(factworld, ids, am, corrupt, flaky, receivers=["head.3.0"])
    assert all(not hp.fwd_hooks and not hp.bwd_hooks for hp in factworld.hook_dict.values())
    assert not any(b._forward_pre_hooks for b in factworld.blocks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attribution_patch(factworld, ids, am, corrupt, metric, components=["mlp.0"])
    assert all(not hp.fwd_hooks and not hp.bwd_hooks for hp in factworld.hook_dict.values())
    assert helpers.same(factworld, before)


def test_patch_result_json_round_trip(factworld, setup):
    res = path_patch(factworld, *_args(setup), senders="mlps")
    back = PatchResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back == res and back.scores() == res.scores()
    assert back.top(1)[0][0] in res.labels


@pytest.mark.parametrize("window", [10, 2, 1])
def test_rome_trace_matches_full_forward_reference(factworld, setup, window):
    """ROME's window restoration at the last subject token equals one noised full forward per (layer, draw)."""
    b = setup.batch
    args = (b.input_ids, b.attention_mask, b.subject_start, b.subject_last, setup.answer_ids)
    res = rome_trace(factworld, *args, window=window, n_samples=2, seed=7)
    noise = gaussian_noise(factworld, b.input_ids, b.subject_start, b.subject_last)
    slow = rome_trace_reference(factworld, b.input_ids, b.attention_mask, [noise_seed(7, k) for k in range(2)], noise,
                                setup.answer_ids, b.subject_last, window=window)
    assert res.labels == [f"mlp.{i}" for i in range(4)]
    assert max(abs(x - y) for x, y in zip(res.values, slow, strict=True)) < TOL
    assert res.clean > res.corrupt
    if window == 10:  # every layer's window covers the whole 4-layer model: each restores all MLPs at that token
        assert max(res.values) - min(res.values) < 1e-6


def test_rome_trace_runs_only_the_blocks_its_window_can_change(factworld, setup):
    """Each restored run resumes at its window's first block: block i runs once in the clean run, once per draw
    in the corrupted run, and in the restored runs of layers 0..i only (window 1: i + 1 of them)."""
    b = setup.batch
    calls = [0] * len(factworld.blocks)
    handles = [blk.original_component.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, blk in enumerate(factworld.blocks)]
    try:
        rome_trace(factworld, b.input_ids, b.attention_mask, b.subject_start, b.subject_last, setup.answer_ids,
                   window=1, n_samples=1, seed=3)
    finally:
        for h in handles:
            h.remove()
    assert calls == [2 + i + 1 for i in range(len(calls))]
    assert all("forward" not in vars(blk) for blk in factworld.blocks)  # the replay is undone


def test_packing_shares_no_more_than_allowed():
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 9], [5, 6, 7, 10]])
    mask = torch.ones_like(ids)
    assert len(plan(ids, mask).slots) == 4 + 1 + 1  # rows 2 and 3 lay only their last token
    capped = plan(ids, mask, shareable=torch.tensor([3, 1, 3]))
    assert len(capped.slots) == 4 + 3 + 1  # row 2 may share 1 token, row 3 all 3 with the stem (row 1)


def test_rome_window_is_romes():
    """ROME: range(max(0, L - w // 2), min(n, L - (-w // 2))) — window 10 restores L-5 .. L+4."""
    assert list(window_layers(12, 30, 10)) == list(range(7, 17))
    assert list(window_layers(0, 30, 10)) == list(range(0, 5))
    assert list(window_layers(29, 30, 10)) == list(range(24, 30))
    assert list(window_layers(3, 30, 1)) == [3]
    with pytest.raises(ValueError, match="window"):
        window_layers(3, 30, 0)


def test_noise_draws_are_independent_across_seeds():
    """Draw k of seed s never equals a draw of another seed (the old seed + k scheme shared draws)."""
    seeds = {noise_seed(s, k) for s in range(5) for k in range(20)}
    assert len(seeds) == 100
