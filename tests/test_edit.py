"""The masked fine-tuner: edits land, only owned entries move, backward stops early, errors restore weights."""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import one_thread, snapshot

from mechedit.components import MLP, Head, n_params, trainable_masks
from mechedit.edit import EditConfig, EditError, Objective, Terms, compose, edit, edit_sequence
from mechedit.edit.masking import TrainableSet
from mechedit.localize.localization import make_localization
from mechedit.models import hf_model_of, hf_parameters
from mechedit.scoring import score_facts
from patching.model import arch

FAST = EditConfig(steps=30, lr=2e-3)


@pytest.fixture(autouse=True, scope="module")
def single_thread_module():
    """factworld is tiny: one intra-op thread is much faster than two on a shared, busy machine."""
    with one_thread():
        yield


def digests(model) -> dict[str, str]:
    """sha256 of every parameter's bytes, by plain HF name."""
    return {k: hashlib.sha256(v.detach().numpy().tobytes()).hexdigest() for k, v in hf_parameters(model).items()}


def test_edit_sport_facts_with_fact_lookup_mlps(fresh_factworld, sport_facts):
    model = fresh_factworld()
    facts = sport_facts.mark_forget(16, seed=0)
    loc = make_localization(model, "manual", [MLP(0), MLP(1), MLP(2)])
    before = digests(model)
    flags = {k: p.requires_grad for k, p in hf_parameters(model).items()}
    objects = {k: id(p) for k, p in hf_parameters(model).items()}
    result = edit(model, facts, loc, "edit", FAST, progress=False)

    assert score_facts(model, facts.forget_set()).mean("target_correct") >= 0.95
    assert score_facts(model, facts.maintain_set()).mean("answer_correct") >= 0.9
    after = digests(model)
    owned = {f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(3) for p in ("gate", "up", "down")}
    assert {k for k in before if before[k] != after[k]} == owned  # everything else bit-identical
    assert set(result.names) == owned and result.n_params_trained == loc.n_params
    assert {k: p.requires_grad for k, p in hf_parameters(model).items()} == flags
    assert {k: id(p) for k, p in hf_parameters(model).items()} == objects  # same Parameter objects, no swaps
    assert all(p.grad is None for p in hf_parameters(model).values())
    assert len(result.log) == FAST.steps and {"forget", "retain", "fluency", "loss", "lr"} <= set(result.log[0])
    assert result.log[-1]["forget"] < 0.1 * result.log[0]["forget"]


def test_head_slices_do_not_leak_into_neighbours(tiny_model, sport_facts):
    """Weight decay and AdamW moments must not move the unowned rows/columns of a partly owned tensor."""
    model = tiny_model()
    s = arch(model)
    comps = [Head(1, 1), MLP(1)]
    loc = make_localization(model, "manual", comps)
    before = snapshot(model)
    objects = {k: id(p) for k, p in hf_parameters(model).items()}
    cfg = EditConfig(steps=4, lr=1e-2, weight_decay=0.5, fluency_weight=0.0, retain_batch=8)
    result = edit(model, sport_facts.mark_forget(8, seed=1), loc, "edit", cfg, progress=False)
    after = snapshot(model)
    q, o = "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.o_proj.weight"
    rows = slice(1 * s.d_head, 2 * s.d_head)
    for name, dim in ((q, 0), (o, 1)):
        mask = torch.zeros_like(before[name], dtype=torch.bool)
        mask.narrow(dim, rows.start, s.d_head).fill_(True)
        assert torch.equal(after[name][~mask], before[name][~mask]), f"{name}: a neighbouring head moved"
        assert not torch.equal(after[name][mask], before[name][mask]), f"{name}: the owned head did not train"
        assert torch.equal(result.delta[name][~mask], torch.zeros_like(before[name][~mask]))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {q, o, "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
                       "model.layers.1.mlp.down_proj.weight"}  # a lone head leaves its shared k/v frozen
    assert result.n_params_trained == n_params(model, comps)
    assert {k: id(p) for k, p in hf_parameters(model).items()} == objects


def test_optimizer_sees_only_owned_entries(factworld):
    comps = [Head(1, 0), Head(1, 3), MLP(2)]
    flags = {k: p.requires_grad for k, p in hf_parameters(factworld).items()}
    ts = TrainableSet(factworld, trainable_masks(factworld, comps))
    ts.begin()
    try:
        assert sum(leaf.numel() for leaf in ts.leaves()) == n_params(factworld, comps)
        trainable = {k for k, p in hf_parameters(factworld).items() if p.requires_grad}
        assert trainable == {f"model.layers.2.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    finally:
        ts.end()
    assert {k: p.requires_grad for k, p in hf_parameters(factworld).items()} == flags


def test_backward_stops_at_earliest_trained_layer(fresh_factworld, sport_facts):
    model = fresh_factworld()
    seen: dict[int, bool] = {}
    frozen_q_grad: list[bool] = []
    layers = hf_model_of(model).model.layers
    hooks = [layer.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(
        i, seen.get(i, False) or (out[0] if isinstance(out, tuple) else out).requires_grad))
        for i, layer in enumerate(layers)]
    q3 = hf_parameters(model)["model.layers.3.self_attn.q_proj.weight"]

    def record_q3(*args):  # training forwards only (the prefix cache runs no-grad forwards before training)
        if torch.is_grad_enabled():
            frozen_q_grad.append(q3.requires_grad)

    hooks.append(layers[3].register_forward_hook(record_q3))
    try:
        edit(model, sport_facts.mark_forget(4, seed=0), make_localization(model, "manual", [MLP(2)]), "edit",
             EditConfig(steps=1, fluency_weight=0.0, retain_batch=4), progress=False)
    finally:
        for h in hooks:
            h.remove()
    assert seen == {0: False, 1: False, 2: True, 3: True}
    assert frozen_q_grad and not any(frozen_q_grad)


def test_non_finite_loss_restores_weights(fresh_factworld, sport_facts):
    model = fresh_factworld()
    before = snapshot(model)
    calls = []

    def explode(x, cfg):
        calls.append(1)
        forget = -x.forget_logp.gather(1, x.answer_ids[:, None]).mean()
        return Terms(forget * (float("nan") if len(calls) >= 3 else 1.0), None)

    loc = make_localization(model, "manual", [MLP(1), Head(2, 0)])
    with pytest.raises(EditError, match="non-finite loss at step 2"):
        edit(model, sport_facts.mark_forget(4, seed=0), loc, Objective("explode", explode),
             EditConfig(steps=5, lr=1e-2, fluency_weight=0.0), progress=False)
    after = snapshot(model)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert all(p.requires_grad for p in hf_parameters(model).values())


def test_bad_inputs_fail_clearly(factworld, sport_facts):
    loc = make_localization(factworld, "manual", [MLP(1)])
    with pytest.raises(EditError, match="no fact to change"):
        edit(factworld, sport_facts, loc, progress=False)
    with pytest.raises(EditError, match="needs a target"):
        edit(factworld, sport_facts.mark_forget(4, 0, with_targets=False), loc, "edit", progress=False)
    with pytest.raises(ValueError, match="unknown objective"):
        edit(factworld, sport_facts.mark_forget(4, 0), loc, "unlearn-everything", progress=False)
    with pytest.raises(ValueError, match="must be > 0"):
        EditConfig(steps=0)


def test_sequential_edits_compose_and_revert(fresh_factworld, sport_facts):
    model = fresh_factworld()
    original = snapshot(model)
    round1 = sport_facts.mark_forget(8, seed=1)
    done = {f.subject for f in round1.forget_set()}
    rest = sport_facts.subset([f for f in sport_facts if f.subject not in done])
    round2 = rest.mark_forget(8, seed=2)
    relocalized = []

    def localize(m, facts):  # re-localization hook: called on the current (already edited) model each round
        relocalized.append(len(facts.forget_set()))
        return make_localization(m, "manual", [MLP(0), MLP(1), MLP(2)])

    r1, r2 = edit_sequence(model, [round1, round2], localize, "edit", FAST, progress=False)
    assert relocalized == [8, 8]
    assert r2.base_fingerprint == r1.edited_fingerprint
    assert score_facts(model, round2.forget_set()).mean("target_correct") >= 0.95
    assert score_facts(model, round1.forget_set()).mean("target_correct") >= 0.75  # earlier edits mostly survive
    edited = snapshot(model)

    both = compose([r1, r2])
    both.revert(model)
    assert all(torch.equal(original[k], v) for k, v in snapshot(model).items())
    both.apply(model)
    assert all(torch.equal(edited[k], v) for k, v in snapshot(model).items())
    r2.revert(model)
    r1.revert(model)
    assert all(torch.equal(original[k], v) for k, v in snapshot(model).items())
    with pytest.raises(EditError, match="cannot compose"):
        compose([r2, r1])


@pytest.mark.filterwarnings("ignore:the chosen range ends at the final layer")
def test_edit_with_probe_localization(fresh_factworld, sport_facts):
    """The fact-lookup localization found by the probe localizer (issue 4) is editable end to end."""
    from mechedit.localize import localize

    model = fresh_factworld()
    loc = localize(model, sport_facts, "probe", progress=False)
    assert loc.mlps and loc.n_params < n_params(model, [MLP(i) for i in range(arch(model).n_layers)])
    facts = sport_facts.mark_forget(16, seed=0)
    edit(model, facts, loc, "edit", EditConfig(steps=60, lr=3e-3), progress=False)
    assert score_facts(model, facts.forget_set()).mean("target_correct") >= 0.95
    assert score_facts(model, facts.maintain_set()).mean("answer_correct") >= 0.9


def test_forward_from_first_trained_layer_matches_full_forward(tiny_model, sport_facts):
    """The cached-prefix forward (training starts at the earliest trained layer) changes speed, not results."""
    from mechedit.edit.data import token_rows
    from mechedit.edit.prefix import PrefixCache, full_hidden
    from mechedit.tokens import pad_left

    model = tiny_model()
    rows = token_rows(model, [f.render() for f in sport_facts[:6]] + ["Options: tennis, golf. Answer: golf"])
    cache = PrefixCache(model, 1, {"p": rows}, model.tokenizer.pad_token_id)
    assert cache.active
    fast, mask = cache.hidden([("p", i) for i in (6, 0, 3)])
    ids, mask_full = pad_left([rows[i] for i in (6, 0, 3)], model.tokenizer.pad_token_id)
    assert torch.allclose(fast[mask.bool()], full_hidden(model, ids, mask_full)[mask_full.bool()], atol=1e-5)

    facts = sport_facts.mark_forget(8, seed=4)
    loc = make_localization(model, "manual", [Head(1, 1), MLP(1)])
    results = []
    for cached in (True, False):
        results.append(edit(model, facts, loc, "edit", EditConfig(steps=5, lr=3e-3, cache_prefix=cached),
                            progress=False))
        results[-1].revert(model)
    assert results[0].extra["forward_from_first_trained_layer"] and results[0].extra["first_trained_layer"] == 1
    assert not results[1].extra["forward_from_first_trained_layer"]
    for name in results[0].names:
        # same up to float noise (Adam normalizes tiny gradient differences into updates of size ~lr)
        assert torch.allclose(results[0].new[name], results[1].new[name], atol=2e-4), name
    for a, b in zip(results[0].log, results[1].log, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(b["loss"]))


def test_a_shared_memo_changes_no_edit(tiny_model, sport_facts):
    """Edits of one set of weights with one OriginalMemo train exactly as alone (npo needs the forget-prompt and
    fluency references); the memo is hit, and an edited model's fingerprint never reuses the references."""
    from mechedit.memo import OriginalMemo

    model = tiny_model()
    facts = sport_facts.mark_forget(8, seed=4)
    cfg = EditConfig(steps=3, lr=3e-3)
    locs = [make_localization(model, "manual", [MLP(1)]), make_localization(model, "manual", [Head(1, 0), MLP(0)])]
    alone = []
    for loc in locs:
        alone.append(edit(model, facts, loc, "npo", cfg, progress=False))
        alone[-1].revert(model)
    memo = OriginalMemo()
    for loc, ref in zip(locs, alone, strict=True):
        r = edit(model, facts, loc, "npo", cfg, progress=False, memo=memo)
        assert r.log == ref.log and all(torch.equal(r.new[n], ref.new[n]) for n in ref.names)
        r.revert(model)
    assert memo.hits == 2  # the second edit reused both references
    kept = edit(model, facts, locs[0], "npo", cfg, progress=False, memo=memo)  # model stays edited
    hits = memo.hits
    on_top = edit(model, facts, locs[1], "npo", cfg, progress=False, memo=memo)
    assert memo.hits == hits  # other weights, other fingerprint: computed afresh
    on_top.revert(model)
    kept.revert(model)
