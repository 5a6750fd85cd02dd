"""The path-patching localizer and the baselines (matched budgets, seeds, JSON), on factworld; one smollm2 check."""

from __future__ import annotations

import pytest
import torch

from mechedit.compare import BUDGETED
from mechedit.components import MLP, Attn, Head, n_params, parse_component
from mechedit.localize import localize
from mechedit.localize.localization import Localization, fit_budget
from mechedit.localize.patch_setup import choose_by_fraction, facts_to_localize, patch_setup
from patching.model import arch


@pytest.fixture(scope="module")
def sport_path(factworld, sport_facts):
    return localize(factworld, sport_facts, "path", progress=False, max_facts=48)


@pytest.fixture(scope="module")
def world_sport_path(world_model, factworld, sport_facts, request):
    """The path localization on factworld in each layout (Llama: ``sport_path``; GPT-2: ground truth across
    layouts)."""
    if world_model is factworld:
        return request.getfixturevalue("sport_path")
    return localize(world_model, sport_facts, "path", progress=False, max_facts=48)


def test_path_localizer_finds_extraction_heads_and_feeding_mlps(world_model, world_sport_path):
    loc = world_sport_path
    s = arch(world_model)
    assert loc.method == "path" and loc.components and all(isinstance(c, MLP) for c in loc.components)
    assert set(loc.scores) == {Head(layer, h) for layer in range(s.n_layers) for h in range(s.n_heads)} | {
        MLP(layer) for layer in range(s.n_layers)}
    heads = loc.extra["extraction_heads"]
    assert 1 <= len(heads) <= loc.extra["max_heads"]
    best = max(v for c, v in loc.scores.items() if isinstance(c, Head))
    assert all(loc.scores[parse_component(h)] >= loc.extra["head_fraction"] * best for h in heads)
    last = max(int(h.split(".")[1]) for h in heads)
    # MLPs at or after the last extraction head's layer cannot feed it: they score exactly 0 (no hard-coded layer)
    assert all(loc.scores[MLP(layer)] == 0 for layer in range(last, s.n_layers))
    assert all(c.layer < last for c in loc.components)
    best_mlp = max(loc.scores[MLP(layer)] for layer in range(s.n_layers))
    assert all(loc.scores[c] >= loc.extra["mlp_fraction"] * best_mlp for c in loc.components)
    assert loc.n_params == n_params(world_model, loc.components)
    assert Localization.from_dict(loc.to_dict()).to_dict() == loc.to_dict()


def test_path_mlps_carry_the_fact_at_the_subject(world_model, sport_facts, world_sport_path):
    """Ground truth: with the subject corrupted, restoring a chosen MLP's clean output at the subject tokens
    alone recovers part of the answer (activation patching, denoising)."""
    from patching.activation import activation_patch
    from patching.corrupt import subject_mask

    setup = patch_setup(world_model, sport_facts, max_facts=48, seed=1)
    b = setup.batch
    mask = subject_mask(b.subject_start, b.subject_last, b.input_ids.shape[1])
    res = activation_patch(world_model, b.input_ids, b.attention_mask, setup.corruption, setup.metric,
                           components="mlps", positions=mask, direction="denoising").scores()
    chosen = {str(c) for c in world_sport_path.components}
    assert all(res[c] > 0.1 for c in chosen)  # each chosen MLP's subject-position output matters on its own
    assert sum(res[c] for c in chosen) > 0.2


def test_path_overlaps_probe_range(world_model, sport_facts, world_sport_path):
    """The MLPs feeding the extraction heads overlap the probe's fact-lookup range (failed on world_model v1)."""
    probe = localize(world_model, sport_facts, "probe", progress=False)
    assert set(probe.layers) & set(world_sport_path.layers), (probe.layers, world_sport_path.layers)


def test_ranking_baselines_cut_to_the_path_budget(factworld, sport_facts, sport_path):
    budget = sport_path.n_params
    for method in ("causal-tracing", "attribution", "random"):
        kw = {"n_samples": 1} if method == "causal-tracing" else {}
        loc = localize(factworld, sport_facts, method, budget=budget, progress=False, max_facts=24, **kw) \
            if method != "random" else localize(factworld, sport_facts, method, budget=budget, seed=3)
        assert 0 < loc.n_params <= 1.1 * budget, method
        assert loc.extra["budget"]["target"] == budget and loc.extra["budget"]["within_tolerance"], method
        assert loc.n_params == n_params(factworld, loc.components)
        assert "budget" in loc.extra["rule"]
        if method != "random":
            ranked = sorted((c for c in loc.scores if isinstance(c, MLP)), key=lambda c: -loc.scores[c])
            assert loc.components == ranked[: len(loc.components)]
    with pytest.raises(ValueError, match="smaller than any single"):
        localize(factworld, sport_facts, "random", budget=10)


def test_random_is_seeded_and_full_baselines_cover_the_model(factworld, sport_facts):
    a = localize(factworld, sport_facts, "random", seed=1, include_heads=True, budget=40_000)
    assert a.components == localize(factworld, sport_facts, "random", seed=1, include_heads=True,
                                     budget=40_000).components
    assert any(localize(factworld, sport_facts, "random", seed=s, include_heads=True, budget=40_000).components
               != a.components for s in (2, 3, 4))
    assert len(localize(factworld, sport_facts, "random", seed=0).components) == 1  # a quarter of 4 layers
    s = arch(factworld)
    mlps = localize(factworld, sport_facts, "all-mlps", budget=5)
    assert mlps.components == [MLP(i) for i in range(s.n_layers)] and mlps.extra["ignored_budget"] == 5
    whole = localize(factworld, sport_facts, "nonlocalized")
    assert set(whole.components) == {Attn(i) for i in range(s.n_layers)} | {MLP(i) for i in range(s.n_layers)}
    hf = factworld.original_model
    not_trained = {id(p) for n, p in hf.named_parameters() if "embed" in n or "norm" in n or "lm_head" in n}
    assert whole.n_params == sum(p.numel() for p in hf.parameters() if id(p) not in not_trained)


def test_causal_tracing_and_attribution_without_budget(factworld, sport_facts):
    ct = localize(factworld, sport_facts, "causal-tracing-mlp", progress=False, max_facts=24, n_samples=2,
                  positions="subject_last", include_heads=True)
    assert ct.extra["noise_scale"] > 0 and ct.extra["clean_prob"] > ct.extra["corrupt_prob"]
    assert any(isinstance(c, (MLP, Head)) for c in ct.components)
    best = max(ct.scores.values())
    assert all(ct.scores[c] >= 0.5 * best for c in ct.components)
    at = localize(factworld, sport_facts, "attribution", progress=False, max_facts=24)
    assert at.components and all(isinstance(c, MLP) for c in at.components)
    assert set(at.scores) == {MLP(i) for i in range(4)}


def test_rome_causal_tracing_localizer_records_its_trace(factworld, sport_facts):
    """The default causal-tracing localizer is ROME's window trace at the last subject token."""
    ct = localize(factworld, sport_facts, "causal-tracing", progress=False, max_facts=24, n_samples=2)
    assert ct.method == "causal-tracing" and ct.extra["token"] == "subject_last"
    assert ct.extra["window"] == 1  # a third of factworld's 4 layers: ROME's 10 would restore every MLP
    assert set(ct.scores) == {MLP(i) for i in range(4)} and ct.components
    assert ct.extra["clean_prob"] > ct.extra["corrupt_prob"]


def test_fit_budget_matches_within_ten_percent_and_warns_when_too_coarse(factworld):
    """Planted sizes: factworld's MLPs hold 49,152 parameters each and its heads far fewer."""
    mlp = n_params(factworld, [MLP(0)])
    ranked = [MLP(2), MLP(0), MLP(3), MLP(1)]
    chosen, rec = fit_budget(factworld, ranked, 2 * mlp)
    assert chosen == [MLP(2), MLP(0)] and rec["ratio"] == 1.0 and rec["within_tolerance"]
    chosen, rec = fit_budget(factworld, ranked, int(2.05 * mlp))  # just above two MLPs: +0 % beats -51 %
    assert chosen == [MLP(2), MLP(0)] and rec["within_tolerance"]
    chosen, rec = fit_budget(factworld, ranked, int(1.95 * mlp))  # just below two: the second MLP overshoots 2.6 %
    assert chosen == [MLP(2), MLP(0)] and rec["within_tolerance"]
    with pytest.warns(UserWarning, match="matched budget not met"):
        chosen, rec = fit_budget(factworld, ranked, int(1.5 * mlp))  # one MLP (-33 %) or two (+33 %): neither fits
    assert chosen == [MLP(2)] and not rec["within_tolerance"] and rec["achieved"] == mlp


def test_every_localized_method_matches_the_probe_budget(factworld, sport_facts):
    """compare's rule: path and the ranking baselines are matched to the probe localization's size (±10 %)."""
    probe = localize(factworld, sport_facts, "probe", progress=False)
    for method, kw in [("path", {"max_facts": 24}), ("causal-tracing", {"max_facts": 24, "n_samples": 2}),
                       ("random", {"seed": 1})]:
        loc = localize(factworld, sport_facts, method, budget=probe.n_params, progress=False, **kw)
        assert loc.extra["budget"]["within_tolerance"], (method, loc.extra["budget"])
        assert abs(loc.n_params / probe.n_params - 1) <= 0.1, method
    assert "path" in BUDGETED and "probe" not in BUDGETED


def test_rome_causal_tracing_selection_is_stable_across_seeds(factworld, sport_facts):
    """With the default 10 noise draws the chosen MLPs do not change between seeds 0, 1, 2 (measured before the
    default was set: with 1 or 3 draws they did; not tuned to pass)."""
    sel = [localize(factworld, sport_facts, "causal-tracing", seed=s, progress=False).components for s in range(3)]
    assert sel[0] == sel[1] == sel[2], sel


@pytest.mark.unchecked
def test_setup_uses_forget_facts_and_rules_reject_bad_input(factworld, sport_facts):
    marked = sport_facts.mark_forget(6, seed=0)
    assert len(facts_to_localize(marked, None, 0)) == 6
    assert len(facts_to_localize(sport_facts, 10, 0)) == 10
    s = patch_setup(factworld, marked, corruption="random")
    assert len(s.batch) == 6 and not torch.equal(s.corruption, s.batch.input_ids)
    assert bool((s.answer_ids != s.other_ids).all())
    with pytest.raises(ValueError, match="unknown corruption"):
        patch_setup(factworld, marked, corruption="blur")
    with pytest.raises(ValueError, match="no component has a positive effect"):
        choose_by_fraction({"mlp.0": -1.0, "mlp.1": 0.0}, ["mlp.0", "mlp.1"], 0.5)
    assert choose_by_fraction({"a": 1.0, "b": 0.6, "c": 0.4}, ["a", "b", "c"], 0.5) == ["a", "b"]
    assert choose_by_fraction({"a": 1.0, "b": 0.6, "c": 0.4}, ["a", "b", "c"], 0.3, max_k=1) == ["a"]


def test_plot_patching_highlights_chosen_components(sport_path):
    from mechedit.plots.patching import CHOSEN, plot_patching

    fig = plot_patching(sport_path)
    kinds = [t.type for t in fig.data]
    assert kinds.count("heatmap") == 1 and kinds.count("bar") == 1
    bar = next(t for t in fig.data if t.type == "bar")
    assert [c == CHOSEN for c in bar.marker.color] == [layer in sport_path.layers for layer in range(4)]
    marks = next(t for t in fig.data if t.type == "scatter")
    assert {f"head.{y}.{x}" for x, y in zip(marks.x, marks.y, strict=True)} == set(sport_path.extra["extraction_heads"])
    unscored = plot_patching(Localization("all-mlps", [MLP(0), MLP(2)], {}))  # membership instead of scores
    assert list(next(t for t in unscored.data if t.type == "bar").y) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="no head or MLP scores and no head or MLP"):
        plot_patching(Localization("x", [Attn(0)], {}))


@pytest.mark.smollm2
def test_smollm2_batched_path_patching_matches_reference(smollm2):
    """GQA with 3 query heads per key-value group, 30 layers: batched == brute force on a few senders."""
    from mechedit.facts import load_facts
    from mechedit.tokens import validate_facts
    from patching.path import path_patch
    from patching.reference import path_patch_reference

    facts = validate_facts(smollm2.tokenizer, load_facts("counterfact"), on_collision="drop").sample(3, seed=2)
    s = patch_setup(smollm2, facts, corruption="random", seed=0)
    args = (smollm2, s.batch.input_ids, s.batch.attention_mask, s.corruption, s.metric)
    senders = ["head.20.8", "mlp.12", "mlp.25"]
    receivers = ["head.22.1", "head.22.5", "head.26.0"]
    for rec in ("logits", receivers):
        fast = path_patch(*args, senders=senders, receivers=rec)
        slow = path_patch_reference(*args, senders=senders, receivers=rec)
        assert max(abs(x - y) for x, y in zip(fast.values, slow.values, strict=True)) < 1e-4, rec
