"""Paper-scale smoke test on one GPU: localize (probe, path) → edit (50 steps) → evaluate (relearn + latent).

    python bench/gpu_smoke.py [MODEL_DIR] [--facts 16] [--steps 50] [--dtype bfloat16]
    python bench/gpu_smoke.py --cpu-tiny        # the same pipeline on a tiny Gemma-2 on CPU (checks the script)

MODEL_DIR is a local Hugging Face checkpoint (Gemma-7B, Gemma-2-9B, Llama-3-8B, ...). Without one, a randomly
initialised model with Gemma-2-9B's configuration is built directly on the GPU in bf16 (no download; factworld's
tokenizer, whose ids all fall inside Gemma's vocabulary): its facts are not known, so the probe localizer runs with
``min_rise=0`` and the numbers only show that every stage runs and what it costs. Prints the peak GPU memory and
the wall time of each stage. Without CUDA (and without ``--cpu-tiny``) it says so and exits 0 without running.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

# run as a script, this directory comes first on sys.path and bench/patching.py would shadow the patching package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

GEMMA2_9B = dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=256, vocab_size=256000, sliding_window=4096,
                 query_pre_attn_scalar=256, final_logit_softcapping=30.0, attn_logit_softcapping=50.0)
TINY_GEMMA2 = dict(GEMMA2_9B, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=12, vocab_size=1024, sliding_window=8, query_pre_attn_scalar=12)


def random_gemma2(config: dict, device: str, dtype: torch.dtype):
    """A random Gemma-2 with ``config``, built on ``device`` in ``dtype``, wrapped with factworld's tokenizer."""
    import tempfile

    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    from mechedit.factworld import build_tokenizer
    from mechedit.models import wrap_hf

    tmp = tempfile.mkdtemp(prefix="gpu-smoke-tokenizer-")  # the bridge re-reads the tokenizer from its path
    build_tokenizer().save_pretrained(tmp)
    tok = AutoTokenizer.from_pretrained(tmp)
    cfg = Gemma2Config(**config, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, max_position_embeddings=512)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    with torch.device(device):
        hf = Gemma2ForCausalLM(cfg).to(dtype)
    return wrap_hf(hf, copy.deepcopy(tok), "random-gemma2", prepend_bos=False)


class Stages:
    """Wall time and peak GPU memory per stage."""

    def __init__(self, cuda: bool):
        self.cuda, self.rows = cuda, []

    def run(self, name: str, fn):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.time()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")
        self.rows.append((name, time.time() - t, peak))
        print(f"{name:<22} {time.time() - t:8.1f} s   peak GPU memory {peak:6.2f} GiB", flush=True)
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", nargs="?", help="a local HF checkpoint (default: random Gemma-2-9B config)")
    ap.add_argument("--facts", type=int, default=16, help="facts to localize, edit and evaluate (≥16)")
    ap.add_argument("--steps", type=int, default=50, help="edit steps")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--cpu-tiny", action="store_true", help="tiny Gemma-2 on CPU: check the pipeline, no GPU")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_tiny:
        print("gpu_smoke: no CUDA device here; nothing run (use --cpu-tiny to check the pipeline on CPU)")
        return 0
    if args.facts < 16:
        ap.error("--facts must be at least 16")
    device = "cpu" if args.cpu_tiny else "cuda"
    dtype = "bfloat16" if args.cpu_tiny and args.dtype == "float16" else args.dtype

    from mechedit.edit import EditConfig, edit
    from mechedit.evaluate import RelearnConfig, evaluate
    from mechedit.facts import load_factworld
    from mechedit.localize import localize
    from mechedit.models import DTYPES, load_model

    stages = Stages(cuda and not args.cpu_tiny)
    t0 = time.time()
    if args.model_dir:
        model = stages.run("load", lambda: load_model(args.model_dir, device=device, dtype=dtype))
        known = False
    else:
        config = TINY_GEMMA2 if args.cpu_tiny else GEMMA2_9B
        model = stages.run("build (random)", lambda: random_gemma2(config, device, DTYPES[dtype]))
        known = False
    facts = load_factworld().by_relation()["sport"].sample(max(args.facts * 3, 48), seed=0)
    probe_kw = {} if known else {"min_rise": 0.0}
    stages.run("localize: probe", lambda: localize(model, facts, "probe", progress=False, **probe_kw))
    loc = stages.run("localize: path", lambda: localize(model, facts, "path", progress=False,
                                                        max_facts=args.facts))
    marked = facts.mark_forget(args.facts, seed=0)
    result = stages.run("edit", lambda: edit(model, marked, loc, "edit", EditConfig(steps=args.steps),
                                             progress=False))
    original = copy.deepcopy(model)
    result.revert(original)
    stages.run("evaluate (relearn+latent)", lambda: evaluate(
        model, marked, original=original, relearn=True, relearn_config=RelearnConfig(steps=5), latent=True,
        max_maintain=32, progress=False))
    print(f"total {time.time() - t0:.1f} s on {device} in {dtype}; {loc.n_params:,} parameters edited "
          f"({', '.join(str(c) for c in loc.components)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
