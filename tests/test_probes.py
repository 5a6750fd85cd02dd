"""probes/: one-pass activation collection, batched logistic probes (vs sklearn), mean-difference probes, splits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from probes import (
    LogisticProbe,
    MeanDiffProbe,
    collect_activations,
    layer_hooks,
    rare_classes,
    stratified_split,
)


@pytest.fixture(scope="module")
def city_acts(factworld, city_batch):
    """resid_post of every layer (plus embeddings) at the last token: accuracy goes from chance to 1."""
    facts, batch = city_batch
    hooks = ["blocks.0.hook_resid_pre"] + layer_hooks(factworld)
    X = collect_activations(factworld, batch.input_ids, batch.attention_mask, batch.last, hooks, progress=False)
    return X, np.array([f.answer for f in facts])


def _hook_count(model) -> int:
    return sum(len(hp.fwd_hooks) for hp in set(model.hook_dict.values()))


# ------------------------------------------------------------------ collection


def test_collect_matches_full_cache(factworld, city_batch):
    """Gathered activations equal a full run_with_cache at the same positions (slow reference), any batching."""
    _, batch = city_batch
    n = 40
    ids, mask = batch.input_ids[:n], batch.attention_mask[:n]
    pos = torch.stack([batch.subject_last[:n], batch.last[:n], batch.subject_start[:n]], 1)
    hooks = ["blocks.1.hook_resid_post", "blocks.2.hook_mlp_out", "blocks.3.hook_resid_mid", "blocks.0.hook_attn_out"]
    fast = collect_activations(factworld, ids, mask, pos, hooks, batch_size=7, progress=False)
    assert fast.shape == (4, n, 3, 64)
    _, cache = factworld.run_with_cache(ids, attention_mask=mask)
    for h, name in enumerate(hooks):
        ref = cache[name][torch.arange(n)[:, None], pos]
        torch.testing.assert_close(fast[h], ref, rtol=1e-4, atol=1e-5)
    one = collect_activations(factworld, ids, mask, pos[:, 0], hooks[:1], batch_size=64, stop_early=False,
                              truncate=False, progress=False)
    assert one.shape == (1, n, 64)
    torch.testing.assert_close(one[0], fast[0, :, 0], rtol=1e-4, atol=1e-5)
    z = collect_activations(factworld, ids, mask, pos[:, 0], ["blocks.2.attn.hook_z"], progress=False)
    assert z.shape == (1, n, 4 * 16)  # heads * d_head flattened


def test_collect_leaves_model_untouched(factworld, city_batch):
    """No hook survives a collection (even one that fails) and the logits do not change."""
    _, batch = city_batch
    ids, mask = batch.input_ids[:8], batch.attention_mask[:8]
    before, n_hooks = factworld(ids, attention_mask=mask), _hook_count(factworld)
    collect_activations(factworld, ids, mask, batch.last[:8], layer_hooks(factworld), progress=False)
    with pytest.raises(ValueError, match="NaN/inf"), factworld.hooks(
        fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: x * float("nan"))]
    ):
        collect_activations(factworld, ids, mask, batch.last[:8], ["blocks.1.hook_resid_post"], progress=False)
    assert _hook_count(factworld) == n_hooks
    torch.testing.assert_close(factworld(ids, attention_mask=mask), before, rtol=0, atol=0)


@pytest.mark.unchecked
def test_collect_bad_input(factworld, city_batch):
    """Unknown hooks list the valid patterns; bad positions name the example."""
    _, batch = city_batch
    ids, mask, last = batch.input_ids[:4], batch.attention_mask[:4], batch.last[:4]
    msg = r"unknown hook name.*blocks\.0\.hook_resid_post.*blocks\.\{L\}\.hook_resid_post"
    with pytest.raises(ValueError, match=msg):
        collect_activations(factworld, ids, mask, last, ["blocks.0.hook_resid_postt"], progress=False)
    with pytest.raises(ValueError, match="blocks.{L}"):
        collect_activations(factworld, ids, mask, last, ["blocks.9.hook_resid_post"], progress=False)
    with pytest.raises(ValueError, match="duplicated"):
        collect_activations(factworld, ids, mask, last, ["hook_embed", "hook_embed"], progress=False)
    with pytest.raises(ValueError, match="example 2 out of range"):
        collect_activations(factworld, ids, mask, torch.tensor([1, 2, -1, 3]), ["hook_embed"], progress=False)
    with pytest.raises(ValueError, match="out of range"):
        collect_activations(factworld, ids, mask, last + 1, ["hook_embed"], progress=False)
    rows = (batch.attention_mask == 0).any(1).nonzero().flatten()
    assert len(rows), "paraphrase prompts of different lengths must produce padding"
    pos = batch.last.clone()
    pos[rows[0]] = 0
    with pytest.raises(ValueError, match=f"example {int(rows[0])} point at padding"):
        collect_activations(factworld, batch.input_ids, batch.attention_mask, pos, ["hook_embed"], progress=False)
    with pytest.raises(ValueError, match="positions must be"):
        collect_activations(factworld, ids, mask, last[:3], ["hook_embed"], progress=False)
    with pytest.raises(ValueError, match="different activation widths"):
        collect_activations(factworld, ids, mask, last, ["hook_embed", "blocks.0.mlp.hook_post"], progress=False)


# ------------------------------------------------------------------ logistic probes


def _sklearn_scores(X, y, train, test, C=1.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    accs, probas = [], []
    for layer in range(X.shape[0]):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000, tol=1e-8))
        clf.fit(X[layer, train].numpy(), y[train])
        accs.append(clf.score(X[layer, test].numpy(), y[test]))
        probas.append(clf.predict_proba(X[layer, test].numpy()))
    return np.array(accs), np.stack(probas)


@pytest.mark.parametrize("binary", [False, True], ids=["8-class", "binary"])
def test_logistic_matches_sklearn(city_acts, binary):
    """Per-layer test accuracy within 0.02 of sklearn (and probabilities close) on factworld activations."""
    X, y = city_acts
    if binary:
        y = np.where(np.isin(y, ["Paris", "Tokyo", "Cairo", "Lima"]), "first", "second")
    train, test = stratified_split(y, test_size=0.25, seed=0)
    ours = LogisticProbe(C=1.0).fit(X[:, train], y[train]).score(X[:, test], y[test])  # default tol (sklearn's)
    ref, ref_proba = _sklearn_scores(X, y, train, test)  # solved tightly
    assert np.abs(ours - ref).max() <= 0.02, (ours, ref)
    tight = LogisticProbe(C=1.0, tol=1e-7).fit(X[:, train], y[train])  # same objective: same solution
    assert np.abs(tight.predict_proba(X[:, test]).numpy() - ref_proba).max() < 2e-3
    assert ours[0] < 0.5 and ours[-1] > 0.95  # the curve really rises (the comparison is not vacuous)


def test_logistic_adam_and_determinism(city_acts):
    """Adam reaches the L-BFGS solution's accuracy; fitting is deterministic; coef_ works in raw space."""
    X, y = city_acts
    train, test = stratified_split(y, seed=1)
    a = LogisticProbe().fit(X[:, train], y[train])
    b = LogisticProbe().fit(X[:, train], y[train])
    torch.testing.assert_close(a.weight_, b.weight_, rtol=0, atol=0)
    with warnings.catch_warnings():  # whether 400 Adam steps meet the tolerance depends on the model's data
        warnings.simplefilter("ignore", UserWarning)
        adam = LogisticProbe(solver="adam", max_iter=400, lr=0.05).fit(X[:, train], y[train])
    with pytest.warns(UserWarning, match="max_iter"):  # stopping before convergence is reported
        LogisticProbe(solver="adam", max_iter=3, lr=0.05).fit(X[:, train], y[train])
    assert np.abs(adam.score(X[:, test], y[test]) - a.score(X[:, test], y[test])).max() <= 0.05
    assert adam.loss_.max() < a.loss_.max() * 1.05
    raw = torch.einsum("lnd,lkd->lnk", X[:, test].double(), a.coef_) + a.intercept_[:, None]
    torch.testing.assert_close(raw, a.decision_function(X[:, test]))


@pytest.mark.unchecked
def test_logistic_bad_input(city_acts):
    X, y = city_acts
    with pytest.raises(ValueError, match="at least 2 classes"):
        LogisticProbe().fit(X, np.full(len(y), "Paris"))
    lonely = y.astype(object)
    lonely[0] = "Atlantis"
    with pytest.raises(ValueError, match="Atlantis"):
        LogisticProbe().fit(X, lonely)
    with pytest.raises(ValueError, match=r"\[layers, examples, d\]"):
        LogisticProbe().fit(X[0], y)
    with pytest.raises(ValueError, match="labels"):
        LogisticProbe().fit(X, y[:-1])
    with pytest.raises(RuntimeError, match="not fitted"):
        LogisticProbe().predict(X)
    bad = X.clone()
    bad[1, 3, 5] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        LogisticProbe().fit(bad, y)
    with pytest.raises(ValueError, match="C must be positive"):
        LogisticProbe(C=0)


# ------------------------------------------------------------------ splits and mean-difference probes


def test_stratified_split():
    y = np.array(["a"] * 20 + ["b"] * 8 + ["c"] * 4)
    train, test = stratified_split(y, test_size=0.25, seed=3)
    assert set(train.tolist()).isdisjoint(test.tolist()) and len(train) + len(test) == len(y)
    assert [int((y[test] == c).sum()) for c in "abc"] == [5, 2, 2]
    again = stratified_split(y, test_size=0.25, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], test)
    assert not torch.equal(stratified_split(y, test_size=0.25, seed=4)[1], test)
    with pytest.raises(ValueError, match=r"\{'c': 3\}"):
        stratified_split(y[:-1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        stratified_split(["a"] * 10)
    assert rare_classes(y, 5) == {"c": 4}


def test_mean_diff_probe():
    """Closed-form direction equals the class-mean difference (numpy reference) and separates shifted Gaussians."""
    g = torch.Generator().manual_seed(0)
    n, d = 400, 32
    y = (torch.arange(n) % 2).numpy()
    X = torch.randn(3, n, d, generator=g, dtype=torch.float64)
    shift = torch.zeros(3, d, dtype=torch.float64)
    shift[1, 0], shift[2, :4] = 1.0, 2.0
    X = X + shift[:, None] * torch.as_tensor(y, dtype=torch.float64)[None, :, None]
    probe = MeanDiffProbe().fit(X, y)
    ref = X[:, y == 1].numpy().mean(1) - X[:, y == 0].numpy().mean(1)
    np.testing.assert_allclose(probe.direction_.numpy(), ref, rtol=1e-10)
    acc = probe.score(X, y)
    assert acc[0] < 0.6 and acc[1] > 0.65 and acc[2] > 0.95
    assert torch.allclose(probe.unit_direction.norm(dim=-1), torch.ones(3, dtype=torch.float64))
    std = MeanDiffProbe(standardize=True).fit(X, y)
    assert std.score(X, y)[2] > 0.95
    with pytest.raises(ValueError, match="exactly 2 classes"):
        MeanDiffProbe().fit(X, torch.arange(n) % 3)
