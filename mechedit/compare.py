"""The main job: localize with several methods at a matched budget, edit identically, verify, compare.

``compare(settings, out_dir)`` runs, for each seed (a different sample of facts to change) and each method:
localize on the original model → edit a working copy with identical settings → full verification (behaviour,
MCQ, paraphrases, relearning, latent probes, verdict) → revert the working copy bit-exactly. Ranking-based
baselines are cut to the parameter budget of the fact-lookup localization (``probe``, else ``path``).
Everything is written under ``out_dir`` (see ``write_run``) and summarized per method as mean ± spread.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from tqdm.auto import tqdm

from mechedit.edit import EditConfig, edit
from mechedit.evaluate import RelearnConfig, evaluate
from mechedit.facts import FactError, FactSet, load_facts
from mechedit.localize import get_localizer
from mechedit.localize.localization import Localization
from mechedit.models import load_model
from mechedit.results import SavedResult
from mechedit.scoring import known_facts
from mechedit.tokens import validate_facts

BUDGET_SOURCES = ("probe", "path")  # the fact-lookup localizations that define the parameter budget
BUDGETED = ("causal-tracing", "attribution", "random")  # ranking-based methods cut to that budget
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
    ("latent", "latent_probe_max"),
    ("fluency KL", "fluency_kl"),
)


@dataclass
class CompareSettings:
    """What ``compare`` runs; every field is recorded in summary.json and the report."""

    model: str = "factworld"
    facts: str = "factworld"
    methods: list[str] = field(default_factory=lambda: ["probe", "path", "causal-tracing", "nonlocalized"])
    objective: str = "edit"
    n_facts: int = 16
    seeds: int = 3
    relation: str | None = None  # restrict to one relation (default: the one with the most known facts)
    max_maintain: int = 64  # maintain facts per run (seeded sample), for speed
    steps: int | None = None  # edit steps (None: EditConfig default)
    lr: float | None = None
    relearn: bool = True
    relearn_steps: int | None = None  # relearning-attack steps (None: RelearnConfig default, 20)
    latent: bool = True
    diagnostics: bool = False


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
    runs: list[MethodRun]
    elapsed_seconds: float
    n_known_facts: int
    fact_pool: str
    versions: dict[str, str]
    command: str | None = None
    extra: dict = field(default_factory=dict)

    FILENAME: ClassVar[str] = "summary.json"

    def to_dict(self) -> dict:
        """The summary.json layout."""
        return {"settings": asdict(self.settings), "command": self.command, "elapsed_seconds": self.elapsed_seconds,
                "n_known_facts": self.n_known_facts, "fact_pool": self.fact_pool, "versions": self.versions,
                "methods": self.methods, "runs": [r.to_dict() for r in self.runs], "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> Comparison:
        """Inverse of ``to_dict``."""
        return cls(CompareSettings(**d["settings"]), d["methods"], [MethodRun.from_dict(r) for r in d["runs"]],
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
    curve = metrics.get("latent_probe_accuracy")
    return max(curve) if curve else None


def compare(settings: CompareSettings, out_dir: str | Path | None = None, progress: bool = True) -> Comparison:
    """Run the comparison; returns its Comparison (also written to ``out_dir`` when given)."""
    t_start = time.time()
    base = load_model(settings.model)  # never modified: localization and the reference for verification
    work = load_model(settings.model)  # edited and reverted for every run
    facts = validate_facts(base.tokenizer, load_facts(settings.facts), on_collision="drop")
    if settings.relation is not None:  # filter first: scoring a whole large fact set is the slow part
        facts = pick_relation(facts, settings.relation)
    known = known_facts(base, facts)
    pool = pick_relation(known, settings.relation)
    methods = list(dict.fromkeys(settings.methods))
    for m in methods:
        get_localizer(m)  # fail fast on unknown names
    # budget-defining localizations first, so the baselines of the same seed can be cut to their size
    order = sorted(methods, key=lambda m: BUDGET_SOURCES.index(m) if m in BUDGET_SOURCES else len(BUDGET_SOURCES))
    edit_kw = {k: v for k, v in (("steps", settings.steps), ("lr", settings.lr)) if v is not None}
    runs: list[MethodRun] = []
    bar = tqdm(total=settings.seeds * len(methods), desc="compare", disable=not progress)
    relearn_cfg = RelearnConfig() if settings.relearn_steps is None else RelearnConfig(steps=settings.relearn_steps)
    for seed in range(settings.seeds):
        fs = run_facts(pool, settings, seed)
        budget = None
        reference: dict = {}  # the original model's behaviour and MCQ shot count: same for every method
        for method in order:
            bar.set_postfix(seed=seed, method=method)
            t0 = time.time()
            kw = {"budget": budget} if method in BUDGETED and budget is not None else {}
            loc = get_localizer(method)(base, pool if method in RELATION_LEVEL else fs, seed=seed, progress=False,
                                        **kw)
            if method in BUDGET_SOURCES and budget is None:
                budget = loc.n_params
            t1 = time.time()
            result = edit(work, fs, loc, settings.objective, EditConfig(seed=seed, **edit_kw), progress=False)
            t2 = time.time()
            try:
                ev = evaluate(work, fs, original=base, seed=seed, relearn=settings.relearn, relearn_config=relearn_cfg,
                              latent=settings.latent, diagnostics=settings.diagnostics, progress=False,
                              n_shots=reference.get("n_shots"), original_behaviour=reference.get("behaviour"),
                              latent_train=pool)  # latent probes, like the probe localizer, learn from the relation
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
    if out_dir is not None:
        write_run(Path(out_dir), summary)
    return summary


def _stats(values: list) -> dict:
    vals = [v for v in values if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def summarize(settings: CompareSettings, runs: list[MethodRun], elapsed: float, n_known: int, pool: str) -> Comparison:
    """Per-method mean ± spread of every summary column, verdict counts, and the provenance of the run."""
    methods: dict[str, dict] = {}
    for m in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == m]
        verdicts = [r.metrics.get("verdict") for r in mine]
        methods[m] = {
            "columns": {key: _stats([r.metrics.get(key) for r in mine]) for _, key in COLUMNS},
            "n_params": _stats([r.localization.n_params for r in mine]),
            "verdicts": {v: verdicts.count(v) for v in dict.fromkeys(verdicts)},
        }
    return Comparison(
        settings=settings,
        command=" ".join(["mechedit"] + sys.argv[1:]) if sys.argv and "mechedit" in sys.argv[0] else None,
        elapsed_seconds=elapsed,
        n_known_facts=n_known,
        fact_pool=pool,
        versions=versions(),
        methods=methods,
        runs=runs,
    )


def versions() -> dict:
    """Versions of the packages that determine the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    # distribution metadata, not __version__: transformer_lens 4.x has no __version__ attribute
    return {"mechedit": installed("mechedit"), "python": platform.python_version(), "torch": installed("torch"),
            "transformers": installed("transformers"), "transformer_lens": installed("transformer-lens"),
            "platform": platform.platform()}


def write_run(out: Path, summary: Comparison) -> None:
    """Write summary.json, summary.csv and <method>/{loc.json, metrics.json} (seed 0 at top, all seeds inside)."""
    summary.save(out)
    rows = ["method,verdicts,params," + ",".join(f"{k}_mean,{k}_std" for _, k in COLUMNS)]
    for m, s in summary.methods.items():
        cells = [m, " ".join(f"{v}:{n}" for v, n in s["verdicts"].items()), _fmt_csv(s["n_params"]["mean"])]
        for _, key in COLUMNS:
            cells += [_fmt_csv(s["columns"][key]["mean"]), _fmt_csv(s["columns"][key]["std"])]
        rows.append(",".join(cells))
    (out / "summary.csv").write_text("\n".join(rows) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    for m in summary.methods:
        mine = [r for r in summary.runs if r.method == m]
        mine[0].localization.save(out / m)
        metrics = dict(mine[0].metrics)
        metrics["per_seed"] = [{"seed": r.seed, **r.metrics} for r in mine]
        (out / m / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))


def _fmt_csv(v) -> str:
    return "" if v is None else f"{v:.4f}"


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def format_cell(stat: dict) -> str:
    """``mean ± std`` (or ``-`` when no seed produced the number)."""
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.2f}" + (f" ± {stat['std']:.2f}" if stat["n"] > 1 else "")


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
    return "\n".join(lines) + "\n"
