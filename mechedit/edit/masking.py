"""Which entries of which parameters an edit trains, and how the optimizer sees only those entries.

A parameter owned whole (an MLP projection, a whole attention layer) is trained in place. A parameter owned
in part (a head's q rows / o columns, a k/v group slice) is never trained as a tensor: its owned entries are
copied into a separate 1-D leaf, and a forward hook on the ``nn.Linear`` holding ``W`` replaces its output by
``F.linear(x, W.index_put(owned, leaf))``. So gradients, AdamW moments and weight decay exist only for owned
entries, and the unowned entries of that tensor are never written. (``torch.func.functional_call`` is not used:
under the TransformerLens bridge it leaves the override tensor in the module instead of restoring the
Parameter.) The cost is one extra frozen matmul per partly owned projection. Every other parameter gets
``requires_grad=False``, so autograd computes no weight gradient for it, and the backward pass ends at the
earliest trained layer (nothing below it requires grad). ``begin`` / ``end`` set and restore the flags and hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Int

from mechedit.models import hf_model_of, hf_parameters

_FROZEN_ALWAYS = ("lm_head.", "model.embed_tokens.", "model.norm.")  # reference logits rely on these staying put


@dataclass
class Trainable:
    """One owned parameter: the model's tensor, the owned flat indices (None: all) and the trained leaf."""

    name: str  # plain HF name
    module: torch.nn.Module  # the nn.Linear holding ``param`` as its weight
    param: torch.nn.Parameter
    index: Int[torch.Tensor, " n_owned"] | None
    leaf: torch.Tensor  # param itself (whole) or a 1-D copy of the owned entries
    original: torch.Tensor  # original values of the owned entries (whole tensor, or 1-D)

    @property
    def n_trained(self) -> int:
        """Number of owned (trained) entries."""
        return self.param.numel() if self.index is None else self.index.numel()

    def current(self) -> torch.Tensor:
        """Current values of the owned entries (same layout as ``original``)."""
        if self.index is None:
            return self.param.detach()
        return self.param.detach().reshape(-1)[self.index]


class TrainableSet:
    """The owned parameters of a set of components on one model, prepared for training."""

    def __init__(self, model, masks: dict[str, torch.Tensor | None]):
        if not masks:
            raise ValueError("the localization owns no parameters; nothing to train")
        params = hf_parameters(model)
        holders = {id(m._parameters.get("weight")): m for m in hf_model_of(model).modules()
                   if isinstance(m, torch.nn.Linear)}
        self.model = model
        self.items: list[Trainable] = []
        for name, mask in masks.items():
            if name.startswith(_FROZEN_ALWAYS):
                raise ValueError(f"parameter {name!r} cannot be edited (embeddings, final norm and unembedding "
                                 "stay frozen)")
            p = params[name]
            if not p.is_contiguous():
                raise ValueError(f"parameter {name!r} is not contiguous; cannot index its owned entries")
            if mask is not None and id(p) not in holders:
                raise ValueError(f"parameter {name!r} is not the weight of an nn.Linear; cannot train part of it")
            if mask is None:
                index, original = None, p.detach().clone()
            else:
                index = mask.reshape(-1).nonzero().squeeze(1)
                original = p.detach().reshape(-1)[index].clone()
            self.items.append(Trainable(name, holders.get(id(p)), p, index, p, original))
        self._flags: dict[int, bool] = {}
        self._hooks: list = []

    @property
    def n_params(self) -> int:
        """Number of trained entries."""
        return sum(t.n_trained for t in self.items)

    def leaves(self) -> list[torch.Tensor]:
        """The tensors the optimizer updates."""
        return [t.leaf for t in self.items]

    def begin(self) -> None:
        """Freeze every parameter, then make the owned tensors / owned-entry leaves trainable."""
        all_params = list(hf_model_of(self.model).parameters())
        self._flags = {id(p): p.requires_grad for p in all_params}
        for p in all_params:
            p.requires_grad_(False)
        for t in self.items:
            if t.index is None:
                t.leaf = t.param
                t.param.requires_grad_(True)
            else:
                t.leaf = t.original.clone().requires_grad_(True)
                self._hooks.append(t.module.register_forward_hook(_masked_linear_hook(t)))

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy trained owned entries into the model's partly owned tensors (unowned entries untouched)."""
        for t in self.items:
            if t.index is not None:
                t.param.view(-1)[t.index] = t.leaf.detach()

    @torch.no_grad()
    def restore(self) -> None:
        """Put the original values of every owned entry back (bit-exact)."""
        for t in self.items:
            if t.index is None:
                t.param.copy_(t.original)
            else:
                t.param.view(-1)[t.index] = t.original
                if t.leaf is not t.param:
                    t.leaf.copy_(t.original)

    def end(self) -> None:
        """Remove the hooks, drop gradients and restore every parameter's ``requires_grad`` flag."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for p in hf_model_of(self.model).parameters():
            p.grad = None
            if id(p) in self._flags:
                p.requires_grad_(self._flags[id(p)])
        for t in self.items:
            t.leaf = t.param


def _masked_linear_hook(t: Trainable):
    """Forward hook recomputing a Linear's output with the owned entries of its weight taken from ``t.leaf``."""

    def hook(module, args, output):
        weight = t.param.detach().reshape(-1).index_put((t.index,), t.leaf).view_as(t.param)
        return F.linear(args[0], weight, module.bias)

    return hook
