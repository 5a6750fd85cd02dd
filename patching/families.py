"""Architecture adapters: where each supported model family keeps the parts mechedit reads, patches and edits.

One ``Family`` row per family, looked up by the HF ``config.model_type``. Everything architecture-specific in
mechedit (component ownership, the patching fast paths, the prefix-cached training forward, the editor's
unembedding, the frozen parameters) reads this table instead of assuming a Llama layout.

What differs between the families, and how the table says it:

- **q/k/v/o.** Llama, Mistral, Qwen2, Gemma, Gemma-2: separate ``q_proj``/``k_proj``/``v_proj``/``o_proj``
  ``nn.Linear`` (rows = output features, so a head's q rows are a row slice). GPT-2 (``c_attn``, a ``Conv1D``
  ``[d_model, 3 d_model]``) and GPT-NeoX/Pythia (``query_key_value``, rows interleaved per head) fuse them; the
  TransformerLens bridge splits the fused tensor at boot into ``q``/``k``/``v`` ``nn.Linear`` *views of the same
  storage* and runs its forward on those views, so mechedit trains and owns the views (``fused_qkv`` names the
  fused alias, which ``hf_parameters`` leaves out). GPT-2's output projection is a ``Conv1D`` stored
  ``[in, out]``: a head owns *rows* of it (``o_heads_dim=0``), not columns. Qwen2 (q/k/v) and GPT-2/NeoX (all)
  have biases; a head owns its slice of the q (and, with its whole group, k/v) bias.
- **MLP.** Gated ``gate/up/down`` (Llama, Qwen2, Gemma) or ``in/out`` with biases (GPT-2 ``c_fc``/``c_proj``,
  NeoX ``dense_h_to_4h``/``dense_4h_to_h``). An MLP owns every weight and bias of those modules.
- **Norms.** RMSNorm (Llama), Gemma's RMSNorm scales by ``1 + w``, LayerNorm with bias (GPT-2, NeoX); the bridge
  calls them as ``ln1``/``ln2`` whatever they are. Gemma-2 adds a norm *after* attention and after the MLP, before
  the residual add (``ln1_post``/``ln2_post``): a head's contribution to the residual stream is then not linear in
  its ``hook_z`` (``attn_post_norm``). Norm weights are owned by no component.
- **Parallel blocks.** GPT-NeoX/Pythia (``use_parallel_residual``): ``x + attn(ln1(x)) + mlp(ln2(x))``; MLP L does
  not see attention L, and there is no ``hook_resid_mid``.
- **Positions.** Rotary everywhere except GPT-2 (learned ``wpe``): left padding must shift position ids there.
- **Embeddings/unembedding.** Gemma multiplies embeddings by ``sqrt(d_model)`` and Gemma-2 soft-caps the final
  logits (``30 tanh(x / 30)``): both happen inside the HF forward, so mechedit never re-implements them except
  the soft-cap in ``unembed`` (the editor and scoring unembed final hidden states themselves). GPT-2 and Gemma
  tie the unembedding to the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from patching.packing import Packing, plan

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge as Model
else:
    Model = torch.nn.Module  # as in patching.model (which imports this module)


@dataclass(frozen=True)
class Family:
    """Where one model family keeps its parts (names as ``mechedit.models.hf_parameters`` gives them)."""

    name: str
    model_types: tuple[str, ...]  # HF config.model_type values this row covers
    layers: str  # the decoder layer list, from the HF causal LM
    attn: str  # attention module inside a layer
    qkvo: tuple[str, str, str, str]  # q, k, v, o projection modules inside ``attn``
    mlp: tuple[str, ...]  # MLP projection modules inside ``layer.mlp`` (all owned by the MLP)
    base: str = "model"  # the HF base model (returns last_hidden_state), from the HF causal LM
    unembedding: str = "lm_head"
    frozen: tuple[str, ...] = ("lm_head.", "model.embed_tokens.", "model.norm.")  # embeddings, final norm, unembed
    o_heads_dim: int = 1  # dim of the o weight indexed by heads (1: nn.Linear [out, in]; 0: Conv1D [in, out])
    fused_qkv: str | None = None  # fused q/k/v module the bridge splits into views (its alias is not a parameter)
    parallel: bool = False  # attention and MLP read the same residual (no hook_resid_mid)
    post_norms: bool = False  # norms after attention / MLP before the residual add (bridge ln1_post / ln2_post)
    learned_positions: bool = False  # absolute position embeddings (left padding shifts position ids)

    def layer_prefix(self, layer: int) -> str:
        """HF parameter-name prefix of decoder layer ``layer``."""
        return f"{self.layers}.{layer}"

    def attn_param(self, layer: int, which: str, kind: str = "weight") -> str:
        """HF name of the q/k/v/o projection ``which``'s weight (or bias) in ``layer``."""
        proj = self.qkvo["qkvo".index(which)]
        return f"{self.layer_prefix(layer)}.{self.attn}.{proj}.{kind}"

    def mlp_params(self, layer: int) -> list[str]:
        """HF names of the weights and biases an MLP could own (the caller drops absent biases)."""
        return [f"{self.layer_prefix(layer)}.mlp.{m}.{kind}" for m in self.mlp for kind in ("weight", "bias")]


_LLAMA = dict(layers="model.layers", attn="self_attn", qkvo=("q_proj", "k_proj", "v_proj", "o_proj"),
              mlp=("gate_proj", "up_proj", "down_proj"))

FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama", "mistral"), **_LLAMA),
    Family("qwen2", ("qwen2",), **_LLAMA),  # q/k/v biases
    Family("gemma", ("gemma",), **_LLAMA),  # (1 + w) RMSNorm, embeddings scaled by sqrt(d_model) inside HF
    Family("gemma2", ("gemma2",), **_LLAMA, post_norms=True),  # + logit soft-capping (``unembed``)
    Family("gpt2", ("gpt2",), layers="transformer.h", attn="attn", qkvo=("q", "k", "v", "o"), mlp=("c_fc", "c_proj"),
           base="transformer", frozen=("lm_head.", "transformer.wte.", "transformer.wpe.", "transformer.ln_f."),
           o_heads_dim=0, fused_qkv="qkv", learned_positions=True),
    Family("gpt_neox", ("gpt_neox",), layers="gpt_neox.layers", attn="attention", qkvo=("q", "k", "v", "o"),
           mlp=("dense_h_to_4h", "dense_4h_to_h"), base="gpt_neox",
           frozen=("lm_head.", "embed_out.", "gpt_neox.embed_in.", "gpt_neox.final_layer_norm."), fused_qkv="qkv",
           parallel=True),
)
SUPPORTED = tuple(t for f in FAMILIES for t in f.model_types)


class UnsupportedArchitecture(ValueError):
    """A model whose family has no adapter."""


def family_of_config(config) -> Family:
    """The adapter for an HF config; raise UnsupportedArchitecture naming the supported families."""
    model_type = getattr(config, "model_type", None)
    for f in FAMILIES:
        if model_type in f.model_types:
            return f
    archs = ", ".join(getattr(config, "architectures", None) or []) or type(config).__name__
    raise UnsupportedArchitecture(f"unsupported architecture {model_type!r} ({archs}); mechedit supports "
                                  f"{', '.join(SUPPORTED)}")


def family(model: Model) -> Family:
    """The adapter of a bridged (or plain HF) model."""
    return family_of_config(getattr(model, "original_model", model).config)


def _get(module: torch.nn.Module, path: str) -> torch.nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def hf_of(model: Model) -> torch.nn.Module:
    """The HF causal LM under a bridge (or the model itself)."""
    return getattr(model, "original_model", model)


def base_model(model: Model) -> torch.nn.Module:
    """The HF base model (embeddings, decoder layers, final norm; returns ``last_hidden_state``)."""
    return _get(hf_of(model), family(model).base)


def decoder_layers(model: Model) -> torch.nn.ModuleList:
    """The HF decoder layers, in order (the model's own ModuleList)."""
    return _get(hf_of(model), family(model).layers)


def unembedding(model: Model) -> torch.nn.Module:
    """The HF unembedding module (``lm_head``)."""
    return _get(hf_of(model), family(model).unembedding)


def logit_softcap(model: Model) -> float | None:
    """Gemma-2's final-logit soft-cap (None when the family has none)."""
    cap = getattr(hf_of(model).config, "final_logit_softcapping", None)
    return float(cap) if cap else None


def unembed(model: Model, hidden: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
    """Logits from final (normed) hidden states, as the HF causal LM computes them (soft-capped for Gemma-2);
    ``columns``: only those vocabulary entries (a metric that reads a few tokens needs no 49k-wide product)."""
    head = unembedding(model)
    if columns is None:
        logits = head(hidden)
    else:
        logits = torch.nn.functional.linear(hidden, head.weight[columns],
                                            None if head.bias is None else head.bias[columns])
    cap = logit_softcap(model)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def final_hidden(model: Model, ids: torch.Tensor, mask: torch.Tensor, pack: bool = False) -> torch.Tensor:
    """Final (normed) hidden states ``[b, t, d]`` of the HF base model: the modules the bridge runs, minus hooks.

    Learned-position families (GPT-2) get position ids that skip the left padding, as the bridge gives them.
    ``pack``: run the real tokens packed (``patching.packing``; zeros at padding, same numbers up to rounding).
    """
    if pack:
        p = plan(ids, mask)
        return p.unpack(packed_hidden(model, p))
    base = base_model(model)
    device = base.get_input_embeddings().weight.device  # where the first layer runs (also under a device_map)
    ids, mask = ids.to(device), mask.to(device)
    pos = position_ids(model, mask)
    extra = {} if pos is None else {"position_ids": pos}
    return base(input_ids=ids, attention_mask=mask, use_cache=False, **extra).last_hidden_state


def packed_hidden(model: Model, p: Packing) -> torch.Tensor:
    """Final hidden states ``[k, length, d]`` of a packed batch (``patching.packing.plan``)."""
    base = base_model(model)
    weight = base.get_input_embeddings().weight
    return base(input_ids=p.ids.to(weight.device), attention_mask=packed_mask(base.config, p, weight),
                position_ids=p.positions.to(weight.device), use_cache=False).last_hidden_state


def packed_layer_outputs(model: Model, p: Packing) -> list[torch.Tensor]:
    """The residual stream after every decoder layer of a packed batch (``blocks.{L}.hook_resid_post``), each
    ``[k, length, d]`` in the packed layout (``p.unpack`` gives the padded one)."""
    outs: list[torch.Tensor] = []

    def keep(mod, args, output):
        outs.append((output[0] if isinstance(output, tuple) else output).detach())

    handles = [layer.register_forward_hook(keep) for layer in decoder_layers(model)]
    try:
        packed_hidden(model, p)
    finally:
        for h in handles:
            h.remove()
    return outs


def packed_mask(config, p: Packing, weight: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
    """The attention mask(s) of a packed batch as the HF base model takes them ready-made: one mask, the sliding-
    window one when every layer slides (Mistral), or one per layer type (Gemma-2, Qwen2 with sliding layers)."""
    def make(window: int | None = None) -> torch.Tensor:
        return p.mask(config._attn_implementation, weight.dtype, window).to(weight.device)

    window = getattr(config, "sliding_window", None)
    kinds = set(getattr(config, "layer_types", None) or ())
    if not window or kinds == {"full_attention"}:
        return make()
    if "sliding_attention" in kinds and "full_attention" in kinds:
        return {"full_attention": make(), "sliding_attention": make(window)}
    return make(window)


def position_ids(model: Model, mask: torch.Tensor) -> torch.Tensor | None:
    """Position ids a left-padded batch needs (learned positions only; None: the model's default)."""
    if not family(model).learned_positions:
        return None
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
