"""Independent copies of a bridged model, so verification never touches the caller's weights.

``copy.deepcopy`` of a TransformerBridge gives independent parameters, but two TransformerLens details need
care: (1) during a forward pass the attention bridges keep the block input in ``_captured_pre_ln_residual``;
after a forward with gradients that tensor is a non-leaf and ``deepcopy`` refuses it, so the transient captures
are dropped first (they are reset at every forward anyway); (2) the blocks' capture hooks hold weak proxies to
the modules they were installed on, which ``deepcopy`` does not copy, so a copy's forward writes its capture into
the *source's* attention module. That capture is only read in TransformerLens's split-qkv mode (off unless
a caller turns it on) and is cleared again here before every copy; logits and weights of both models stay
independent (tested).
"""

from __future__ import annotations

import copy

import torch

from patching.model import Model


def clear_captures(model: Model) -> None:
    """Drop TransformerLens's transient per-forward captures (never weights or hooks)."""
    for module in model.modules():
        if isinstance(getattr(module, "_captured_pre_ln_residual", None), torch.Tensor):
            module._captured_pre_ln_residual = None


def clone_model(model: Model):
    """A deep copy of ``model`` with its own parameters (see the module docstring)."""
    clear_captures(model)
    return copy.deepcopy(model)
