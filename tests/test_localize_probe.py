"""The probe localizer: the layer-range rule, factworld ground truth, budgets, bad input, the plot, SmolLM2."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch

from mechedit.components import MLP, n_params
from mechedit.facts import FactError
from mechedit.localize import localize
from mechedit.localize.localization import Localization
from mechedit.localize.probe import choose_layer_range
from mechedit.plots.probe_accuracy import plot_probe_accuracy

# a range ending at the final layer is flagged with a warning; tested once on factworld and in the rule test
pytestmark = pytest.mark.filterwarnings("ignore:the chosen range ends at the final layer")


def _sport_loc(model, world_facts):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loc = localize(model, world_facts, "probe", relation="sport", progress=False)
    loc.extra["_caught"] = [str(w.message) for w in caught if "the chosen range" in str(w.message)]
    return loc


@pytest.fixture(scope="module")
def sport_loc(factworld, world_facts):
    return _sport_loc(factworld, world_facts)


@pytest.fixture(scope="module")
def world_sport_loc(world_model, factworld, world_facts, request):
    """The sport localization on factworld in each layout (the Llama one is ``sport_loc``)."""
    return request.getfixturevalue("sport_loc") if world_model is factworld else _sport_loc(world_model, world_facts)


# ------------------------------------------------------------------ the rule


@pytest.mark.parametrize(("curve", "baseline", "kw", "expected"), [
    ([0.25] * 5 + [0.95] * 5, 0.25, {}, (5, 5)),  # a step between layers 4 and 5: MLP 5 alone explains the rise
    # a gradual rise over layers 2..5 (0.2 per layer): 80% of the 0.8 rise needs all four
    ([0.1, 0.1, 0.3, 0.5, 0.7, 0.9, 0.9], 0.1, {"rise_fraction": 0.8}, (2, 5)),
    ([0.1, 0.1, 0.3, 0.5, 0.7, 0.9, 0.9], 0.1, {"rise_fraction": 0.5}, (2, 3)),  # ties: earliest
    ([0.5, 0.5, 0.95], 0.1, {"rise_fraction": 0.45}, (2, 2)),  # ties in length prefer the larger gain
    ([0.55, 0.55, 0.95], 0.1, {"rise_fraction": 0.45}, (0, 0)),
    ([0.3, 0.9, 0.6], 0.3, {}, (1, 1)),  # the plateau need not be at the last layer
])
def test_choose_layer_range_rule(curve, baseline, kw, expected):
    assert choose_layer_range(curve, baseline, **kw) == expected


@pytest.mark.parametrize(("curve", "baseline", "kw", "error"), [
    ([0.26, 0.27, 0.3], 0.25, {"min_rise": 0.1}, "not linearly decodable"),
    ([0.2, 0.9], 0.2, {"rise_fraction": 0}, "rise_fraction"),
])
def test_choose_layer_range_refuses(curve, baseline, kw, error):
    with pytest.raises(ValueError, match=error):
        choose_layer_range(curve, baseline, **kw)


# ------------------------------------------------------------------ factworld


def test_probe_localization_factworld(world_model, world_facts, world_sport_loc):
    """Chosen MLPs are where the sport becomes decodable: chance before the range, the plateau after it (factworld
    in its Llama and in its GPT-2 layout)."""
    loc = world_sport_loc
    ex = loc.extra
    start, end = ex["chosen_range"]
    assert loc.method == "probe" and loc.components == [MLP(layer) for layer in range(start, end + 1)]
    assert loc.n_params == n_params(world_model, loc.components)
    assert ex["relation"] == "sport" and ex["n_facts"] == 320 and ex["classes"] == ["chess", "golf", "rugby", "tennis"]
    curve = loc.probe_accuracy
    assert len(curve) == 4 and curve == ex["curves"]["subject"]
    # ground truth from the world's labels: near chance (1/4 of 4 balanced-ish sports) before the range, and
    # within the rule's margin (1 - rise_fraction) of the plateau after it; the attribute really is decodable
    before = ex["embed_accuracy"]["subject"] if start == 0 else curve[start - 1]
    margin = (1 - ex["rule"]["rise_fraction"]) * (max(curve) - ex["embed_accuracy"]["subject"])
    assert before <= ex["chance"] + 0.1
    assert curve[end] >= max(curve) - margin - 1e-9
    assert max(curve) - before >= 0.5 and max(curve) >= 0.8
    assert end < 3  # the lookup happens where later heads can still read it (factworld v2)
    assert set(loc.scores) == {MLP(layer) for layer in range(4)}
    np.testing.assert_allclose(sum(loc.scores.values()), curve[-1] - ex["embed_accuracy"]["subject"], atol=1e-9)
    # the subject comes first in factworld prompts, so the full prompt gives the same activations at the subject
    np.testing.assert_allclose(ex["curves"]["full"], ex["curves"]["subject"], atol=1e-9)
    # a range ending at the final layer is flagged (its MLP output at the subject reaches no later layer), and so is
    # a range longer than half the layers (the GPT-2 layout's curve rises over MLPs 0-2: measured 0.24 -> 0.90)
    assert any("final layer" in w for w in ex["warnings"]) == (end == 3)
    assert any("rises slowly" in w for w in ex["warnings"]) == (end - start + 1 > 2)
    assert len(ex["warnings"]) == (end == 3) + (end - start + 1 > 2) and loc.extra["_caught"] == ex["warnings"]
    # JSON round-trips
    again = Localization.from_dict(loc.to_dict())
    assert again.components == loc.components and again.probe_accuracy == curve and again.extra == ex


def test_probe_localization_other_relation_and_seed(factworld, world_facts):
    """Mixed relations: the largest (first on ties) is probed unless one is named; the split seed is honoured."""
    loc = localize(factworld, world_facts, "probe", progress=False, seed=1)
    assert loc.extra["relation"] == "sport" and loc.extra["rule"]["seed"] == 1
    with pytest.raises(FactError, match="relation 'colour' not in the fact set"):
        localize(factworld, world_facts, "probe", relation="colour", progress=False)


def test_probe_localization_budget(factworld, world_facts, sport_loc):
    one = n_params(factworld, [MLP(0)])
    loc = localize(factworld, world_facts, "probe", relation="sport", budget=one, progress=False)
    assert len(loc.components) == 1 and loc.n_params <= one
    assert loc.components[0] in sport_loc.components
    with pytest.raises(ValueError, match="smaller than one MLP"):
        localize(factworld, world_facts, "probe", relation="sport", budget=one - 1, progress=False)


@pytest.mark.unchecked
def test_probe_localization_bad_facts(factworld, sport_facts):
    one_answer = sport_facts.subset([f for f in sport_facts if f.answer == "golf"])
    with pytest.raises(FactError, match="at least 2 answers"):
        localize(factworld, one_answer, "probe", progress=False)
    few = sport_facts.subset([f for f in sport_facts if f.answer == "golf"][:5] +
                             [f for f in sport_facts if f.answer != "golf"])
    loc = localize(factworld, few, "probe", progress=False, min_rise=0.0)
    assert loc.extra["dropped_classes"] == {"golf": 5} and "golf" not in loc.extra["classes"]
    with pytest.raises(ValueError, match="choose_on"):
        localize(factworld, sport_facts, "probe", choose_on="middle", progress=False)
    with pytest.raises(ValueError, match="position must be"):
        localize(factworld, sport_facts, "probe", position="first", progress=False)


def test_subject_mean_position(factworld, sport_facts):
    """position="subject_mean" averages the activations over each subject's tokens (reference: one by one)."""
    from mechedit.tokens import encode
    from probes import collect_activations

    probe_mod = importlib.import_module("mechedit.localize.probe")
    facts = sport_facts[:12]
    batch = encode(factworld.tokenizer, [f.render(f.paraphrases[0]) for f in facts], [f.subject for f in facts])
    hooks = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    got = probe_mod._activations(factworld, batch, "subject_mean", hooks, 5, False)
    for i in range(len(facts)):
        span = range(int(batch.subject_start[i]), int(batch.subject_last[i]) + 1)
        assert len(span) >= 2
        one = [collect_activations(factworld, batch.input_ids[i:i + 1], batch.attention_mask[i:i + 1],
                                   torch.tensor([p]), hooks, progress=False) for p in span]
        torch.testing.assert_close(got[:, i], torch.stack(one).mean(0)[:, 0], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ plot


def test_plot_probe_accuracy(sport_loc):
    fig = plot_probe_accuracy(sport_loc)
    names = [t.name for t in fig.data]
    assert names == ["subject", "full"]
    assert list(fig.data[0].x) == [-1, 0, 1, 2, 3]  # embedding baseline first
    start, end = sport_loc.extra["chosen_range"]
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(rects) == 1 and (rects[0].x0, rects[0].x1) == (start - 0.5, end + 0.5)
    assert any(s.type == "line" and s.y0 == sport_loc.extra["chance"] for s in fig.layout.shapes)
    before_after = plot_probe_accuracy({"before edit": [0.2, 0.9], "after edit": [0.2, 0.3]}, chance=0.25)
    assert len(before_after.data) == 2 and not [s for s in before_after.layout.shapes if s.type == "rect"]
    with pytest.raises(ValueError, match="equal length"):
        plot_probe_accuracy({"a": [0.1, 0.2], "b": [0.1]})
    with pytest.raises(ValueError, match="outside layers"):
        plot_probe_accuracy({"a": [0.1, 0.2]}, chosen=(1, 2))
    with pytest.raises(ValueError, match="no probe accuracy"):
        plot_probe_accuracy(Localization("random", [MLP(0)]))
    with pytest.raises(TypeError):
        plot_probe_accuracy([0.1, 0.2])


# ------------------------------------------------------------------ SmolLM2


@pytest.mark.smollm2
def test_probe_localization_smollm2(smollm2):
    """CounterFact "created by" (P178) facts SmolLM2 knows: the probe curve rises and a short MLP range is chosen."""
    from mechedit.facts import load_facts
    from mechedit.scoring import known_facts
    from mechedit.tokens import validate_facts

    facts = validate_facts(smollm2.tokenizer, load_facts("counterfact").by_relation()["P178"], "drop")
    loc = localize(smollm2, known_facts(smollm2, facts, batch_size=64), "probe", progress=False)
    start, end = loc.extra["chosen_range"]
    curve, ex = loc.probe_accuracy, loc.extra
    assert len(curve) == 30 and ex["n_facts"] >= 100 and len(ex["classes"]) >= 3
    assert max(curve) >= ex["embed_accuracy"]["subject"] + 0.1 and max(curve) >= ex["chance"] + 0.2
    before = ex["embed_accuracy"]["subject"] if start == 0 else curve[start - 1]
    assert curve[end] - before >= 0.8 * (max(curve) - ex["embed_accuracy"]["subject"]) - 1e-9
    assert end - start <= 10


def test_range_ending_at_the_final_layer_is_flagged(factworld, sport_facts, monkeypatch):
    """A curve that only rises after the last MLP: the range is kept, with a warning and a note in extra."""
    probe_mod = importlib.import_module("mechedit.localize.probe")  # mechedit.localize is also a function

    step = probe_mod.ProbeCurves({"subject": [0.25, 0.26, 0.25, 0.9], "full": [0.25, 0.26, 0.25, 0.9]},
                                 {"subject": 0.25, "full": 0.25}, 0.25, ["chess", "golf", "rugby", "tennis"], 240, 80)
    monkeypatch.setattr(probe_mod, "probe_curves", lambda *a, **k: step)
    with pytest.warns(UserWarning, match="ends at the final layer 3"):
        loc = localize(factworld, sport_facts, "probe", progress=False)
    assert loc.components == [MLP(3)] and loc.extra["warnings"]
    slow = probe_mod.ProbeCurves({"subject": [0.4, 0.5, 0.6, 0.7], "full": [0.4, 0.5, 0.6, 0.7]},
                                 {"subject": 0.3, "full": 0.3}, 0.25, ["chess", "golf", "rugby", "tennis"], 240, 80)
    monkeypatch.setattr(probe_mod, "probe_curves", lambda *a, **k: slow)
    with pytest.warns(UserWarning, match="spans 4 of 4 layers"):
        loc = localize(factworld, sport_facts, "probe", progress=False)

