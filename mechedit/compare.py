"""The main job: localize with several methods at a matched budget, edit identically, verify, compare.

``compare(settings, out_dir)`` runs, for each seed (a different sample of facts to change) and each method:
localize on the original model → edit a working copy with identical settings → full verification (behaviour,
MCQ, paraphrases, relearning, latent probes, verdict) → revert the working copy bit-exactly. Ranking-based
baselines — and ``path`` when ``probe`` runs — are matched (±10 %, recorded in ``extra["budget"]``) to the parameter
budget of the fact-lookup localization (``probe``, else ``path``).
Everything is written under ``out_dir`` (see ``write_run``) and summarized per method as the mean, the sample SD
of the per-seed means and a bootstrap 95 % interval over seeds × facts (``mechedit.stats``), plus a paired
difference table: each method minus ``probe`` and minus ``nonlocalized`` on the same seeds and facts.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from mechedit.edit import EditConfig, edit
from mechedit.edit.marking import checked_facts
from mechedit.evaluate import RelearnConfig, evaluate
from mechedit.evaluate.attacks import attack_configs
from mechedit.facts import BUNDLED_FACTSETS, FactError, FactSet, load_facts
from mechedit.localize import get_localizer
from mechedit.localize.localization import Localization
from mechedit.memo import OriginalMemo
from mechedit.models import load_model
from mechedit.results import SavedResult, json_default
from mechedit.scoring import known_facts
from mechedit.stats import Interval, bootstrap_ci, paired_difference
from mechedit.validate import check_choice

BUDGET_SOURCES = ("probe", "path")  # the fact-lookup localizations that define the parameter budget
BUDGETED = ("path", "causal-tracing", "causal-tracing-mlp", "attribution", "random")  # matched to that budget (±10 %)
# probes learn a relation-level map from many subjects: they are fitted on every known fact of the relation
# (the paper's recipe), not only on the handful of facts being edited (classes would be too small to split)
RELATION_LEVEL = ("probe",)

# summary columns: (header, metrics.json key)
COLUMNS = (
    ("edit", "edit_accuracy"),
    ("forget", "forget_accuracy"),
    ("maintain", "maintain_accuracy"),
    ("MCQ edit", "mcq_edit_accuracy"),
    ("MCQ forget err", "mcq_forget_error"),
    ("paraphrase", "paraphrase_edit_accuracy"),
    ("relearn", "relearn_accuracy"),
    ("soft-prompt signal", "soft_prompt_signal"),  # shown only when compare ran the attack (--attacks)
    ("in-context signal", "in_context_signal"),
    ("latent", "latent_probe_max"),
    ("fluency KL", "fluency_kl"),
)
PAIRED_REFERENCES = ("probe", "nonlocalized")  # the paired table: each method minus these, same seeds and facts

# named settings for `compare --preset`; options given on the command line override them
PRESETS: dict[str, dict] = {
    # Guo et al.'s comparison at a size whose intervals can support a conclusion: both fact-lookup localizations,
    # output tracing (ROME's causal tracing), a random and an unlocalized edit at a matched parameter budget,
    # 32 facts x 3 seeds (16 held-out facts per seed for relearning), LoRA relearning, latent probes, diagnostics.
    # 30 edit steps (every SmolLM2 P37 edit reaches its 32 targets by then) and 32 maintain facts per seed keep it
    # within ~41 minutes on 2 CPU cores
    "paper": {"methods": ["probe", "path", "causal-tracing", "random", "nonlocalized"], "n_facts": 32, "seeds": 3,
              "steps": 30, "max_maintain": 32, "relearn": True, "relearn_mode": "lora", "latent": True,
              "diagnostics": True},
}


def apply_preset(settings: CompareSettings, name: str, given: set[str] = frozenset()) -> CompareSettings:
    """``settings`` with preset ``name``'s values, except for the fields in ``given`` (set explicitly)."""
    check_choice("--preset", "preset", name, PRESETS)
    return replace(settings, **{k: v for k, v in PRESETS[name].items() if k not in given})


@dataclass
class CompareSettings:
    """What ``compare`` runs; every field is recorded in summary.json and the report."""

    model: str = "factworld"
    facts: str = "factworld"
    methods: list[str] = field(default_factory=lambda: ["probe", "path", "causal-tracing", "nonlocalized"])
    objective: str = "edit"
    n_facts: int = 32  # the relearning attack trains on half and tests on the other: 16 held-out facts per seed
    seeds: int = 3
    relation: str | None = None  # restrict to one relation (default: the one with the most known facts)
    max_maintain: int = 64  # maintain facts per run (seeded sample), for speed
    steps: int | None = None  # edit steps (None: EditConfig default)
    lr: float | None = None
    relearn: bool = True
    relearn_steps: int | None = None  # relearning-attack steps (None: RelearnConfig default, 20)
    relearn_mode: str = "lora"  # relearning attack: lora (adapter) or full fine-tune
    latent: bool = True
    diagnostics: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    attacks: list[str] = field(default_factory=list)  # input-side attacks (soft-prompt, in-context); none by default
    soft_prompt_steps: int | None = None  # None: SoftPromptConfig default
    soft_prompt_tokens: int | None = None
    in_context_statements: int | None = None  # None: InContextConfig default


@dataclass
class MethodRun(SavedResult):
    """One method on one seed: its localization, the verification metrics (metrics.json layout), and timings."""

    method: str
    seed: int
    localization: Localization
    metrics: dict
    seconds: dict
    extra: dict = field(default_factory=dict)

    FILENAME: ClassVar[str] = "run.json"

    def to_dict(self) -> dict:
        """JSON-serializable dict (the localization in its loc.json form)."""
        return {"method": self.method, "seed": self.seed, "localization": self.localization.to_dict(),
                "metrics": self.metrics, "seconds": self.seconds, "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> MethodRun:
        """Inverse of ``to_dict``."""
        return cls(d["method"], int(d["seed"]), Localization.from_dict(d["localization"]), d["metrics"],
                   d["seconds"], d.get("extra", {}))


@dataclass
class Comparison(SavedResult):
    """What ``compare`` returns and writes as summary.json: settings, provenance, per-method statistics, every run."""

    settings: CompareSettings
    methods: dict[str, dict]  # method -> {"columns": {key: stats}, "n_params": stats, "verdicts": {verdict: count}}
    paired: dict[str, dict]  # reference -> method -> column -> paired difference (method − reference) with its CI
    runs: list[MethodRun]
    elapsed_seconds: float
    n_known_facts: int
    fact_pool: str
    versions: dict[str, str | int]
    command: str | None = None
    extra: dict = field(default_factory=dict)

    FILENAME: ClassVar[str] = "summary.json"

    def to_dict(self) -> dict:
        """The summary.json layout."""
        return {"settings": asdict(self.settings), "command": self.command, "elapsed_seconds": self.elapsed_seconds,
                "n_known_facts": self.n_known_facts, "fact_pool": self.fact_pool, "versions": self.versions,
                "methods": self.methods, "paired": self.paired, "runs": [r.to_dict() for r in self.runs],
                "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> Comparison:
        """Inverse of ``to_dict``."""
        return cls(CompareSettings(**d["settings"]), d["methods"], d.get("paired", {}),
                   [MethodRun.from_dict(r) for r in d["runs"]],
                   d["elapsed_seconds"], d["n_known_facts"], d["fact_pool"], d["versions"], d.get("command"),
                   d.get("extra", {}))


def pick_relation(known: FactSet, relation: str | None) -> FactSet:
    """The facts of ``relation``, or of the relation with the most known facts."""
    groups = known.by_relation()
    if len(groups) == 1 and relation in (None, *groups):
        return known  # already one relation: keep its name
    if relation is not None:
        if relation not in groups:
            raise FactError(f"relation {relation!r} not among the known facts' relations {sorted(groups)}")
        return groups[relation]
    return max(groups.values(), key=len)


def run_facts(pool: FactSet, settings: CompareSettings, seed: int) -> FactSet:
    """This seed's facts: ``n_facts`` marked to change plus a seeded sample of maintain facts."""
    if len(pool) < settings.n_facts + 8:
        raise FactError(f"need at least {settings.n_facts + 8} known facts of one relation to change "
                        f"{settings.n_facts} and keep the rest; '{pool.name}' has {len(pool)}")
    unlearn = settings.objective != "edit"
    marked = pool.mark_forget(settings.n_facts, seed=seed, with_targets=not unlearn)
    forget = marked.forget_set().facts
    maintain = marked.maintain_set().sample(settings.max_maintain, seed=seed).facts
    return pool.subset(forget + maintain, f"{pool.name}:seed{seed}")


def _latent_max(metrics: dict) -> float | None:
    """The latent number the verdict uses (the selected probe's after-accuracy); the curve's best for old runs."""
    if "latent_after" in metrics:
        return metrics["latent_after"]
    curve = metrics.get("latent_probe_accuracy")
    return max(curve) if curve else None


SHARD_FILE = "shard.json"


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n); raise ValueError naming a malformed or out-of-range shard."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard {spec!r}: expected i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {spec!r}: index {i} out of range 0..{n - 1} for {n} shard(s)")
    return i, n


def method_order(settings: CompareSettings) -> list[str]:
    """Methods in run order: budget-defining localizations first, so baselines of a seed can be cut to their size."""
    methods = list(dict.fromkeys(settings.methods))
    return sorted(methods, key=lambda m: BUDGET_SOURCES.index(m) if m in BUDGET_SOURCES else len(BUDGET_SOURCES))


def cells(settings: CompareSettings) -> list[tuple[int, str]]:
    """Every (seed, method) cell in run order; shard i of n runs cells i, i + n, i + 2n, ..."""
    return [(seed, m) for seed in range(settings.seeds) for m in method_order(settings)]


def compare(settings: CompareSettings, out_dir: str | Path | None = None, progress: bool = True,
            shard: tuple[int, int] | None = None) -> Comparison:
    """Run the comparison; returns its Comparison (also written to ``out_dir`` when given).

    With ``shard=(i, n)`` only cells i, i + n, ... of ``cells(settings)`` are edited and evaluated (a budgeted
    baseline whose budget source is another shard's cell re-runs that localization, which is deterministic) and
    ``out_dir`` receives ``shard.json`` for ``merge``.
    """
    t_start = time.time()
    all_cells = cells(settings)
    mine = set(all_cells if shard is None else all_cells[shard[0]::shard[1]])
    where = {"device": settings.device, "dtype": settings.dtype}
    base = load_model(settings.model, **where)  # never modified: localization and the reference for verification
    work = load_model(settings.model, **where)  # edited and reverted for every run
    facts = checked_facts(base, load_facts(settings.facts), settings.facts in BUNDLED_FACTSETS)
    if settings.relation is not None:  # filter first: scoring a whole large fact set is the slow part
        facts = pick_relation(facts, settings.relation)
    known = known_facts(base, facts)
    pool = pick_relation(known, settings.relation)
    order = method_order(settings)
    for m in order:
        get_localizer(m)  # fail fast on unknown names
    edit_kw = {k: v for k, v in (("steps", settings.steps), ("lr", settings.lr)) if v is not None}
    runs: list[MethodRun] = []
    bar = tqdm(total=len(mine), desc="compare", disable=not progress)
    relearn_cfg = RelearnConfig(mode=settings.relearn_mode, **({} if settings.relearn_steps is None
                                                                else {"steps": settings.relearn_steps}))
    attack_cfgs = attack_configs(settings.soft_prompt_steps, settings.soft_prompt_tokens,
                                 settings.in_context_statements)
    for seed in range(settings.seeds):
        fs = run_facts(pool, settings, seed)
        budget = None
        reference: dict = {}  # the original model's behaviour and MCQ shot count: same for every method
        memo = OriginalMemo()  # the original model's features, probes, Fisher, fluency: same for every method
        for k, method in enumerate(order):
            later_budgeted = any((seed, m) in mine and m in BUDGETED for m in order[k + 1:])
            if (seed, method) not in mine and not (method in BUDGET_SOURCES and budget is None and later_budgeted):
                continue
            bar.set_postfix(seed=seed, method=method)
            t0 = time.time()
            kw = {"budget": budget} if method in BUDGETED and budget is not None else {}
            loc = get_localizer(method)(base, pool if method in RELATION_LEVEL else fs, seed=seed, progress=False,
                                        **kw)
            if method in BUDGET_SOURCES and budget is None:
                budget = loc.n_params
            if (seed, method) not in mine:  # another shard's cell: only its budget was needed here
                continue
            t1 = time.time()
            result = edit(work, fs, loc, settings.objective, EditConfig(seed=seed, **edit_kw), progress=False,
                          memo=memo)  # work holds the original weights again (every edit is reverted)
            t2 = time.time()
            try:
                ev = evaluate(work, fs, original=base, seed=seed, relearn=settings.relearn, relearn_config=relearn_cfg,
                              latent=settings.latent, diagnostics=settings.diagnostics, progress=False,
                              n_shots=reference.get("n_shots"), original_behaviour=reference.get("behaviour"),
                              latent_train=pool,  # latent probes, like the probe localizer, learn from the relation
                              retain_keys=result.extra["heldout"]["retain"],  # maintain scored on the held-out half
                              attacks=settings.attacks, attack_configs=attack_cfgs, memo=memo)
                reference.setdefault("n_shots", ev.extra["mcq_shots"])
                reference.setdefault("behaviour", ev.original_behaviour)
            finally:
                result.revert(work)
            metrics = ev.to_dict()
            metrics["latent_probe_max"] = _latent_max(metrics)
            metrics["n_params_trained"] = int(result.n_params_trained)  # evaluate saw the edited model, not the edit
            runs.append(MethodRun(method, seed, loc, metrics,
                                  {"localize": t1 - t0, "edit": t2 - t1, "evaluate": time.time() - t2}))
            bar.update(1)
    bar.close()
    summary = summarize(settings, runs, time.time() - t_start, len(known), pool.name)
    if out_dir is not None and shard is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / SHARD_FILE).write_text(json.dumps(
            {"shard": list(shard), **summary.to_dict()}, indent=2, default=json_default))
    elif out_dir is not None:
        write_run(Path(out_dir), summary)
    return summary


def merge(dirs: list[str | Path], out_dir: str | Path | None = None) -> Comparison:
    """Build the summary of a sharded run from its shard directories (the same summary an unsharded run gives,
    up to timings); raise ValueError naming a missing, duplicated or foreign shard."""
    if not dirs:
        raise ValueError("--merge needs the shard directories")
    shards = []
    for d in dirs:
        path = Path(d) / SHARD_FILE
        if not path.is_file():
            raise ValueError(f"{d}: no {SHARD_FILE} (not a `compare --shard` output directory)")
        shards.append((path, json.loads(path.read_text())))
    first_path, first = shards[0]
    n = first["shard"][1]
    seen: dict[int, Path] = {}
    for path, d in shards:
        for key in sorted(set(first["settings"]) | set(d["settings"])):
            if first["settings"].get(key) != d["settings"].get(key):
                raise ValueError(f"{path}: setting {key!r} is {d['settings'].get(key)!r} but {first_path} has "
                                 f"{first['settings'].get(key)!r}; shards of different runs cannot be merged")
        for key in ("n_known_facts", "fact_pool"):
            if d[key] != first[key]:
                raise ValueError(f"{path}: {key} {d[key]!r} differs from {first_path}'s {first[key]!r}")
        i, n_i = d["shard"]
        if n_i != n:
            raise ValueError(f"{path}: shard {i}/{n_i} does not belong to a run split into {n} shards")
        if i in seen:
            raise ValueError(f"{path}: shard {i}/{n} given twice (also {seen[i]})")
        seen[i] = path
    missing = sorted(set(range(n)) - set(seen))
    if missing:
        raise ValueError(f"shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing from --merge")
    settings = CompareSettings(**first["settings"])
    rank = {c: k for k, c in enumerate(cells(settings))}
    runs = sorted((MethodRun.from_dict(r) for _, d in shards for r in d["runs"]), key=lambda r: rank[r.seed, r.method])
    summary = summarize(settings, runs, sum(d["elapsed_seconds"] for _, d in shards), first["n_known_facts"],
                        first["fact_pool"])
    summary.extra["merged_from"] = [str(p.parent) for p, _ in shards]
    if out_dir is not None:
        write_run(Path(out_dir), summary)
    return summary


def run_values(metrics: dict, key: str) -> tuple[dict[str, float], str]:
    """(unit id -> value, what the units are) of one column in one run: per fact (or per fluency text) when
    the run kept them, else the run's single number (unit ``"run"``)."""
    per_fact = ((metrics.get("behaviour") or {}).get("per_fact") or {}).get(key)
    if per_fact:
        return {k: float(v) for k, v in per_fact.items() if v is not None}, "facts"
    if key == "fluency_kl" and (metrics.get("fluency") or {}).get("heldout_per_text"):
        return {f"text{i}": float(v) for i, v in enumerate(metrics["fluency"]["heldout_per_text"])}, "texts"
    v = metrics.get(key)
    return ({"run": float(v)} if isinstance(v, int | float) and v == v else {}), "runs"


def _column(runs: list[MethodRun], key: str) -> dict:
    """Mean, sample SD of the per-seed means and bootstrap 95 % CI (seeds, then units within each) of a column."""
    clusters, units = [], "runs"
    for r in runs:
        vals, units_r = run_values(r.metrics, key)
        if vals:
            clusters.append(list(vals.values()))
            units = units_r if units_r != "runs" else units
    iv = bootstrap_ci(clusters) if clusters else Interval(None, None, None, 0, 0, note="not measured")
    return {**iv.to_dict(), "over": f"seeds × {units}" if units != "runs" else "seeds"}


def _keyed(runs: list[MethodRun], key: str) -> dict[tuple, float]:
    """(seed, unit id) -> value of one column over a method's runs, for pairing."""
    out = {}
    for r in runs:
        vals, _ = run_values(r.metrics, key)
        out.update({(r.seed, k): v for k, v in vals.items()})
    return out


def paired_table(runs: list[MethodRun], reference: str) -> dict[str, dict[str, dict]]:
    """method -> column -> paired difference (method − ``reference``) on shared seeds and facts, with its CI."""
    ref = [r for r in runs if r.method == reference]
    out: dict[str, dict[str, dict]] = {}
    for m in dict.fromkeys(r.method for r in runs):
        if m == reference or not ref:
            continue
        mine = [r for r in runs if r.method == m]
        out[m] = {key: paired_difference(_keyed(mine, key), _keyed(ref, key)).to_dict() for _, key in COLUMNS}
    return out


def _stats(values: list) -> dict:
    vals = [float(v) for v in values if isinstance(v, int | float) and v == v]
    if not vals:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}


def summarize(settings: CompareSettings, runs: list[MethodRun], elapsed: float, n_known: int,
              pool: str) -> Comparison:
    """Per-method mean, SD and CI of every summary column, paired differences, verdict counts and provenance."""
    methods: dict[str, dict] = {}
    for m in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == m]
        verdicts = [r.metrics.get("verdict") for r in mine]
        methods[m] = {
            "columns": {key: _column(mine, key) for _, key in COLUMNS},
            "n_params": _stats([r.localization.n_params for r in mine]),
            "verdicts": {v: verdicts.count(v) for v in dict.fromkeys(verdicts)},
        }
    paired = {ref: paired_table(runs, ref) for ref in PAIRED_REFERENCES if ref in methods}
    return Comparison(
        settings=settings,
        command=" ".join(["mechedit"] + sys.argv[1:]) if sys.argv and "mechedit" in sys.argv[0] else None,
        elapsed_seconds=elapsed,
        n_known_facts=n_known,
        fact_pool=pool,
        versions=versions(),
        methods=methods,
        paired=paired,
        runs=runs,
    )


def versions() -> dict:
    """Versions of the packages that determine the numbers, and torch's thread count (it sets the order of float
    reductions: a short full fine-tune's fluency KL can move at that level, see README)."""
    def installed(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    # distribution metadata, not __version__: transformer_lens 4.x has no __version__ attribute
    return {"mechedit": installed("mechedit"), "python": platform.python_version(), "torch": installed("torch"),
            "transformers": installed("transformers"), "transformer_lens": installed("transformer-lens"),
            "platform": platform.platform(), "torch_threads": torch.get_num_threads()}


def write_run(out: Path, summary: Comparison) -> None:
    """Write summary.json, summary.csv and <method>/{loc.json, metrics.json} (seed 0 at top, all seeds inside)."""
    summary.save(out)
    rows = ["method,verdicts,params," + ",".join(f"{k}_mean,{k}_sd,{k}_ci_low,{k}_ci_high" for _, k in COLUMNS)]
    for m, s in summary.methods.items():
        cells = [m, " ".join(f"{v}:{n}" for v, n in s["verdicts"].items()), _fmt_csv(s["n_params"]["mean"])]
        for _, key in COLUMNS:
            c = s["columns"][key]
            cells += [_fmt_csv(c["mean"]), _fmt_csv(c["sd"]), _fmt_csv(c["low"]), _fmt_csv(c["high"])]
        rows.append(",".join(cells))
    (out / "summary.csv").write_text("\n".join(rows) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    for m in summary.methods:
        mine = [r for r in summary.runs if r.method == m]
        mine[0].localization.save(out / m)
        metrics = dict(mine[0].metrics)
        metrics["per_seed"] = [{"seed": r.seed, **r.metrics} for r in mine]
        (out / m / "metrics.json").write_text(json.dumps(metrics, indent=2, default=json_default))


def _fmt_csv(v) -> str:
    return "" if v is None else f"{v:.4f}"


def format_cell(stat: dict, sd: bool = True) -> str:
    """``mean ± SD [CI low, CI high]`` (SD and CI when they exist; ``-`` when no seed produced the number)."""
    if stat["mean"] is None:
        return "-"
    out = f"{stat['mean']:.2f}"
    if sd and stat.get("sd") is not None:
        out += f" ± {stat['sd']:.2f}"
    if stat.get("low") is not None and stat.get("high") is not None:
        out += f" [{stat['low']:.2f}, {stat['high']:.2f}]"
    return out


CELL_LEGEND = ("mean ± sample SD of the per-seed means [bootstrap 95 % CI over seeds × facts; over seeds only for "
               "relearn, latent and the attack signals, one number per run; over held-out texts for fluency KL]")
PAIRED_LEGEND = ("paired difference (method − reference) on the same seeds and facts: mean [bootstrap 95 % CI]; "
                 "an interval that contains 0 shows no difference at this size")


def paired_rows(summary: Comparison, reference: str) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of the paired difference table against ``reference`` (empty if absent)."""
    table = summary.paired.get(reference) or {}
    shown = [(h, k) for h, k in COLUMNS if any(c[k]["mean"] is not None for c in table.values())]
    rows = [[method, *[format_cell(cols[k], sd=False) for _, k in shown]] for method, cols in table.items()]
    return [f"method − {reference}", *[h for h, _ in shown]], rows


def summary_title(summary: Comparison) -> str:
    """Model, fact pool, objective and size of a comparison, in one line."""
    s = summary.settings
    return (f"{s.model} · {summary.fact_pool} · objective {s.objective} · "
            f"{s.n_facts} facts × {s.seeds} seed(s)")


def table_rows(summary: Comparison) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of the summary table (columns nobody measured are left out)."""
    shown = [(h, k) for h, k in COLUMNS
             if any(m["columns"][k]["mean"] is not None for m in summary.methods.values())]
    rows = []
    for method, m in summary.methods.items():
        verdict = ", ".join(f"{v} {n}/{sum(m['verdicts'].values())}" for v, n in m["verdicts"].items())
        params = m["n_params"]["mean"]
        rows.append([method, *[format_cell(m["columns"][k]) for _, k in shown], verdict,
                     f"{params / 1e6:.2f}M" if params else "-"])
    return ["method", *[h for h, _ in shown], "verdict", "params"], rows


def summary_markdown(summary: Comparison) -> str:
    """The summary table as Markdown (summary.md: paste it into a paper draft or a README)."""
    headers, rows = table_rows(summary)
    lines = [f"**{summary_title(summary)}** — elapsed {summary.elapsed_seconds:.0f} s", "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", f"Cells: {CELL_LEGEND}."]
    for ref in PAIRED_REFERENCES:
        headers, rows = paired_rows(summary, ref)
        if not rows:
            continue
        lines += ["", f"**Paired differences against {ref}**", "",
                  "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    if summary.paired:
        lines += ["", f"Paired cells: {PAIRED_LEGEND}."]
    return "\n".join(lines) + "\n"
