"""Representation diagnostics: CKA against a direct numpy HSIC formula, PCA similarity/shift, features, Fisher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechedit.evaluate.diagnostics import (
    diagnose,
    diagonal_fisher,
    fisher_by_layer,
    fisher_overlap,
    layer_features,
    linear_cka,
    pca_shift,
    pca_similarity,
)
from mechedit.models import hf_parameters


def _cka_numpy(X: np.ndarray, Y: np.ndarray) -> float:
    """Kornblith et al. 2019 linear CKA from Gram matrices and an explicit centering matrix (slow reference)."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T

    def hsic(A, B):
        return np.trace(A @ H @ B @ H) / (n - 1) ** 2

    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def test_linear_cka_matches_numpy_formula_and_invariances():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 12))
    Y = X @ rng.normal(size=(12, 7)) + 0.5 * rng.normal(size=(40, 7))
    assert linear_cka(torch.tensor(X), torch.tensor(Y)) == pytest.approx(_cka_numpy(X, Y), rel=1e-9)
    Z = rng.normal(size=(40, 30))
    assert linear_cka(torch.tensor(X), torch.tensor(Z)) == pytest.approx(_cka_numpy(X, Z), rel=1e-9)
    Q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert linear_cka(torch.tensor(X), torch.tensor(3.0 * X @ Q + 5.0)) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.unchecked
def test_linear_cka_bad_input():
    rng = np.random.default_rng(0)
    X, Z = rng.normal(size=(40, 12)), rng.normal(size=(40, 30))
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(torch.tensor(X), torch.tensor(Z[:10]))
    with pytest.raises(ValueError, match="zero variance"):
        linear_cka(torch.ones(5, 3), torch.tensor(Z[:5]))


def test_pca_similarity_and_shift_on_known_geometry():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 6)) * np.array([5.0, 2.0, 1.0, 0.5, 0.2, 0.1])  # PC1 = e0, PC2 = e1
    X = torch.tensor(X)
    cos, abs_cos = pca_similarity(X, -X)  # negated features: same axis, PC1 sign fixed by convention
    assert abs_cos == pytest.approx(1.0, abs=1e-9) and abs(cos) == pytest.approx(1.0, abs=1e-9)
    swapped = X[:, [1, 0, 2, 3, 4, 5]]  # the main axis moves to e1: orthogonal PC1
    assert pca_similarity(X, swapped)[1] < 0.1
    delta = np.array([2.0, 1.0, 0, 0, 0, 0])
    s = pca_shift(X, X + torch.tensor(delta))
    # reference: eigen-decomposition of the covariance with numpy, signs as in principal_components
    evals, evecs = np.linalg.eigh(np.cov(X.numpy(), rowvar=False))
    order = np.argsort(evals)[::-1][:2]
    pcs = evecs[:, order].T
    pcs *= np.sign(pcs[np.arange(2), np.abs(pcs).argmax(1)])[:, None]
    expected = pcs @ delta / np.sqrt(evals[order])
    np.testing.assert_allclose(s["shift_std"], expected, rtol=1e-8)
    np.testing.assert_allclose(s["edited"], pcs @ (X.numpy().mean(0) + delta), rtol=1e-8, atol=1e-10)


def _check_features_against_unpadded_runs(model, texts, batch_size):
    n_layers = model.cfg.n_layers
    last = layer_features(model, texts, pooling="last", batch_size=batch_size, progress=False)
    mean = layer_features(model, texts, pooling="mean", batch_size=batch_size, progress=False)
    assert last.shape == (n_layers, len(texts), model.cfg.d_model)
    for i, text in enumerate(texts):  # reference: each text alone through the bridge, no padding, no packing
        ids = model.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
        for layer in range(n_layers):
            act = cache[f"blocks.{layer}.hook_resid_post"][0].float()
            torch.testing.assert_close(last[layer, i], act[-1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(mean[layer, i], act[1:].mean(0), atol=1e-4, rtol=1e-4)  # position 0 out


def test_layer_features_last_and_mean_pooling_match_unpadded_runs(factworld):
    _check_features_against_unpadded_runs(
        factworld, ["Kalo Mirat plays the sport of", "The sport played by Ven Dextor is really"], 32)


def test_layer_features_are_every_familys_resid_post(family_model):
    """Packed features (HF decoder-layer outputs) are the bridge's hook_resid_post in every family, across
    packed chunks and texts sharing their opening tokens."""
    texts = ["Kalo Mirat plays the sport of", "Kalo Mirat plays golf", "The sport played by Ven Dextor is",
             "Ven Dextor"]
    _check_features_against_unpadded_runs(family_model(), texts, 3)


def test_diagonal_fisher_is_pad_masked_and_leaves_the_model_untouched(factworld):
    from mechedit.evaluate.answers import answer_batch, answer_loss

    prompts = ["Kalo Mirat plays the sport of", "The sport played by Ven Dextor is"]
    answers = ["golf", "tennis"]
    before = {n: p.detach().clone() for n, p in hf_parameters(factworld).items()}
    fisher = diagonal_fisher(factworld, prompts, answers, batch_size=2, progress=False)
    params = hf_parameters(factworld)
    assert all(p.grad is None for p in params.values())
    assert all(torch.equal(before[n], p.detach()) for n, p in params.items())
    # reference: the same batch loss assembled from unpadded single examples (token-weighted mean)
    names = list(params)
    total, n_tokens = 0.0, 0
    for p, a in zip(prompts, answers, strict=True):
        ids, mask, labels = answer_batch(factworld.tokenizer, [p], [a])
        k = int((labels != -100).sum())
        total = total + answer_loss(factworld, ids, mask, labels) * k
        n_tokens += k
    grads = torch.autograd.grad(total / n_tokens, [params[n] for n in names])
    for n, g in zip(names, grads, strict=True):
        torch.testing.assert_close(fisher[n], g.float() ** 2, atol=1e-9, rtol=1e-3)
    assert len(fisher_by_layer(fisher, 4)) == 4
    broken = dict(fisher)
    broken.pop(names[0])
    with pytest.raises(ValueError, match="different parameters"):
        fisher_overlap(fisher, broken, 4)


def test_layers_only_fisher_is_the_layer_part_of_the_full_fisher_in_every_family(family_model):
    """The diagnostics' Fisher (decoder layers only) equals those entries of the full Fisher bit for bit, and every
    layer of every family (GPT-2 names them transformer.h.L) is found."""
    from patching.families import family

    model = family_model()
    prompts, answers = ["Kalo Mirat plays the sport of", "The sport played by Ven Dextor is"], ["golf", "tennis"]
    full = diagonal_fisher(model, prompts, answers, batch_size=1, progress=False)
    layers = diagonal_fisher(model, prompts, answers, batch_size=1, layers_only=True, progress=False)
    prefix = family(model).layers + "."
    assert set(layers) == {n for n in full if n.startswith(prefix)}
    assert all(torch.equal(layers[n], full[n]) for n in layers)
    assert any(float(f.sum()) > 0 for f in layers.values())
    per_layer = fisher_by_layer(layers, 2)
    assert len(per_layer) == 2 and all(v > 0 for v in per_layer)


def test_diagnose_identity_model(factworld, sport_facts):
    facts = list(sport_facts)[:4]
    d = diagnose(factworld, factworld, facts, fisher=True, progress=False)
    assert d.n_examples == 16
    assert np.allclose(d.cka, 1.0, atol=1e-6) and np.allclose(d.pca_abs_cos, 1.0, atol=1e-6)
    assert np.allclose([s["shift_std"] for s in d.pca_shift], 0.0, atol=1e-6)
    assert np.allclose(d.fisher_cosine, 1.0, atol=1e-6) and d.fisher_original == d.fisher_edited
