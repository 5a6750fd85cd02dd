"""Shared fixtures: one factworld model per session (trained once, cached), SmolLM2 for marked tests.

Tests must never change the session models' weights; a test that edits takes its own copy with
``helpers.private_copy(model)`` (or ``fresh_factworld()``) or reverts bit-exactly. ``helpers.snapshot``/``.same``
compare parameters bit for bit; ``single_thread`` runs tiny models on one intra-op thread (faster than two on a busy
2-core machine). The probes/ and patching/ tests get their inputs from fixtures here, so their files never
import mechedit.
"""

from __future__ import annotations

import contextlib
import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: it reads the flag once

from jaxtyping import install_import_hook  # noqa: E402

# every annotation in mechedit, probes and patching (types, and jaxtyping tensor shapes) is checked at run time
# in the tests: the hook decorates their functions and dataclasses with beartype as they are imported, so it is
# installed before any of them is. An int passes for a float (PEP 484's numeric tower).
install_import_hook(["mechedit", "probes", "patching"],
                    "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))")

import jaxtyping  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mechedit.compare import CompareSettings, compare  # noqa: E402
from mechedit.evaluate.copying import clone_model  # noqa: E402
from mechedit.facts import load_factworld  # noqa: E402
from mechedit.localize.patch_setup import patch_setup  # noqa: E402
from mechedit.models import hf_parameters, load_model, wrap_hf  # noqa: E402
from mechedit.tokens import encode  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def runtime_type_checks(request):
    """Annotations are checked in every test except those marked ``unchecked``: they feed deliberately wrong input
    to see the library's own one-line error, which a type or shape check would pre-empt."""
    jaxtyping.config.update("jaxtyping_disable", request.node.get_closest_marker("unchecked") is not None)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)


@pytest.fixture(scope="session")
def factworld():
    """The factworld bridge (shared; do not modify its weights)."""
    return load_model("factworld")


@pytest.fixture(scope="session", params=["factworld", "factworld-gpt2"])
def world_model(request):
    """factworld in its Llama layout and in a GPT-2 layout (same world, tokenizer and recipe): the ground-truth
    localizer tests run on both. The GPT-2 one is trained on first use (81 s on 2 free cores) and cached."""
    return load_model(request.param)


@pytest.fixture(scope="session")
def world_facts():
    """Ground truth of factworld: 320 subjects x 3 relations."""
    return load_factworld()


@pytest.fixture(scope="session")
def sport_facts(world_facts):
    """The factworld sport relation only (4 values)."""
    return world_facts.by_relation()["sport"]


@pytest.fixture()
def fresh_factworld():
    """A factory returning a private factworld copy that a test may modify."""
    return lambda: load_model("factworld")


TINY = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="session")
def tiny_model(factworld):
    """Factory of a seeded, randomly initialised 2-layer Llama (d_model 48, 4 heads / 2 kv heads: GQA) with
    factworld's tokenizer, wrapped like ``load_model`` wraps any HF model: for structural and equivalence tests
    that need no trained knowledge. Every call returns a new, identical model (the caller may modify it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = factworld.tokenizer
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=128, tie_word_embeddings=True,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         attn_implementation="eager", **TINY)

    def make():
        torch.manual_seed(0)
        return wrap_hf(LlamaForCausalLM(config), copy.deepcopy(tok), "tiny-llama", prepend_bos=False)

    return make


# one tiny random model per supported family: 2 layers, d_model 48, 4 heads of 12 (grouped-query where the family
# has it), built offline from the transformers config classes; weights a little larger than HF's default init so
# that patches have visible effects
FAMILY_CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(TINY, tie_word_embeddings=True)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(TINY, tie_word_embeddings=True)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(TINY, num_key_value_heads=1, head_dim=12)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(TINY, head_dim=12, sliding_window=6)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=48, n_layer=2, n_head=4, n_inner=96, n_positions=128)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                 dict(TINY, num_key_value_heads=None, rotary_pct=0.5, use_parallel_residual=True)),
}
FAMILIES = tuple(FAMILY_CONFIGS)


def make_tiny(tok, family: str, dtype: torch.dtype = torch.float32):
    """A seeded random tiny model of ``family`` with tokenizer ``tok``, wrapped like ``load_model`` wraps one."""
    import transformers

    config_name, model_name, kwargs = FAMILY_CONFIGS[family]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    config = getattr(transformers, config_name)(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, initializer_range=0.1, **kwargs)
    if "n_embd" not in kwargs:
        config.max_position_embeddings = 128
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = getattr(transformers, model_name)(config).to(dtype)
    return wrap_hf(hf, copy.deepcopy(tok), f"tiny-{family}", prepend_bos=False)


@pytest.fixture(scope="session", params=FAMILIES)
def family_model(request, factworld):
    """Factory ``make(dtype=float32)`` of the seeded tiny model of each family (a new identical model per call);
    tests using it run once per family. ``make.family`` names the family."""
    def make(dtype: torch.dtype = torch.float32):
        return make_tiny(factworld.tokenizer, request.param, dtype)

    make.family = request.param
    return make


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (dequantized once and cached); only for tests marked ``smollm2``."""
    return load_model("smollm2-135m")


# ---------------------------------------------------------------- helpers shared by test files


def snapshot(model) -> dict[str, torch.Tensor]:
    """Detached copies of every parameter, by plain HF name."""
    return {k: v.detach().clone() for k, v in hf_parameters(model).items()}


def same_weights(model, snap: dict[str, torch.Tensor]) -> bool:
    """True when every parameter of ``model`` equals ``snap`` bit for bit."""
    now = hf_parameters(model)
    return now.keys() == snap.keys() and all(torch.equal(now[k], v) for k, v in snap.items())


@contextlib.contextmanager
def one_thread():
    """Run the block on one intra-op thread, restoring the previous count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture()
def single_thread():
    """The test runs on one intra-op thread (tiny models: faster than two on a shared, busy machine)."""
    with one_thread():
        yield


class Helpers:
    """Namespace handed out by the ``helpers`` fixture."""

    snapshot = staticmethod(snapshot)
    same = staticmethod(same_weights)
    private_copy = staticmethod(clone_model)
    one_thread = staticmethod(one_thread)


@pytest.fixture(scope="session")
def helpers():
    """Shared helpers: ``snapshot``, ``same`` (bit-exact weights), ``private_copy``, ``one_thread``."""
    return Helpers


# ---------------------------------------------------------------- inputs for the probes/ and patching/ tests


@pytest.fixture(scope="module")
def city_batch(factworld, world_facts):
    """Paraphrase prompts (subject mid-sentence, mixed lengths) for the factworld city relation, left-padded."""
    facts = world_facts.by_relation()["city"]
    texts = [f.render(f.paraphrases[i % 3]) for i, f in enumerate(facts)]
    return facts, encode(factworld.tokenizer, texts, [f.subject for f in facts])


@pytest.fixture(scope="module")
def swap_setup(factworld, world_facts):
    """Twelve factworld facts, subject-swap corruption and logit-difference metric, for the patching tests."""
    return patch_setup(factworld, world_facts.sample(12, seed=1), corruption="swap", seed=0)


@pytest.fixture(scope="session")
def small_comparison(tmp_path_factory):
    """(output directory, summary) of one small real comparison, run once per session for the compare and report
    tests: 2 seeds x (probe, path, random, nonlocalized), short edits and attacks."""
    out = tmp_path_factory.mktemp("compare")
    settings = CompareSettings(model="factworld", facts="factworld", relation="sport",
                               methods=["probe", "path", "random", "nonlocalized"], n_facts=8, seeds=2, steps=20,
                               max_maintain=24, relearn_steps=6)
    return out, compare(settings, out, progress=False)
