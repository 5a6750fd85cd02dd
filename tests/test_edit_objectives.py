"""Every objective lowers its loss and the forget accuracy; formulas checked against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import one_thread

from mechedit.components import MLP
from mechedit.edit import OBJECTIVES, EditConfig, ObjectiveInputs, edit
from mechedit.edit.teacher import _name_token_map, teacher_distribution
from mechedit.localize.localization import make_localization
from mechedit.models import hf_parameters, load_model
from mechedit.scoring import score_facts


@pytest.fixture(scope="module")
def private_model():
    """A private factworld copy; every test reverts its edit."""
    with one_thread():
        yield load_model("factworld")


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_lowers_loss_and_forget_accuracy(private_model, sport_facts, name):
    model = private_model
    facts = sport_facts.mark_forget(12, seed=5, with_targets=name == "edit")
    forget = facts.forget_set()
    assert score_facts(model, forget).mean("answer_correct") == 1.0
    loc = make_localization(model, "manual", [MLP(0), MLP(1), MLP(2)])
    before = {k: v.detach().clone() for k, v in hf_parameters(model).items()}
    result = edit(model, facts, loc, name, EditConfig(steps=20, lr=5e-3, retain_batch=16), progress=False)
    try:
        first, last = result.log[0], result.log[-1]
        assert last["forget"] < first["forget"] and last["loss"] < first["loss"], name
        assert score_facts(model, forget).mean("answer_correct") <= 0.5, name
        if name != "ga":
            assert "retain" in last
    finally:
        result.revert(model)
    assert all(torch.equal(v, before[k]) for k, v in hf_parameters(model).items())


def _inputs(p_answer: float, vocab: int = 5) -> ObjectiveInputs:
    """One fact whose answer (token 0) has probability p_answer, the rest spread evenly."""
    probs = torch.full((1, vocab), (1 - p_answer) / (vocab - 1))
    probs[0, 0] = p_answer
    logp = probs.log()
    return ObjectiveInputs(
        forget_logp=logp, answer_ids=torch.tensor([0]), target_ids=torch.tensor([1]), random_ids=torch.tensor([2]),
        retain_logp=logp, retain_answer_ids=torch.tensor([0]), forget_ref_logp=torch.full((1, vocab), 0.2).log(),
        retain_ref_logp=logp, teacher_probs=torch.full((1, vocab), 0.2),
    )


def test_objective_formulas():
    cfg = EditConfig()
    x = _inputs(0.6)
    terms = {name: OBJECTIVES[name].fn(x, cfg) for name in OBJECTIVES}
    assert math.isclose(float(terms["edit"].forget), -math.log(0.1), rel_tol=1e-5)
    assert math.isclose(float(terms["ga"].forget), math.log(0.6), rel_tol=1e-5) and terms["ga"].retain is None
    assert math.isclose(float(terms["gradiff"].retain), -math.log(0.6), rel_tol=1e-5)
    assert abs(float(terms["ga-kl"].retain)) < 1e-6  # KL of a distribution to itself
    ratio = math.log(0.6 / 0.2)  # log(pi_theta / pi_ref) on the answer token
    npo = -(2 / cfg.npo_beta) * math.log(1 / (1 + math.exp(cfg.npo_beta * ratio)))
    assert math.isclose(float(terms["npo"].forget), npo, rel_tol=1e-5)
    assert math.isclose(float(terms["rlabel"].forget), -math.log(0.1), rel_tol=1e-5)
    assert math.isclose(float(terms["log1-p"].forget), -math.log(1 - 0.6), rel_tol=1e-5)
    teacher_kl = sum(0.2 * math.log(0.2 / p) for p in (0.6, 0.1, 0.1, 0.1, 0.1))
    assert math.isclose(float(terms["causal-teacher"].forget), teacher_kl, rel_tol=1e-5)


def test_causal_teacher_moves_name_mass_back(factworld, sport_facts):
    tok = factworld.tokenizer
    fact, rep = sport_facts[0], sport_facts[1].subject
    rep_first = tok(" " + rep, add_special_tokens=False)["input_ids"][0]
    orig_first = tok(" " + fact.subject, add_special_tokens=False)["input_ids"][0]
    assert rep_first != orig_first
    vocab = len(tok)
    seen = []

    def fake_probs(texts):  # the counterfactual prompt puts half its mass on the replacement's first name token
        seen.extend(texts)
        out = torch.full((len(texts), vocab), 0.5 / (vocab - 1))
        out[:, rep_first] = 0.5
        return out

    t = teacher_distribution(fake_probs, tok, fact, [rep])
    assert seen == [fact.prompt.replace("{subject}", rep)]
    assert math.isclose(float(t.sum()), 1.0, rel_tol=1e-5)
    assert float(t[rep_first]) == 0.0
    assert math.isclose(float(t[orig_first]), 0.5 + 0.5 / (vocab - 1) * (1 + _n_mapped_to(tok, rep, fact.subject,
                        orig_first, rep_first)), rel_tol=1e-5)
    assert _name_token_map(tok, rep, fact.subject)[rep_first] == orig_first


def _n_mapped_to(tok, rep, orig, dst, skip) -> int:
    """How many replacement tokens other than ``skip`` the teacher maps onto ``dst``."""
    return sum(1 for s, d in _name_token_map(tok, rep, orig).items() if d == dst and s != skip)
