"""Every supported family (tiny random models): bridge = HF, batched patching = reference, masked edits own only
their entries and revert bit-exactly, the prefix-cached forward = the full forward, probes collect the right hooks.

The factworld tests (test_patching.py, test_edit.py) also check trained-knowledge properties (effects of a given
size, the true answer beating the noise); here the models are random, so only the equivalences are checked, in
float32 and bfloat16, once per family of ``conftest.FAMILY_CONFIGS``.
"""

from __future__ import annotations

import types

import pytest
import torch
from conftest import one_thread, snapshot

from mechedit.components import MLP, Attn, Head, n_params, trainable_masks
from mechedit.edit import EditConfig, edit
from mechedit.edit.data import token_rows
from mechedit.edit.prefix import PrefixCache, full_hidden
from mechedit.evaluate.answers import answer_batch, answer_loss
from mechedit.localize.localization import make_localization
from mechedit.localize.patch_setup import patch_setup
from mechedit.models import hf_model_of, hf_parameters, load_model, save_hf, wrap_hf
from mechedit.tokens import pad_left
from patching.activation import activation_patch
from patching.corrupt import gaussian_noise, subject_mask
from patching.families import UnsupportedArchitecture, family, final_hidden, packed_hidden, position_ids
from patching.packing import plan
from patching.path import path_patch
from patching.reference import activation_patch_reference, path_patch_reference, rome_trace_reference
from patching.tracing import noise_seed, rome_trace
from probes.collect import collect_activations

TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}  # bf16: 8 mantissa bits, summed in another order


@pytest.fixture(autouse=True, scope="module")
def single_thread_module():
    """Tiny models: one intra-op thread is faster than two on a shared, busy machine."""
    with one_thread():
        yield


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def dtype(request):
    return request.param


@pytest.fixture(scope="module")
def tiny(family_model, dtype):
    return family_model(dtype)


@pytest.fixture(scope="module")
def setup(tiny, world_facts):
    return patch_setup(tiny, world_facts.sample(6, seed=1), corruption="swap", seed=0)


def _args(s):
    return s.batch.input_ids, s.batch.attention_mask, s.corruption, s.metric


def _gap(a, b) -> float:
    assert a.labels == b.labels
    return max([abs(a.clean - b.clean), abs(a.corrupt - b.corrupt)]
               + [abs(x - y) for x, y in zip(a.values, b.values, strict=True)])


def test_bridge_logits_equal_hf_logits(tiny, setup, dtype):
    b = setup.batch
    with torch.no_grad():
        bridge = tiny(b.input_ids, attention_mask=b.attention_mask)
        hf = hf_model_of(tiny)(b.input_ids, attention_mask=b.attention_mask,
                               position_ids=position_ids(tiny, b.attention_mask)).logits
    assert bridge.dtype == dtype  # no silent float32 copy
    real = b.attention_mask.bool()
    assert (bridge[real] - hf[real]).abs().max() <= TOL[dtype] * max(1.0, float(hf.abs().max()))


def test_logit_diff_on_a_few_unembedded_columns_is_the_full_metric(tiny, setup, dtype):
    """Patching evaluates logit differences on only the metric's vocabulary columns (``narrowed``): the same
    logits (soft-cap included) and the same metric as the full unembedding."""
    from patching.metrics import logit_diff, narrowed
    from patching.model import final_logits

    torch.manual_seed(0)
    x = torch.randn(6, tiny.cfg.d_model).to(dtype) * 3
    metric = logit_diff(torch.tensor([5, 9, 5, 2, 7, 9]), torch.tensor([9, 2, 11, 5, 5, 3]))
    columns, small = narrowed(metric)
    assert columns.tolist() == [2, 3, 5, 7, 9, 11]
    with torch.no_grad():
        full, few = final_logits(tiny, x), final_logits(tiny, x, columns)
    scale = max(1.0, float(full.abs().max()))
    assert (few - full[:, columns]).abs().max() <= TOL[dtype] * scale
    assert abs(float(small(few)) - float(metric(full))) <= 2 * TOL[dtype] * scale
    assert narrowed(lambda logits: logits[:, 0].mean())[0] is None  # any other metric sees the full logits


def test_activation_and_path_patching_match_reference(tiny, setup, dtype):
    tol = TOL[dtype]
    fast = activation_patch(tiny, *_args(setup), components="all", max_rows=20)
    slow = activation_patch_reference(tiny, *_args(setup), components="all")
    assert len(fast.labels) == 2 * 4 + 2 and _gap(fast, slow) < tol
    assert max(abs(e) for e in fast.effects) > 1e-3  # the patches do something
    b = setup.batch
    mask = subject_mask(b.subject_start, b.subject_last, b.input_ids.shape[1])
    some = ["head.0.1", "head.1.2", "mlp.0", "mlp.1"]
    fast = activation_patch(tiny, *_args(setup), components=some, positions=mask, direction="noising")
    slow = activation_patch_reference(tiny, *_args(setup), components=some, positions=mask, direction="noising")
    assert _gap(fast, slow) < tol
    fast = path_patch(tiny, *_args(setup), senders="all", receivers="logits")
    slow = path_patch_reference(tiny, *_args(setup), senders="all", receivers="logits")
    assert _gap(fast, slow) < tol
    senders = ["head.0.0", "head.0.3", "mlp.0", "head.1.1", "mlp.1"]
    fast = path_patch(tiny, *_args(setup), senders=senders, receivers=["head.1.0", "head.1.3"], max_rows=12)
    slow = path_patch_reference(tiny, *_args(setup), senders=senders, receivers=["head.1.0", "head.1.3"])
    assert _gap(fast, slow) < tol
    assert max(abs(fast.values[i] - fast.clean) for i in range(3)) > 1e-4  # layer-0 senders reach layer 1


def test_rome_trace_matches_reference(tiny, setup, dtype):
    b = setup.batch
    args = (b.input_ids, b.attention_mask, b.subject_start, b.subject_last, setup.answer_ids)
    res = rome_trace(tiny, *args, window=1, n_samples=1, seed=7)
    noise = gaussian_noise(tiny, b.input_ids, b.subject_start, b.subject_last)
    slow = rome_trace_reference(tiny, b.input_ids, b.attention_mask, [noise_seed(7, 0)], noise, setup.answer_ids,
                                b.subject_last, window=1)
    assert max(abs(x - y) for x, y in zip(res.values, slow, strict=True)) < TOL[dtype]


def test_masked_edit_changes_only_owned_entries_and_reverts(family_model, sport_facts, dtype):
    model = family_model(dtype)
    comps = [Head(1, 1), MLP(0)]
    before = snapshot(model)
    masks = trainable_masks(model, comps)
    result = edit(model, sport_facts.mark_forget(4, seed=1), make_localization(model, "manual", comps), "edit",
                  EditConfig(steps=3, lr=1e-2, weight_decay=0.5, fluency_weight=0.0, retain_batch=4),
                  progress=False)
    after = snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(masks)
    assert any("mlp" in k for k in changed) and any(m is not None for m in masks.values())
    for name, m in masks.items():
        if m is not None:  # partly owned: the unowned entries are bit-identical
            assert torch.equal(after[name][~m], before[name][~m]), name
    assert result.n_params_trained == n_params(model, comps)
    result.revert(model)
    assert all(torch.equal(v, before[k]) for k, v in snapshot(model).items())


def test_ownership_follows_the_family_layout(family_model):
    model = family_model()
    fam, params = family(model), hf_parameters(model)
    a = model.cfg
    d_head = a.d_head
    whole = n_params(model, [Attn(0)])
    heads = n_params(model, [Head(0, h) for h in range(a.n_heads)])
    o_bias = fam.attn_param(0, "o", "bias")
    assert whole == heads + (params[o_bias].numel() if o_bias in params else 0)  # all heads = the layer, but o bias
    m = trainable_masks(model, [Head(0, 1)], kv="always")
    q, o = m[fam.attn_param(0, "q")], m[fam.attn_param(0, "o")]
    assert q[d_head:2 * d_head].all() and int(q.sum()) == d_head * q.shape[1]
    assert int(o.sum()) == d_head * a.d_model and o.narrow(fam.o_heads_dim, d_head, d_head).all()
    assert not any(f".{fam.fused_qkv}." in k for k in params) if fam.fused_qkv else True


def test_prefix_cached_forward_equals_full_forward(tiny, sport_facts, dtype):
    rows = token_rows(tiny, [f.render() for f in sport_facts[:5]] + ["Options: tennis, golf. Answer: golf"])
    pad = tiny.tokenizer.pad_token_id
    cache = PrefixCache(tiny, 1, {"p": rows}, pad)
    assert cache.active or dtype == torch.bfloat16  # bf16 may miss the check's 1e-4 and fall back (still exact)
    cache.active = True
    fast, mask = cache.hidden([("p", i) for i in (5, 0, 3)])
    ids, mask_full = pad_left([rows[i] for i in (5, 0, 3)], pad)
    full = full_hidden(tiny, ids, mask_full)
    assert (fast[mask.bool()] - full[mask_full.bool()]).abs().max() <= TOL[dtype] * max(1.0, float(full.abs().max()))


def test_packed_forward_equals_padded_forward(tiny, sport_facts, dtype):
    shared = ["Options: tennis, golf. Answer: golf", "Options: tennis, golf. Answer: tennis", "Options: chess"]
    rows = token_rows(tiny, [f.render() for f in sport_facts[:9]] + shared)
    ids, mask = pad_left(rows, tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        padded = final_hidden(tiny, ids, mask)
        packed = [final_hidden(tiny, ids, mask, pack=True)]
        p = plan(ids, mask, capacity=2 * int(mask.sum(1).max()), span=1)  # several rows per sequence, several sequences
        assert 1 < p.ids.shape[0] < len(rows)
        assert len(p.slots) < int(mask.sum())  # rows from one template laid their opening tokens once
        packed.append(p.unpack(packed_hidden(tiny, p)))
    real = mask.bool()
    for h in packed:
        assert (h[real] - padded[real]).abs().max() <= TOL[dtype] * max(1.0, float(padded.abs().max()))
        assert not h[~real].any()  # padding comes back as zeros


def test_answer_loss_and_its_gradients_equal_the_bridge_forward(family_model, sport_facts):
    model = family_model()
    facts = sport_facts[:6]
    ids, mask, labels = answer_batch(model.tokenizer, [f.render() for f in facts], [f.answer for f in facts])
    params = list(hf_parameters(model).values())
    for p in params:
        p.requires_grad_(True)
    logits = model(ids, attention_mask=mask)  # the slow reference: the bridge's forward with every position
    pred, target = logits[:, :-1].float(), labels[:, 1:]
    ref = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=-100)
    loss = answer_loss(model, ids, mask, labels)
    assert abs(float(loss) - float(ref)) <= 1e-5 * max(1.0, abs(float(ref)))
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want = torch.autograd.grad(ref, params, allow_unused=True)
    for name, g, w in zip(hf_parameters(model), got, want, strict=True):
        assert (g is None) == (w is None), name
        if w is not None:
            assert (g - w).abs().max() <= 1e-4 * max(1e-6, float(w.abs().max())) + 1e-7, name


def test_probes_collect_the_right_hooks(tiny, setup, dtype):
    b = setup.batch
    names = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"]
    got = collect_activations(tiny, b.input_ids, b.attention_mask, b.subject_last, names, progress=False)
    assert got.dtype == torch.float32  # probes fit in float32 whatever the model's dtype
    cache = {}
    with torch.no_grad(), tiny.hooks(fwd_hooks=[(n, lambda x, hook, n=n: cache.__setitem__(n, x)) for n in names]):
        tiny(b.input_ids, attention_mask=b.attention_mask)
    rows = torch.arange(len(b.input_ids))
    for i, n in enumerate(names):
        want = cache[n][rows, b.subject_last].float()
        # collection truncates after the position: causal, so equal up to rounding of the shorter forward
        assert (got[i] - want).abs().max() <= TOL[dtype] * max(1.0, float(want.abs().max())), n


def test_fused_qkv_save_and_reload_round_trip(tmp_path, factworld):
    from conftest import make_tiny

    model = make_tiny(factworld.tokenizer, "gpt2")
    with torch.no_grad():
        hf_parameters(model)["transformer.h.0.attn.q.weight"][:, 0] += 1.0  # an edit through the split view
    save_hf(model, tmp_path / "m")
    back = load_model(str(tmp_path / "m"))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(model(ids), back(ids), atol=1e-5)


@pytest.mark.unchecked
def test_unsupported_family_fails_at_load_naming_the_supported_ones():
    from transformers import BloomConfig

    with pytest.raises(UnsupportedArchitecture, match=r"'bloom'.*supports llama, mistral, qwen2, gemma, gemma2, gpt2"):
        wrap_hf(types.SimpleNamespace(config=BloomConfig()), None, "bloom", prepend_bos=False)


# ---------------------------------------------------------------- precision, devices, device_map


def test_load_model_in_bfloat16_keeps_every_tensor_bf16():
    model = load_model("factworld", dtype="bfloat16")
    assert {p.dtype for p in hf_parameters(model).values()} == {torch.bfloat16}  # no float32 copy anywhere
    with torch.no_grad():
        assert model(torch.tensor([[5, 6, 7]])).dtype == torch.bfloat16


@pytest.mark.parametrize(("device", "dtype", "culprit"), [
    ("cpu", "float64", "--dtype 'float64' is not supported"),
    ("cpu", "float16", "--dtype float16 on --device cpu cannot train"),
    ("cuda:3", "float32", "--device 'cuda:3' does not exist here"),
    ("quantum", "float32", "--device 'quantum' is not a device name"),
])
def test_bad_device_or_dtype_is_one_line_naming_it(device, dtype, culprit):
    from mechedit.models import ModelNotAvailable, check_precision

    if device.startswith("cuda") and torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    with pytest.raises(ModelNotAvailable, match=culprit.replace("(", r"\(")):
        check_precision(device, dtype)
    from typer.testing import CliRunner

    from mechedit.cli import app

    res = CliRunner().invoke(app, ["compare", "factworld", "factworld", "--device", device, "--dtype", dtype,
                                   "--out", "/nonexistent/never-written"])
    assert res.exit_code == 2 and culprit in res.output and len(res.output.strip().splitlines()) == 1


def test_device_map_is_passed_to_hugging_face(tmp_path, factworld, monkeypatch):
    """A map placing every layer on "cpu" (what a multi-GPU map looks like, on the one device CI has)."""
    import transformers
    from conftest import make_tiny

    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))

    model = make_tiny(factworld.tokenizer, "qwen2")
    save_hf(model, tmp_path / "m")
    layers = {f"model.layers.{i}": "cpu" for i in range(2)}
    device_map = {"model.embed_tokens": "cpu", **layers, "model.norm": "cpu", "model.rotary_emb": "cpu",
                  "lm_head": "cpu"}
    back = load_model(str(tmp_path / "m"), dtype="bfloat16", device_map=device_map)
    assert seen == [device_map]
    assert {p.dtype for p in hf_parameters(back).values()} == {torch.bfloat16}
