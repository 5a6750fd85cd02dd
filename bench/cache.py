"""Benchmark: what the cache checks cost on a cached load of smollm2-135m (538 MB of float32 weights).

Times, as medians over ``--repeats`` runs in one process (page cache warm after the first): the record check
done on every load (file sizes), the sha256 of the weights (done at build, on ``mechedit models --verify`` and
when a load fails), the finite check of the loaded parameters (every load), the bare Hugging Face load the
checks wrap, and the whole checked load. The final line says what the per-load checks add and what hashing on
every load would add. Run: ``.venv/bin/python bench/cache.py`` (loads the model once first if it is not cached).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _timing import timed  # noqa: E402

from mechedit.cache import cache_dir, inspect_cache, load_cached_hf, nonfinite_parameters  # noqa: E402
from mechedit.models import load_smollm2_hf  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    load_smollm2_hf()  # builds the cache if needed; later timings are all cached loads
    directory = cache_dir() / "smollm2-135m"
    status = inspect_cache(directory)
    if status.state != "ok":
        raise SystemExit(f"{directory} is {status.state}; load it once with this version to record it")
    print(f"smollm2-135m cache: {directory}, weights {status.weight_bytes() / 2**20:.0f} MB, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")

    def hf_load():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32), AutoTokenizer.from_pretrained(
            directory)

    rows = []
    sizes, _, _ = timed(lambda: inspect_cache(directory, hashes=False), args.repeats)
    rows.append(("record check: sizes (every load)", sizes))
    hashing, _, _ = timed(lambda: inspect_cache(directory, hashes=True), args.repeats)
    rows.append(("record check: sizes + sha256 (build, --verify, failures)", hashing))
    bare, _, (model, _) = timed(hf_load, args.repeats)
    rows.append(("bare Hugging Face load (model + tokenizer)", bare))
    finite, _, bad = timed(lambda: nonfinite_parameters(model), args.repeats)
    assert bad == [], bad
    rows.append(("finite check of the parameters (every load)", finite))
    checked, _, _ = timed(lambda: load_cached_hf(directory), args.repeats)
    rows.append(("checked load (load_cached_hf)", checked))
    width = max(len(r[0]) for r in rows)
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.3f} s")
    print(f"per-load checks add {sizes + finite:.2f} s to a {bare:.2f} s load ({(sizes + finite) / bare:.1%}); "
          f"hashing on every load would add {hashing:.2f} s ({hashing / bare:.0%})")


if __name__ == "__main__":
    main()
