"""The path-patching localizer (Guo et al. 2024): extraction heads, then the MLPs that feed them.

1. **Extraction heads**: path-patch every head's output directly into the final residual stream
   (noising: clean run, the head takes its value on the subject-corrupted prompt, everything else
   frozen). A head's score is its normalized direct effect on the logit difference (true answer −
   runner-up): the fraction of the clean-vs-corrupt gap it carries straight to the logits. Rule: heads
   with score ≥ ``head_fraction`` × the best head's score, at most ``max_heads``.
2. **Fact-lookup MLPs**: path-patch every MLP into the extraction heads' q/k/v inputs (``receiver_inputs``)
   — the MLP takes its corrupted value, only the extraction heads' inputs see it, the rest of the model
   runs normally. An MLP's score is the normalized effect on the logit difference. Rule: MLPs with score
   ≥ ``mlp_fraction`` × the best MLP's score; with ``budget``, MLPs by descending score cut to the budget.
   No layer is hard-coded: MLPs at or after the last extraction head's layer score 0 by construction.

Components: the chosen MLPs (plus the extraction heads with ``include_heads=True``; with a budget the
heads come after the MLPs in the ranking). ``scores`` hold every head ("head.L.H", direct effect) and
every MLP ("mlp.L", effect through the extraction heads). Inputs (facts, corruption, metric) are described
in ``mechedit.localize.patch_setup``.
"""

from __future__ import annotations

from collections.abc import Sequence

from mechedit.components import parse_component
from mechedit.facts import FactSet
from mechedit.localize.localization import Localization, budget_rule, fit_budget, make_localization
from mechedit.localize.patch_setup import CorruptionKind, choose_by_fraction, patch_setup, pick
from patching.model import Model, arch
from patching.path import path_hooks, path_patch
from patching.runs import make_runs


def localize_path(
    model: Model, facts: FactSet, *, seed: int = 0, budget: int | None = None, progress: bool = True,
    corruption: CorruptionKind = "swap", max_facts: int | None = 64, head_fraction: float = 0.5,
    max_heads: int = 4, mlp_fraction: float = 0.5, receiver_inputs: Sequence[str] = ("q", "k", "v"),
    include_heads: bool = False, max_rows: int | None = None,
) -> Localization:
    """Localize facts to the MLPs feeding the extraction heads (see module docstring for the rules)."""
    setup = patch_setup(model, facts, corruption=corruption, max_facts=max_facts, seed=seed)
    b = setup.batch
    # both steps patch the same clean and corrupted runs: record them once
    runs = make_runs(model, b.input_ids, b.attention_mask, setup.corruption, setup.metric, "noising",
                     path_hooks(model))
    heads = path_patch(model, b.input_ids, b.attention_mask, setup.corruption, setup.metric, senders="heads",
                       receivers="logits", direction="noising", max_rows=max_rows, progress=progress, runs=runs)
    head_scores = heads.scores()
    extraction = choose_by_fraction(head_scores, heads.labels, head_fraction, max_heads)
    mlps = path_patch(model, b.input_ids, b.attention_mask, setup.corruption, setup.metric, senders="mlps",
                      receivers=extraction, receiver_inputs=list(receiver_inputs), direction="noising",
                      max_rows=max_rows, progress=progress, runs=runs)
    mlp_scores = mlps.scores()
    chosen, rule = pick(model, mlp_scores, mlps.labels, fraction=mlp_fraction, budget=budget)
    if include_heads:

        head_comps = [parse_component(h) for h in extraction]
        if budget is not None:
            chosen, rec = fit_budget(model, chosen + head_comps, budget)
            rule = budget_rule("MLPs by path score, then the extraction heads", rec)
        else:
            chosen = chosen + head_comps
    extra = {
        "extraction_heads": extraction, "rule": rule, "head_fraction": head_fraction, "max_heads": max_heads,
        "mlp_fraction": mlp_fraction, "receiver_inputs": list(receiver_inputs), "include_heads": include_heads,
        "clean_logit_diff": heads.clean, "corrupt_logit_diff": heads.corrupt, "n_layers": arch(model).n_layers,
        "n_heads": arch(model).n_heads, **setup.notes,
    }
    return make_localization(model, "path", chosen, {**head_scores, **mlp_scores}, budget=budget, extra=extra)
