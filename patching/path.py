"""Path patching: a sender's effect along one path only (sender → receivers), everything else frozen.

Each sender (a head or an MLP) takes its source value; every other head and MLP is frozen to its base
value, so the residual stream downstream of the sender is the base residual plus the sender's delta.

- ``receivers="logits"`` (direct effect): the final residual at the prediction column becomes
  ``resid_final_base + Δ_sender``; ``ln_final`` (recomputed, not frozen) and the unembedding give the
  logits. No forward pass is needed: all senders are evaluated at once.
- ``receivers=[heads]``: each receiver head's q/k/v input becomes ``W_{Q,K,V} ln1(resid_pre_base + Δ_sender)``
  (only senders upstream of the receiver's layer change it); then one forward from the first receiver
  layer, with those q/k/v values patched in and everything else recomputed normally, gives the metric.
  Senders are stacked along the batch dimension. Grouped-query attention: k and v belong to a key-value
  group, so patching a receiver head's k/v patches its group's k/v, which its sibling heads share.
  hook_q/hook_k hold pre-rotary values; the model applies rotary embeddings to whatever is patched in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from patching.activation import Components, expand_components
from patching.corrupt import Corruption
from patching.metrics import Metric, evaluate_variants, narrowed
from patching.model import (
    Model,
    Site,
    arch,
    chunks,
    final_logits,
    head_delta,
    parse_site,
    project_qkv,
    run_from,
    variants_per_chunk,
)
from patching.result import Direction, PatchResult
from patching.runs import Runs, make_runs

QKV = ("q", "k", "v")


def sender_delta(model: Model, runs: Runs, site: Site) -> Float[Tensor, "batch pos d_model"]:
    """The residual-stream delta of a sender taking its source value (all columns)."""
    b, s = runs.base.cache, runs.source.cache
    if site.kind == "head":
        name = f"blocks.{site.layer}.attn.hook_z"
        return head_delta(model, site.layer, site.index, b[name], s[name])
    if site.kind == "mlp":
        name = f"blocks.{site.layer}.hook_mlp_out"
        return s[name] - b[name]
    raise ValueError(f"senders must be heads or MLPs, got {site.kind}.{site.layer}.{site.index}")


def sender_hooks(site: Site) -> str:
    """The hook a sender's delta is computed from."""
    return f"blocks.{site.layer}.attn.hook_z" if site.kind == "head" else f"blocks.{site.layer}.hook_mlp_out"


def upstream(site: Site, layer: int) -> bool:
    """Whether a sender's output reaches the residual stream entering ``layer``."""
    return site.layer < layer


def check_receivers(model: Model, receivers: Sequence[str], inputs: Sequence[str]) -> list[Site]:
    """Parse receiver head labels and q/k/v input names; raise ValueError naming a bad one."""
    if not receivers:
        raise ValueError("no receiver heads given")
    bad = [i for i in inputs if i not in QKV]
    if bad or not inputs:
        raise ValueError(f"receiver_inputs must be a non-empty subset of q, k, v; got {list(inputs)}")
    sites = [parse_site(r, arch(model)) for r in receivers]
    for r, s in zip(receivers, sites, strict=True):
        if s.kind != "head":
            raise ValueError(f"receiver {r!r} is not a head; receivers are heads or 'logits'")
    return sites


def path_patch(
    model: Model, input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"], corruption: Corruption,
    metric: Metric, *, senders: Components = "all", receivers: str | Sequence[str] = "logits",
    receiver_inputs: Sequence[str] = QKV, direction: Direction = "noising", max_rows: int | None = None,
    progress: bool = False, runs: Runs | None = None,
) -> PatchResult:
    """Path-patch each sender alone into ``receivers`` ("logits" or head labels); metric per sender.

    Default direction is noising (clean run, sender takes its corrupted value), as in IOI-style path
    patching. See the module docstring for what is frozen. ``runs``: the base and source recordings of these
    inputs from ``make_runs`` (caching at least ``path_hooks``), so several calls record them once.
    """
    a = arch(model)
    labels = expand_components(model, senders, input_ids.shape[1])
    sites = [parse_site(label, a) for label in labels]
    if any(s.kind == "resid" for s in sites):
        raise ValueError("senders must be heads or MLPs, not residual positions")
    names = {sender_hooks(s) for s in sites}
    if isinstance(receivers, str):
        if receivers != "logits":
            raise ValueError(f"receivers must be 'logits' or a list of head labels, got {receivers!r}")
        names.add(f"blocks.{a.n_layers - 1}.hook_resid_post")
        runs = _given_or_new(runs, model, input_ids, attention_mask, corruption, metric, direction, names)
        values = _direct(model, runs, metric, sites, max_rows, progress)
        extra = {"receivers": "logits"}
    else:
        rsites = check_receivers(model, receivers, receiver_inputs)
        names |= {f"blocks.{r.layer}.hook_resid_pre" for r in rsites}
        runs = _given_or_new(runs, model, input_ids, attention_mask, corruption, metric, direction, names)
        values = _to_heads(model, runs, metric, sites, rsites, list(receiver_inputs), max_rows, progress)
        extra = {"receivers": list(receivers), "receiver_inputs": list(receiver_inputs)}
    return PatchResult("path", labels, values, runs.clean, runs.corrupt, direction, extra)


def path_hooks(model: Model) -> list[str]:
    """Every hook any path patch of a model reads: head outputs, MLP outputs, each layer's input, the final
    residual stream (record them once with ``make_runs`` to path-patch into logits and then into heads)."""
    n = arch(model).n_layers
    per_layer = ("attn.hook_z", "hook_mlp_out", "hook_resid_pre")
    return sorted([f"blocks.{layer}.{h}" for layer in range(n) for h in per_layer]
                  + [f"blocks.{n - 1}.hook_resid_post"])


def _given_or_new(runs: Runs | None, model, input_ids, attention_mask, corruption, metric, direction,
                  names: set[str]) -> Runs:
    """``runs`` checked against what this call needs, or a new recording of exactly ``names``."""
    if runs is None:
        return make_runs(model, input_ids, attention_mask, corruption, metric, direction, sorted(names))
    if runs.direction != direction or runs.batch != input_ids.shape[0]:
        raise ValueError(f"runs were recorded for direction {runs.direction!r} on {runs.batch} rows, not "
                         f"{direction!r} on {input_ids.shape[0]}")
    missing = sorted(names - runs.base.cache.keys())
    if missing:
        raise ValueError(f"runs do not cache {missing[0]!r} (and {len(missing) - 1} more); record path_hooks(model)")
    return runs


@torch.no_grad()
def _direct(model, runs: Runs, metric: Metric, sites: list[Site], max_rows: int | None, progress: bool) -> list[float]:
    """Direct effects on the logits of every sender, batched over senders (no forward pass)."""
    a, B = runs.arch, runs.batch
    final = runs.base.cache[f"blocks.{a.n_layers - 1}.hook_resid_post"][:, -1, :]
    columns, metric = narrowed(metric)  # a metric reading a few vocabulary columns: unembed only those
    # the unembedding dominates here: keep a chunk's logits near 256 MiB
    width = a.vocab if columns is None else max(len(columns), a.d_model)
    per = max(1, (max_rows or int(256 * 2**20 / (4 * width))) // B)
    values: list[float] = []
    for c in tqdm(chunks(len(sites), per), desc="path patching (direct)", disable=not progress, leave=False):
        x = torch.cat([final + sender_delta(model, runs, sites[i])[:, -1, :] for i in c])
        values += evaluate_variants(metric, final_logits(model, x, columns), B)
    return values


def _qkv_hook(index: list[int], values: Tensor):
    """A hook writing ``values`` into heads ``index`` of a q/k/v activation [rows, pos, heads, d_head]."""
    def hook(t, hook):
        t = t.clone()
        t[:, :, index] = values.to(t.dtype)
        return t

    return hook


@torch.no_grad()
def _to_heads(
    model, runs: Runs, metric: Metric, sites: list[Site], rsites: list[Site], inputs: list[str],
    max_rows: int | None, progress: bool,
) -> list[float]:
    """Effects of every sender through the receivers' q/k/v inputs, senders stacked along the batch."""
    a, B = runs.arch, runs.batch
    pos = runs.base.cache[f"blocks.{rsites[0].layer}.hook_resid_pre"].shape[1]
    # what each receiver layer's q/k/v heads are: q per query head, k/v per key-value group
    targets: dict[tuple[int, str], list[int]] = {}
    for r in rsites:
        for which in inputs:
            idx = r.index if which == "q" else r.index // a.group_size
            lst = targets.setdefault((r.layer, which), [])
            if idx not in lst:
                lst.append(idx)
    first = min(r.layer for r in rsites)
    base_metric = runs.clean if runs.direction == "noising" else runs.corrupt
    active = [i for i, s in enumerate(sites) if any(upstream(s, r.layer) for r in rsites)]
    values = [base_metric] * len(sites)  # senders upstream of no receiver change nothing
    per = variants_per_chunk(B, pos, a, max_rows)
    columns, metric = narrowed(metric)
    for c in tqdm(chunks(len(active), per), desc="path patching (heads)", disable=not progress, leave=False):
        idx = [active[i] for i in c]
        deltas = [sender_delta(model, runs, sites[i]) for i in idx]
        hooks = []
        for (layer, which), heads in targets.items():
            resid = runs.base.cache[f"blocks.{layer}.hook_resid_pre"]
            patched = torch.cat([
                project_qkv(model, layer, which, resid + d if upstream(sites[i], layer) else resid)[:, :, heads]
                for i, d in zip(idx, deltas, strict=True)
            ])
            hooks.append((f"blocks.{layer}.attn.hook_{which}", _qkv_hook(heads, patched)))
        x = runs.base.cache[f"blocks.{first}.hook_resid_pre"].repeat(len(idx), 1, 1)
        logits = run_from(model, runs.base, first, x, fwd_hooks=hooks, columns=columns)
        for i, v in zip(idx, evaluate_variants(metric, logits, B), strict=True):
            values[i] = v
    return values
