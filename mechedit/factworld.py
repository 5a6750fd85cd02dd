"""factworld: a tiny Llama trained on the synthetic world of ``mechedit.data.factworld``, so tests have ground truth.

A byte-level BPE tokenizer is trained on the world's vocabulary (never on whole names, so every name spans
several tokens; answers and context words are single tokens) and a 4-layer Llama with grouped-query attention is
trained on sentences sampled from the world. Everything is seeded; the result is cached like SmolLM2.

Why context sentences: in the prompts alone a model can postpone the lookup to the prediction token, and the
first factworld (v1) did: the attribute was not linearly decodable at the subject until the last layer, so
the probe localizer had nothing to find. A word that depends on the attribute right after the name forces the
lookup *at the subject's last token*, as real text does for real models (subject enrichment, Geva et al.
2023). With them (v2), probes at the last subject token go from chance on the embeddings to ~0.9 after MLP 2.
"""
from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mechedit.cache import cache_dir, load_or_build
from mechedit.data.factworld import RELATIONS, SYLLABLES
from mechedit.facts import Fact, FactSet, load_factworld

log = logging.getLogger(__name__)

VERSION = 2  # bump when the world (mechedit.data.factworld) or the training recipe changes (invalidates caches)


# ---------------------------------------------------------------- tokenizer


def _tokenizer_corpus() -> list[str]:
    """Text the BPE is trained on: template words, values and lone syllables — never whole names."""
    lines = []
    for rel in RELATIONS:
        for t in (rel.prompt, rel.question) + rel.paraphrases:
            lines.append(t.replace("{subject}", "") * 20)
        lines += [" " + " ".join(rel.values)] * 50
        phrases = [p for ps in rel.contexts.values() for p in ps]
        lines += [" " + " ".join(phrases)] * 20
        lines += [" " + " ".join(p.split()[0] for p in phrases)] * 100  # first words become single tokens
    lines += ["Options: Answer:"] * 50
    # random syllable pairs, so merges form syllables inside words (as in names) but rarely whole names
    rng = random.Random("tokenizer")
    for _ in range(400):
        words = [rng.choice(SYLLABLES) + rng.choice(SYLLABLES) for _ in range(10)]
        lines.append(" " + " ".join(w.capitalize() for w in words))
    return lines


def build_tokenizer():
    """A byte-level BPE tokenizer for the world, wrapped as a transformers fast tokenizer."""
    # transformers is imported lazily: it adds ~2 s to every `import mechedit`
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=768, min_frequency=2, special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


# ---------------------------------------------------------------- training data


def context_sentence(fact: Fact, rng: random.Random) -> str:
    """A sentence implying the fact's answer without naming it (``Gavtor Kirlo served an ace.``)."""
    rel = next(r for r in RELATIONS if r.name == fact.relation)
    return f"{fact.subject} {rng.choice(rel.contexts[fact.answer])}."


def training_texts(facts: FactSet, rng: random.Random, n: int, context_fraction: float = 0.0) -> list[str]:
    """Sample ``n`` training sentences: plain, paraphrased, multiple-choice and context renderings of facts.

    Context sentences put an answer-dependent word right after the subject, so the model must look the
    attribute up *at the subject's last token*, as real text forces real models to (subject enrichment).
    """
    out = []
    for _ in range(n):
        f = facts[rng.randrange(len(facts))]
        kind = rng.random()
        if kind < context_fraction:
            out.append(context_sentence(f, rng))
            continue
        kind = (kind - context_fraction) / (1 - context_fraction)
        if kind < 0.35:
            out.append(f"{f.render()} {f.answer}")
        elif kind < 0.7:
            out.append(f"{f.render(rng.choice(f.paraphrases))} {f.answer}")
        else:
            text, options, ans, _ = f.mcq(seed=rng.randrange(1 << 30), style="text")
            out.append(f"{text} {options[ans]}")
    return out


@dataclass(frozen=True)
class TrainConfig:
    """Recipe for the factworld model (kept small so it trains in about a minute on 2 cores)."""

    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 256
    steps: int = 1500
    batch_size: int = 64
    lr: float = 5e-3
    warmup: int = 50
    weight_decay: float = 0.01
    context_fraction: float = 0.3


ARCHS = ("llama", "gpt2")  # layouts factworld can be trained into (the same world, tokenizer and recipe)


def _make_model(cfg: TrainConfig, vocab_size: int, tok, seed: int, arch: str = "llama"):
    # transformers is imported lazily: it adds ~2 s to every `import mechedit`
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "gpt2":  # learned positions, LayerNorm, fused Conv1D q/k/v, GELU MLP, no grouped-query attention
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_mlp,
            n_positions=128, tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            attn_implementation="eager",
        )
        return GPT2LMHeadModel(config)
    if arch != "llama":
        raise ValueError(f"factworld can be trained as {', '.join(ARCHS)}, not {arch!r}")
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=128, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, attn_implementation="eager",
    )
    return LlamaForCausalLM(config)


def train_factworld(seed: int = 0, cfg: TrainConfig | None = None, progress: bool = True, arch: str = "llama"):
    """Train the factworld model from scratch; returns (hf_model, tokenizer). Deterministic under ``seed``.

    ``arch="gpt2"`` trains the same world with the same tokenizer and recipe into a GPT-2 layout (ground truth
    across layouts for the localizers).
    """
    cfg = cfg or TrainConfig()
    facts = load_factworld(seed)
    tok = build_tokenizer()
    model = _make_model(cfg, len(tok), tok, seed, arch)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))
    )
    rng = random.Random(f"train-{seed}")
    t0 = time.time()
    bar = tqdm(range(cfg.steps), desc=f"training factworld ({arch})", disable=not progress)
    for _step in bar:
        texts = training_texts(facts, rng, cfg.batch_size, cfg.context_fraction)
        enc = tok(texts, return_tensors="pt", padding=True, padding_side="right")
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        out = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{out.loss.item():.3f}")
    model.eval()
    log.info("factworld trained in %.1f s", time.time() - t0)
    return model, tok


def load_factworld_hf(seed: int = 0, cfg: TrainConfig | None = None, arch: str = "llama"):
    """Return the cached factworld (hf_model, tokenizer), training it on first use.

    The Llama layout is cached under ``factworld/``, the others under ``factworld-<arch>/``.
    """
    cfg = cfg or TrainConfig()

    def build():
        model, tok = train_factworld(seed, cfg, arch=arch)
        return model, tok, {"seed": seed, "config": cfg.__dict__, "version": VERSION, "arch": arch}

    # always loaded back from the cache, so the tokenizer knows its path (the bridge needs it)
    return load_or_build(factworld_cache_dir(seed, cfg, arch), build)


def factworld_cache_dir(seed: int = 0, cfg: TrainConfig | None = None, arch: str = "llama"):
    """Where factworld of this seed, recipe and layout is cached (``factworld/`` or ``factworld-<arch>/``)."""
    if arch not in ARCHS:
        raise ValueError(f"factworld can be trained as {', '.join(ARCHS)}, not {arch!r}")
    key = f"v{VERSION}-seed{seed}-{abs(hash_config(cfg or TrainConfig())):x}"
    return cache_dir() / ("factworld" if arch == "llama" else f"factworld-{arch}") / key


def hash_config(cfg: TrainConfig) -> int:
    """A stable hash of the training recipe (Python's hash() of str is salted per process)."""
    return int(hashlib.sha256(repr(cfg).encode()).hexdigest()[:12], 16)
