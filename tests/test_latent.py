"""Latent probes with planted truth: untouched layers never decide, open-vocabulary probes decode a planted linear
answer code (and fail on shuffled features), distinct answers give an open-vocabulary probe or a null with a reason.

Every threshold below was written before the test was first run and was not adjusted to make it pass.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mechedit.evaluate import evaluate
from mechedit.evaluate.copying import clone_model
from mechedit.models import fingerprint, hf_parameters
from probes import RidgeProbe


def _planted(seed: int, n: int, shuffle: bool = False):
    """Features that carry a linear code of the answer: x = E[answer] @ A + noise, answers from a 40-word vocabulary."""
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(40, 8, generator=g)  # answer vectors (the "unembedding rows")
    A = torch.randn(8, 24, generator=g)
    train_ans = torch.randint(0, 20, (n,), generator=g)  # training answers: words 0-19 only
    test_ans = torch.randint(20, 40, (60,), generator=g)  # held-out facts: words never seen in training
    X = E[train_ans] @ A + 0.3 * torch.randn(n, 24, generator=g)
    if shuffle:
        X = X[torch.randperm(n, generator=g)]
    X_test = E[test_ans] @ A + 0.3 * torch.randn(60, 24, generator=g)
    cands, correct = [], []
    for a in test_ans.tolist():  # 4 candidates: the answer and 3 other unseen words
        others = [w for w in torch.randperm(20, generator=g).add(20).tolist() if w != a][:3]
        pos = int(torch.randint(0, 4, (1,), generator=g))
        words = others[:pos] + [a] + others[pos:]
        cands.append(E[words])
        correct.append(pos)
    return X[None], E[train_ans], X_test[None], cands, np.array(correct)


def test_open_vocabulary_probe_decodes_a_planted_answer_code_and_fails_when_shuffled():
    """Planted truth: the features are a linear image of each answer's vector. A ridge map trained on 20 answer
    words picks the right one of 4 *never-seen* words far above chance (0.25); with the features shuffled against
    the answers (no code left) it falls to chance."""
    X, Y, X_test, cands, correct = _planted(0, 200)
    probe = RidgeProbe().fit(X, Y)
    acc = float((probe.choose(X_test, cands)[0] == correct).mean())
    assert acc >= 0.8
    Xs, Ys, Xs_test, cands_s, correct_s = _planted(0, 200, shuffle=True)
    shuffled = RidgeProbe().fit(Xs, Ys)
    acc_s = float((shuffled.choose(Xs_test, cands_s)[0] == correct_s).mean())
    assert acc_s <= 0.45
    # alpha chosen on a held-out split of the training words only
    held = probe.choose_alpha(X_test[:, :30], cands[:30], correct[:30].tolist())
    assert held.shape == (1,) and held[0] >= 0.8
    with pytest.raises(ValueError, match="candidate sets"):
        probe.choose(X_test, cands[:3])


@pytest.fixture(scope="module")
def named_sport_facts(sport_facts):
    """Sport facts whose subject ends with the answer word: the answer is decodable from the embedding (layer 0)."""
    facts = sport_facts.sample(80, seed=3)
    named = facts.subset([replace(f, subject=f"{f.subject} {f.answer}") for f in facts])
    return named.mark_forget(16, seed=0, with_targets=False)


def test_untouched_layers_never_make_an_edit_of_the_last_mlp_look_suppressed(factworld, named_sport_facts):
    """Planted truth: the answer is the subject's last token, so probes read it at layer 0 already, and the
    'edit' replaces only the last MLP (layer 3) by a large random map that swamps the residual stream there.
    Layers 0-2 are bit-identical to the original: they must be excluded and reported as the floor (~1.0), and
    the decision must rest on layer 3, where the original probes no longer read the answer. The old rule (best
    over every layer) would say 'suppressed' through layer 0."""
    edited = clone_model(factworld)
    with torch.no_grad():
        w = hf_parameters(edited)["model.layers.3.mlp.down_proj.weight"]
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 50 * w.std())
    before = fingerprint(factworld)
    ev = evaluate(edited, named_sport_facts, original=factworld, n_shots=0, max_maintain=32, progress=False)
    assert fingerprint(factworld) == before
    lat = ev.latent
    assert lat.kind == {"sport": "categorical"}
    assert lat.first_edited_layer == 3 and lat.first_edited_source == "activations"
    assert lat.excluded_layers == [0, 1, 2] and lat.untouched_floor >= 0.9
    assert lat.original_before["subject_last"][0] >= 0.9  # planted: decodable from the embedding
    assert lat.selected["layer"] == 3
    assert max(max(v) for v in lat.original_true.values()) >= 0.9  # what the old max-over-layers rule saw
    sig = ev.verdict.signals["latent"]
    assert sig["says"] == "removed" and sig["value"] < 0.5
    assert sig["detail"]["untouched_floor"] == lat.untouched_floor and sig["detail"]["excluded_layers"] == [0, 1, 2]
    m = ev.to_dict()
    assert m["latent_untouched_floor"] == lat.untouched_floor and m["latent_excluded_layers"] == [0, 1, 2]
    assert m["latent_after"] == lat.selected["after"]["mean"] and len(m["latent_after_ci"]) == 2
    assert len(m["latent_probe_accuracy"]) == 4
    assert any("excluded" in r for r in ev.verdict.reasons)


@pytest.fixture(scope="module")
def city_edit(factworld, world_facts):
    """16 city facts to edit with only 12 maintain facts: the forget answers hardly repeat among them."""
    from mechedit.components import MLP
    from mechedit.edit import EditConfig, edit
    from mechedit.localize.localization import make_localization

    facts = world_facts.by_relation()["city"].sample(28, seed=5).mark_forget(16, seed=0, with_targets=True)
    loc = make_localization(factworld, "mlp-2", [MLP(2)])
    result = edit(clone_model(factworld), facts, loc, "edit", EditConfig(steps=5, retain_pool=12, fluency_weight=0.0),
                  progress=False)
    return facts, result


def test_rare_answers_get_an_open_vocabulary_probe_through_evaluate(factworld, city_edit):
    """Planted situation: 16 forget facts of factworld's 8-city relation with 12 maintain facts, so some forget
    answers have fewer than 4 maintain examples and no categorical probe applies. evaluate() must complete with an
    open-vocabulary probe (said in the output), decide at or after the edit's first layer (MLP 2, from the edit),
    and report the untouched floor of layers 0-1."""
    facts, result = city_edit
    ev = evaluate(factworld, facts, edit=result, n_shots=0, max_maintain=32, progress=False)
    lat = ev.latent
    assert lat.kind == {"city": "open_vocab"} and ev.metrics["latent_kind"] == {"city": "open_vocab"}
    assert lat.first_edited_layer == 2 and lat.first_edited_source == "edit" and lat.excluded_layers == [0, 1]
    assert lat.untouched_floor is not None and lat.selected["layer"] >= 2
    assert lat.reason is None and lat.original_new is not None  # the new answer is scored by forced choice too
    iv = lat.selected["after"]
    assert iv["low"] <= iv["mean"] <= iv["high"] and iv["n"] == 16


def test_too_few_maintain_facts_give_a_null_latent_signal_with_a_reason(factworld, city_edit):
    """With 4 maintain facts no probe kind can be trained: the latent signal is null with the reason, and the
    evaluation (behaviour, verdict inputs, metrics.json) still completes."""
    facts, result = city_edit
    keep = [f for f in facts if f.changes] + [f for f in facts if not f.changes][:4]
    few = facts.subset(keep)
    ev = evaluate(factworld, few, edit=result, n_shots=0, max_maintain=32, progress=False)
    assert ev.latent.selected is None and ev.latent.original_true is None
    assert "no forget fact could be probed" in ev.latent.reason and "open-vocabulary" in ev.latent.reason
    m = ev.to_dict()
    assert m["latent_probe_accuracy"] is None and m["latent_after"] is None and "probed" in m["latent_reason"]
    assert ev.verdict.signals["latent"]["says"] == "not measured"
    assert any("latent: not measured" in r for r in ev.verdict.reasons)
    assert m["forget_accuracy"] is not None


def test_verdict_uses_the_selected_probe_and_its_held_out_quality():
    """Constructed inputs: the margin rule reads the selected probe's held-out maintain quality (not the forget
    facts), and the reason carries the selected layer, the 95 % interval and the untouched floor."""
    from mechedit.evaluate import decide

    def detail(quality):
        sel = {"position": "last", "layer": 3, "quality": quality, "quality_chance": 0.25,
               "after": {"mean": 0.3, "low": 0.1, "high": 0.5}, "before": {"mean": 1.0},
               "fresh_after": 0.95, "quality_on_edited": 0.9}
        return {"selected": sel, "untouched_floor": 1.0, "excluded_layers": [0, 1, 2], "reason": None}

    common = dict(forget_accuracy=0.0, original_forget_accuracy=1.0, chance=0.25, latent_after=0.3,
                  latent_before=1.0, latent_chance=0.25)
    v = decide(**common, latent_detail=detail(0.9))
    lat = v.signals["latent"]
    assert v.verdict == "removed" and lat["value"] == pytest.approx(0.05 / 0.75)
    assert lat["detail"]["normalized_ci"] == [0.0, pytest.approx(0.25 / 0.75)]
    assert any("layer 3" in r and "floor 1.00" in r and "[0.10, 0.50]" in r for r in v.reasons)
    assert any("moved rather than gone" in r for r in v.reasons)  # the refitted probe still decodes them
    v = decide(**common, latent_detail=detail(0.4))  # held-out quality only 0.15 above chance
    assert v.verdict is None and v.signals["latent"]["says"] == "not measured"
    assert any("held-out maintain facts" in r and "not used" in r for r in v.reasons)
    v = decide(**{**common, "latent_after": None, "latent_before": None},
               latent_detail={"selected": None, "reason": "no forget fact could be probed: x"})
    assert v.signals["latent"]["says"] == "not measured" and any("could be probed" in r for r in v.reasons)
