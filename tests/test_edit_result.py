"""EditResult: bit-exact revert/apply, safetensors + JSON round trip, refusal on the wrong model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import one_thread, snapshot

from mechedit.components import MLP, Head
from mechedit.edit import EditConfig, EditError, EditResult, edit
from mechedit.localize.localization import make_localization
from mechedit.models import hf_parameters, load_model


@pytest.fixture(scope="module")
def edited(sport_facts):
    """(private factworld copy carrying an edit, original parameters, edited parameters, result)."""
    with one_thread():
        model = load_model("factworld")
        original = snapshot(model)
        loc = make_localization(model, "manual", [MLP(1), Head(2, 1), Head(3, 0), Head(3, 1)])
        result = edit(model, sport_facts.mark_forget(8, seed=3), loc, "edit", EditConfig(steps=8, lr=3e-3),
                      progress=False)
        yield model, original, snapshot(model), result


def same(model, params) -> bool:
    return all(torch.equal(v, params[k]) for k, v in hf_parameters(model).items())


def test_revert_and_apply_are_bit_exact(edited):
    model, original, after, result = edited
    assert not same(model, original)
    result.revert(model)
    assert same(model, original)
    with pytest.raises(EditError, match="does not carry this edit"):
        result.revert(model)
    result.apply(model)
    assert same(model, after)
    with pytest.raises(EditError, match="already applied"):
        result.apply(model)


def test_delta_covers_only_owned_entries(edited):
    model, original, after, result = edited
    q3 = "model.layers.3.self_attn.q_proj.weight"
    k3 = "model.layers.3.self_attn.k_proj.weight"  # heads 0 and 1 form kv group 0: its k/v rows are owned
    assert {q3, k3, "model.layers.2.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"} <= set(result.names)
    assert "model.layers.2.self_attn.k_proj.weight" not in result.names  # lone head 2.1: shared k/v frozen
    for name, d in result.delta.items():
        changed = (after[name] != original[name])
        assert torch.equal(d != 0, changed), name
    assert not bool((result.delta[q3][32:] != 0).any())  # heads 2 and 3 of layer 3 untouched
    assert result.index["model.layers.1.mlp.up_proj.weight"] is None  # whole tensors stored whole


def test_save_load_round_trip(edited, tmp_path):
    model, original, after, result = edited
    result.save(tmp_path / "ed")
    meta = json.loads((tmp_path / "ed" / "edit.json").read_text())
    assert meta["objective"] == "edit" and meta["n_params_trained"] == result.n_params_trained
    loaded = EditResult.load(tmp_path / "ed", model=model)
    assert loaded.config == result.config and loaded.log == result.log
    assert loaded.localization.components == result.localization.components
    for name in result.names:
        assert torch.equal(loaded.old[name], result.old[name]) and torch.equal(loaded.new[name], result.new[name])
    loaded.revert(model)
    assert same(model, original)
    loaded.apply(model)
    assert same(model, after)


def test_wrong_model_is_refused(edited, tmp_path):
    model, original, after, result = edited
    result.save(tmp_path / "ed")
    other = load_model("factworld")
    with torch.no_grad():
        hf_parameters(other)["model.embed_tokens.weight"].add_(1e-3)  # another base model
    with pytest.raises(EditError, match="fingerprint"):
        EditResult.load(tmp_path / "ed", model=other)
    with pytest.raises(EditError, match="fingerprint"):
        result.apply(other)
    with pytest.raises(FileNotFoundError, match="not an edit directory"):
        EditResult.load(tmp_path)
