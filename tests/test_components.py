"""Components own exactly the parameters (or slices) they should, including grouped-query k/v."""

from __future__ import annotations

import pytest

from mechedit.components import (
    MLP,
    Attn,
    Head,
    component_slices,
    n_params,
    parse_component,
    trainable_masks,
)
from mechedit.localize.localization import Localization, cut_to_budget, make_localization
from patching.model import arch


def test_shape_and_counts(factworld):
    s = arch(factworld)
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_head) == (4, 4, 2, 16)
    assert n_params(factworld, [MLP(1)]) == 3 * s.d_model * s.d_mlp
    lone = n_params(factworld, [Head(1, 0)])
    assert lone == 2 * s.d_head * s.d_model  # q rows + o columns; k/v shared with head 1 stay frozen
    pair = n_params(factworld, [Head(1, 0), Head(1, 1)])
    assert pair == 2 * lone + 2 * s.d_head * s.d_model  # the whole group: its k/v rows join
    assert n_params(factworld, [Attn(1)]) == n_params(factworld, [Head(1, h) for h in range(4)])
    assert n_params(factworld, [Head(1, 0)], kv="always") == lone + 2 * s.d_head * s.d_model


def test_head_masks_do_not_touch_neighbours(factworld):
    s = arch(factworld)
    masks = trainable_masks(factworld, [Head(2, 3)])
    q = masks["model.layers.2.self_attn.q_proj.weight"]
    o = masks["model.layers.2.self_attn.o_proj.weight"]
    assert q[3 * s.d_head: 4 * s.d_head].all() and not q[: 3 * s.d_head].any()
    assert o[:, 3 * s.d_head:].all() and not o[:, : 3 * s.d_head].any()
    assert "model.layers.2.self_attn.k_proj.weight" not in masks


def test_out_of_range_and_parsing(factworld):
    with pytest.raises(ValueError, match="layer 9 out of range"):
        component_slices(factworld, [MLP(9)])
    with pytest.raises(ValueError, match="head 7 out of range"):
        component_slices(factworld, [Head(0, 7)])
    assert parse_component("head.2.1") == Head(2, 1) and str(parse_component("mlp.3")) == "mlp.3"
    with pytest.raises(ValueError, match="cannot parse"):
        parse_component("neuron.1")


def test_localization_json_and_budget(factworld, tmp_path):
    loc = make_localization(factworld, "probe", [MLP(1), MLP(2)], {"mlp.1": 0.5}, probe_accuracy=[0.2, 0.5, 0.9, 1.0])
    loc.save(tmp_path / "loc.json")
    again = Localization.load(tmp_path / "loc.json")
    assert again == loc
    ranked = [MLP(3), Head(0, 0), MLP(0), Head(0, 1)]
    cut = cut_to_budget(factworld, ranked, loc.n_params)
    assert n_params(factworld, cut) <= loc.n_params
    assert cut[:2] == [MLP(3), Head(0, 0)]


@pytest.mark.smollm2
def test_smollm2_gqa_shape(smollm2):
    s = arch(smollm2)
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.group_size) == (30, 9, 3, 3)
    assert n_params(smollm2, [MLP(0)]) == 3 * 576 * 1536
