"""The masked, localized fine-tuner: ``edit(model, facts, localization, objective, config) -> EditResult``.

Only the entries owned by the localization's components are trained (see ``mechedit.edit.masking``); the
caller's model is trained **in place** and comes back edited, with every other tensor bit-identical. The
result holds the old and new values, so ``result.revert(model)`` undoes the edit exactly. References the
KL-type terms need (fluency, ga-kl, npo, causal teacher) are computed from the original weights before the
first update. Training forwards start at the earliest trained layer on a cached residual stream
(``mechedit.edit.prefix``), and the backward pass ends there. A non-finite loss, or any error while
training, restores the original weights before raising.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from jaxtyping import Float
from tqdm.auto import tqdm

from mechedit.components import check_in_range, trainable_masks
from mechedit.edit.config import EditConfig, EditError
from mechedit.edit.data import EditData, prepare, token_rows
from mechedit.edit.masking import TrainableSet
from mechedit.edit.objectives import Objective, ObjectiveInputs, get_objective
from mechedit.edit.prefix import PrefixCache, full_hidden
from mechedit.edit.result import EditResult
from mechedit.edit.teacher import replacement_subjects, teacher_distribution
from mechedit.facts import FactSet
from mechedit.localize.localization import Localization
from mechedit.memo import OriginalMemo, remembered
from mechedit.models import fingerprint
from mechedit.tokens import pad_left
from patching.families import unembed
from patching.model import Model

log = logging.getLogger(__name__)

REF_BATCH = 64


# ---------------------------------------------------------------------- forward passes


def log_probs(model: Model, h: Float[torch.Tensor, "n d"]) -> Float[torch.Tensor, "n vocab"]:
    """Next-token log-probabilities from final hidden states (the unembedding is never trained)."""
    return F.log_softmax(unembed(model, h).float(), dim=-1)


@torch.no_grad()
def reference_hidden(model: Model, rows: list[list[int]], pad_id: int, last_only: bool) -> list[torch.Tensor]:
    """Original-model final hidden states per row: [d] at the last token, or [len, d] at every token."""
    out: list[torch.Tensor] = []
    for s in range(0, len(rows), REF_BATCH):
        ids, mask = pad_left(rows[s:s + REF_BATCH], pad_id)
        h = full_hidden(model, ids, mask)
        if last_only:
            out += list(h[:, -1])
        else:
            out += [h[i][mask[i].bool()] for i in range(len(h))]
    return out


def _next_token_probs(model, pad_id: int) -> Callable[[list[str]], torch.Tensor]:
    def fn(texts: list[str]) -> torch.Tensor:
        h = torch.stack(reference_hidden(model, token_rows(model, texts), pad_id, last_only=True))
        return log_probs(model, h).exp()

    return fn


@torch.no_grad()
def build_teacher(model: Model, data: EditData, facts: FactSet, cfg: EditConfig, progress: bool) -> torch.Tensor:
    """Causal-teacher distributions for the forget facts (replacements: retain subjects first, then others)."""
    maintain = [f.subject for f in data.split.retain] if data.split is not None and data.split.retain else []
    forget_subjects = [f.subject for f in data.forget]
    probs = _next_token_probs(model, data.pad_id)
    rows = []
    for f in tqdm(data.forget, desc="causal teacher", disable=not progress, leave=False):
        pool = list(dict.fromkeys(maintain))
        if len(pool) < cfg.teacher_subjects:
            pool += [s for s in dict.fromkeys(forget_subjects) if s not in pool]
        reps = replacement_subjects(f, pool, cfg.teacher_subjects, cfg.seed)
        rows.append(teacher_distribution(probs, model.tokenizer, f, reps))
    return torch.stack(rows)


# ---------------------------------------------------------------------- the training loop


def _lr_lambda(cfg: EditConfig) -> Callable[[int], float]:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine decay to zero at ``cfg.steps``."""
    def fn(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / cfg.steps)))

    return fn


def _pick(n: int, k: int, gen: torch.Generator) -> list[int]:
    """All of range(n) if k >= n, else k indices drawn without replacement."""
    return list(range(n)) if k >= n else torch.randperm(n, generator=gen)[:k].tolist()


class _Refs:
    """Everything computed from the original weights before training (hidden states shared through ``memo``,
    keyed by the weights' fingerprint and the token rows)."""

    def __init__(self, model, data: EditData, obj: Objective, cfg: EditConfig, facts: FactSet, progress: bool,
                 memo: OriginalMemo | None = None, weights: str = ""):
        def hidden(rows: list[list[int]], last_only: bool) -> list[torch.Tensor]:
            key = ("edit-reference-hidden", weights, last_only, tuple(map(tuple, rows)))
            return remembered(memo, key, lambda: reference_hidden(model, rows, data.pad_id, last_only))

        self.forget_h = torch.stack(hidden(data.forget_rows, True)) if "forget_ref" in obj.needs else None
        self.retain_h = torch.stack(hidden(data.retain_rows, True)) if "retain_ref" in obj.needs else None
        self.fluency_h = hidden(data.fluency_rows, False) if data.fluency_rows else []
        self.teacher = build_teacher(model, data, facts, cfg, progress) if "teacher" in obj.needs else None


def _step_loss(model, data: EditData, refs: _Refs, obj: Objective, cfg: EditConfig, fwd: PrefixCache,
               gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of one step (on a fresh sample of facts and texts) and its terms as floats."""
    f_idx = _pick(len(data.forget_rows), cfg.forget_batch, gen)
    r_idx = _pick(len(data.retain_rows), cfg.retain_batch, gen) if data.retain_rows else []
    use_fluency = bool(refs.fluency_h) and cfg.fluency_weight > 0
    fl_idx = _pick(len(data.fluency_rows), cfg.fluency_batch, gen) if use_fluency else []
    # one packed forward for prompts and fluency texts (padding costs nothing, so mixing lengths is free)
    h_all, mask_all = fwd.hidden([("forget", i) for i in f_idx] + [("retain", j) for j in r_idx]
                                 + [("fluency", i) for i in fl_idx])
    nf, n_prompts = len(f_idx), len(f_idx) + len(r_idx)
    logp = log_probs(model, h_all[:n_prompts, -1])
    x = ObjectiveInputs(
        forget_logp=logp[:nf], answer_ids=data.answer_ids[f_idx], target_ids=data.target_ids[f_idx],
        random_ids=data.random_ids[f_idx], retain_logp=logp[nf:] if r_idx else None,
        retain_answer_ids=data.retain_answer_ids[r_idx] if r_idx else None,
        forget_ref_logp=log_probs(model, refs.forget_h[f_idx]) if refs.forget_h is not None else None,
        retain_ref_logp=log_probs(model, refs.retain_h[r_idx]) if refs.retain_h is not None else None,
        teacher_probs=refs.teacher[f_idx] if refs.teacher is not None else None,
    )
    terms = obj.fn(x, cfg)
    loss = cfg.c_f * terms.forget
    logged = {"forget": float(terms.forget.detach())}
    if terms.retain is not None:
        loss = loss + cfg.retain_weight * terms.retain
        logged["retain"] = float(terms.retain.detach())
    if use_fluency:
        h = h_all[n_prompts:][mask_all[n_prompts:].bool()]
        ref = log_probs(model, torch.cat([refs.fluency_h[i] for i in fl_idx]))
        fluency = F.kl_div(log_probs(model, h), ref, log_target=True, reduction="batchmean")
        loss = loss + cfg.fluency_weight * fluency
        logged["fluency"] = float(fluency.detach())
    logged["loss"] = float(loss.detach())
    return loss, logged


def _train(model, data: EditData, refs: _Refs, obj: Objective, cfg: EditConfig, ts: TrainableSet,
           fwd: PrefixCache, progress: bool) -> tuple[list[dict], list[float], int]:
    """Run the optimization; returns the per-step log, step times and the optimizer-state bytes."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(ts.leaves(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    log: list[dict] = []
    times: list[float] = []
    bar = tqdm(range(cfg.steps), desc=f"edit ({obj.name})", disable=not progress, leave=False)
    for step in bar:
        t0 = time.perf_counter()
        loss, logged = _step_loss(model, data, refs, obj, cfg, fwd, gen)
        if not math.isfinite(logged["loss"]):
            bad = [k for k, v in logged.items() if k != "loss" and not math.isfinite(v)]
            raise EditError(f"non-finite loss at step {step} (term(s) {', '.join(bad) or 'loss'}: "
                            f"{ {k: logged[k] for k in bad} }); original weights restored. Lower the lr "
                            f"(now {cfg.lr}) or check the objective")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(ts.leaves(), cfg.grad_clip)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        times.append(time.perf_counter() - t0)
        log.append({"step": step, **logged, "lr": lr, "grad_norm": float(grad_norm)})
        bar.set_postfix({k: f"{v:.3f}" for k, v in logged.items()})
    state_bytes = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
                      if torch.is_tensor(v))
    del opt
    return log, times, state_bytes


MAX_STEP_TOKENS = 1024  # padded tokens of forget + retain rows in one training step (bounds activation memory)


def cap_step_tokens(cfg: EditConfig, data: EditData, max_tokens: int = MAX_STEP_TOKENS) -> EditConfig:
    """Shrink forget/retain batch sizes (same ratio, recorded in the config) so one step pads at most
    ``max_tokens`` tokens: long prompts would otherwise make a 64-row step allocate gigabytes of activations."""
    width = max(len(r) for r in data.forget_rows + data.retain_rows)
    f_rows, r_rows = min(cfg.forget_batch, len(data.forget_rows)), min(cfg.retain_batch, len(data.retain_rows))
    if (f_rows + r_rows) * width <= max_tokens:
        return cfg
    scale = max_tokens / ((f_rows + r_rows) * width)
    new = replace(cfg, forget_batch=max(1, int(f_rows * scale)), retain_batch=max(1, int(r_rows * scale)))
    log.warning("prompts up to %d tokens: training batches cut to %d forget + %d retain rows (%d tokens per step)",
                width, new.forget_batch, new.retain_batch, max_tokens)
    return new


def edit(
    model: Model, facts: FactSet, localization: Localization, objective: str | Objective = "edit",
    config: EditConfig | None = None, *, progress: bool = True, memo: OriginalMemo | None = None,
) -> EditResult:
    """Fine-tune only ``localization``'s components of ``model`` (IN PLACE) so the forget facts change.

    Forget facts are ``facts.forget_set()`` (a target or forget=1), maintain facts the rest. Returns the
    revertible delta; ``result.revert(model)`` restores the original weights bit-exactly. ``memo``: reuse the
    unedited model's reference hidden states from an earlier edit of the same weights (``mechedit.memo``).
    """
    cfg = config or EditConfig()
    obj = get_objective(objective)
    if not localization.components:
        raise EditError(f"localization '{localization.method}' has no components; nothing to train")
    check_in_range(model, localization.components)
    t_start = time.perf_counter()
    base_fp = fingerprint(model)
    use_fluency = cfg.fluency_weight > 0
    data = prepare(model, facts, cfg, obj.needs, use_fluency)
    cfg = cap_step_tokens(cfg, data)
    refs = _Refs(model, data, obj, cfg, facts, progress, memo, base_fp)
    t_prefix = time.perf_counter()
    start = min(c.layer for c in localization.components)
    pools = {"forget": data.forget_rows, "retain": data.retain_rows, "fluency": data.fluency_rows}
    fwd = PrefixCache(model, start, pools, data.pad_id, enabled=cfg.cache_prefix)
    t_prefix = time.perf_counter() - t_prefix
    ts = TrainableSet(model, trainable_masks(model, localization.components, cfg.kv))
    ts.begin()
    try:
        with torch.enable_grad():
            log, times, state_bytes = _train(model, data, refs, obj, cfg, ts, fwd, progress)
        ts.write_back()
        bad = [t.name for t in ts.items if not bool(torch.isfinite(t.current()).all())]
        if bad:
            raise EditError(f"training produced non-finite weights in {bad[0]}; original weights restored")
    except BaseException:
        ts.restore()
        raise
    finally:
        ts.end()
    return EditResult(
        objective=obj.name, config=cfg, localization=localization, base_fingerprint=base_fp,
        edited_fingerprint=fingerprint(model), n_params_trained=ts.n_params, log=log,
        old={t.name: t.original for t in ts.items}, new={t.name: t.current().clone() for t in ts.items},
        index={t.name: t.index for t in ts.items}, shapes={t.name: tuple(t.param.shape) for t in ts.items},
        extra={
            "wall_time_s": time.perf_counter() - t_start,
            "median_step_s": statistics.median(times) if times else None, "step_times_s": times,
            "optimizer_state_bytes": state_bytes, "first_trained_layer": start,
            "forward_from_first_trained_layer": fwd.active, "prefix_cache_s": t_prefix,
            "n_forget": len(data.forget), "n_maintain": len(facts) - len(data.forget),
            "n_retain_pool": len(data.retain_rows), "fluency_source": data.fluency_source,
            "n_fluency_texts": len(data.fluency_rows),
            "heldout": {"seed": cfg.seed, "fraction": cfg.eval_fraction, "retain": data.split.retain_keys,
                        "n_evaluation": 0 if data.split.evaluation is None else len(data.split.evaluation),
                        "n_fluency_heldout": data.n_fluency_heldout, "note": data.split.note},
        },
    )


def edit_sequence(
    model: Model, rounds: Sequence[FactSet], localize: Localization | Callable[[object, FactSet], Localization],
    objective: str | Objective = "edit", config: EditConfig | None = None, *, progress: bool = True,
) -> list[EditResult]:
    """Sequential editing: one ``edit`` per fact set, in order, on the same model (in place).

    ``localize`` is a fixed Localization or a function ``(model, facts) -> Localization`` called on the
    current, already edited model at the start of each round (re-localization). ``compose(results)`` gives
    one revertible result for the whole sequence.
    """
    results = []
    for facts in rounds:
        loc = localize(model, facts) if callable(localize) else localize
        results.append(edit(model, facts, loc, objective, config, progress=progress))
    return results
