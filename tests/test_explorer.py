"""The circuit explorer's logic, driven without a front-end: its view callback, the widget's callback and the
static fallback, on factworld."""

from __future__ import annotations

import math

import pytest

from mechedit.explorer import ALL_FACTS, CircuitExplorer


@pytest.fixture(scope="module")
def explorer(factworld, world_facts):
    """An explorer over factworld's three relations (8 facts explored per relation)."""
    return CircuitExplorer(factworld, world_facts, max_facts=8, top_k=3)


def test_view_patches_every_head_and_mlp_and_finds_extraction_heads(explorer, factworld):
    n_layers, n_heads = factworld.cfg.n_layers, factworld.cfg.n_heads
    view = explorer.view("sport")
    assert view.selection.fact == ALL_FACTS and view.clean > view.corrupt  # the corruption hurts the answer
    assert len(view.head_scores) == n_layers * n_heads and len(view.mlp_scores) == n_layers
    assert all(math.isfinite(v) for v in [*view.head_scores.values(), *view.mlp_scores.values()])
    effects = [v for _, v in view.extraction]
    assert len(effects) == 3 and effects == sorted(effects, reverse=True) and view.head == view.extraction[0][0]
    assert len(view.tokens) == len(view.attention) and sum(view.attention) == pytest.approx(1.0, abs=1e-4)
    assert set(view.figures) == {"patching", "extraction", "attention"}
    assert explorer.view("sport") is view  # cached per selection


def test_one_fact_other_corruption_metric_and_head(explorer):
    label, index = explorer.fact_options("city")[2]
    view = explorer.view("city", index, "noise", "answer_prob", head="head.0.1")
    assert view.selection.fact == index == 1 and view.prompt in label and view.head == "head.0.1"
    assert 0.0 <= view.corrupt < view.clean <= 1.0  # probabilities of the true answer
    with pytest.raises(ValueError, match="out of range"):
        explorer.view("city", 99)


@pytest.mark.unchecked
def test_unknown_metric_gets_the_explorers_own_message(explorer):
    with pytest.raises(ValueError, match="unknown metric 'accuracy'; choose from logit_diff, answer_prob"):
        explorer.view("city", metric="accuracy")


def test_widget_callback_without_a_front_end(explorer):
    pytest.importorskip("ipywidgets", reason="ipywidgets not installed (the explorer falls back to static figures)")
    seen = []
    box = explorer.widget(on_view=seen.append)
    (relation, corruption, metric), (fact, head) = box.children[0].children, box.children[1].children
    assert seen[-1].selection.relation == explorer.relations[0]
    relation.value = "instrument"  # a new relation resets the fact list to its own facts
    assert seen[-1].selection.relation == "instrument"
    assert fact.options[1][0] == explorer.fact_options("instrument")[1][0]
    fact.value = 0
    corruption.value = "random"
    metric.value = "answer_prob"
    assert seen[-1].selection == explorer.view("instrument", 0, "random", "answer_prob").selection
    assert [label for label, _ in head.options[1:]] == [label for label, _ in seen[-1].extraction]
    assert box.update().selection == seen[-1].selection


def test_static_fallback_returns_the_view(explorer, monkeypatch):
    monkeypatch.setenv("MECHEDIT_STATIC", "1")
    view = explorer.show("sport")
    assert view is explorer.view("sport") and set(view.figures) == {"patching", "extraction", "attention"}
