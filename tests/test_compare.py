"""The main job on factworld: compare writes every file, baselines share the budget, the report is self-contained."""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics

import pytest
import torch
from typer.testing import CliRunner

from mechedit.cli import app
from mechedit.compare import COLUMNS, CompareSettings, MethodRun, compare, paired_table, run_facts, summarize
from mechedit.facts import FactError
from mechedit.report import write_report


@pytest.fixture(scope="module")
def run_dir(small_comparison):
    """conftest's small real comparison (shared with the report tests): 2 seeds x (probe, path, random,
    nonlocalized), short edits and attacks."""
    return small_comparison


def test_compare_writes_every_file(run_dir):
    out, summary = run_dir
    for name in ("summary.csv", "summary.json", "summary.md"):
        assert (out / name).exists()
    for method in ("probe", "path", "random", "nonlocalized"):
        assert (out / method / "loc.json").exists()
        metrics = json.loads((out / method / "metrics.json").read_text())
        assert len(metrics["per_seed"]) == 2 and metrics["verdict"] in ("removed", "suppressed")
    assert json.loads((out / "summary.json").read_text())["settings"]["seeds"] == 2
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["method"] for r in rows] == list(summary.methods)
    assert len(summary.runs) == 8 and summary.elapsed_seconds > 0
    versions = summary.versions
    assert all(versions[k][0].isdigit() for k in ("mechedit", "torch", "transformers", "transformer_lens")), versions
    assert versions["torch_threads"] == torch.get_num_threads() >= 1


def test_compare_numbers_are_real_and_budgets_match(run_dir):
    _, summary = run_dir
    runs = {(r.method, r.seed): r for r in summary.runs}
    for seed in (0, 1):
        probe, rnd = runs[("probe", seed)], runs[("random", seed)]
        # the random baseline is cut to the probe localization's parameter budget (never above it)
        assert 0 < rnd.metrics["n_params_trained"] <= probe.metrics["n_params_trained"]
        assert runs[("nonlocalized", seed)].metrics["n_params_trained"] > probe.metrics["n_params_trained"]
        # the probe is fitted on the whole known relation, not on the 8 + 24 facts being edited
        assert probe.localization.extra["n_facts"] >= 300
    # the fact-lookup localization edits the facts on factworld (measured: 1.00)
    assert summary.methods["probe"]["columns"]["edit_accuracy"]["mean"] >= 0.9
    assert summary.methods["nonlocalized"]["columns"]["edit_accuracy"]["mean"] >= 0.9
    for m in summary.methods.values():
        assert m["columns"]["maintain_accuracy"]["mean"] >= 0.7
        assert sum(m["verdicts"].values()) == 2


def test_summary_has_sample_sd_bootstrap_cis_and_paired_tables(run_dir):
    out, summary = run_dir
    probe = summary.methods["probe"]["columns"]
    edit_acc = probe["edit_accuracy"]
    assert edit_acc["n"] == 16 and edit_acc["n_clusters"] == 2 and edit_acc["over"] == "seeds × facts"
    assert edit_acc["low"] <= edit_acc["mean"] <= edit_acc["high"]
    per_seed = [r.metrics["edit_accuracy"] for r in summary.runs if r.method == "probe"]
    assert edit_acc["sd"] == pytest.approx(statistics.stdev(per_seed))  # sample SD (ddof=1), not pstdev
    assert probe["maintain_accuracy"]["n"] == 2 * 12 and probe["fluency_kl"]["over"] == "seeds × texts"
    assert probe["latent_probe_max"]["over"] == "seeds"  # one number per run
    paired = summary.paired
    assert set(paired) == {"probe", "nonlocalized"} and set(paired["probe"]) == {"path", "random", "nonlocalized"}
    assert set(paired["nonlocalized"]) == {"probe", "path", "random"}
    d = paired["probe"]["nonlocalized"]["forget_accuracy"]
    assert d["n"] == 16 and d["n_clusters"] == 2
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["paired"]["probe"]["path"]["edit_accuracy"] == paired["probe"]["path"]["edit_accuracy"]
    md = (out / "summary.md").read_text()
    assert "Paired differences against probe" in md and "Paired differences against nonlocalized" in md
    assert "bootstrap 95 % CI" in md and "[" in md
    assert "edit_accuracy_ci_low" in (out / "summary.csv").read_text()


def test_paired_ci_of_two_identical_methods_contains_zero(run_dir):
    """The random baseline's runs under a second name (identical localization, edit and evaluation for every
    seed): the planted difference is 0, and every paired interval must contain it."""
    _, summary = run_dir
    runs = [r for r in summary.runs if r.method in ("probe", "random")]
    twin = [MethodRun("random-again", r.seed, r.localization, r.metrics, r.seconds) for r in runs
            if r.method == "random"]
    s = summarize(CompareSettings(methods=["probe", "random", "random-again"]), runs + twin, 0.0, 0, "pool")
    against_probe, twins = s.paired["probe"], paired_table(runs + twin, "random")["random-again"]
    for _, key in COLUMNS:
        assert against_probe["random-again"][key] == against_probe["random"][key]
        stat = twins[key]
        if stat["mean"] is not None:
            assert stat["mean"] == 0.0 and stat["low"] <= 0.0 <= stat["high"], (key, stat)
    assert twins["edit_accuracy"]["n"] == 16 and twins["latent_probe_max"]["n"] == 2


def test_the_same_method_run_twice_pairs_to_zero():
    """The random localization run twice through the whole pipeline under the same seeds (a real rerun, not a
    copy): runs are deterministic, so the planted difference is 0 and its paired interval contains 0."""
    settings = CompareSettings(model="factworld", facts="factworld", relation="sport", methods=["random"],
                               n_facts=8, seeds=2, steps=5, max_maintain=16, relearn=False, latent=False)
    first, second = (compare(settings, progress=False).runs for _ in range(2))
    runs = first + [dataclasses.replace(r, method="random-rerun") for r in second]
    twins = paired_table(runs, "random")["random-rerun"]
    for key in ("edit_accuracy", "forget_accuracy", "maintain_accuracy", "mcq_edit_accuracy", "fluency_kl"):
        assert twins[key]["n"] > 0 and twins[key]["low"] <= 0.0 <= twins[key]["high"], (key, twins[key])
    assert twins["maintain_accuracy"]["n"] == 2 * 8  # the held-out halves of 2 x 16 maintain facts (shots: retain)


def test_report_is_self_contained(run_dir):
    out, _ = run_dir
    html = write_report(out).read_text()
    assert "<script src=" not in html  # plotly is embedded: no network needed
    assert html.count("plotly") > 10 and "Plotly.newPlot" in html
    for text in ("probe", "nonlocalized", "Verdicts", "Relearning attack", "Provenance", "transformer_lens",
                 "Paired differences", "method − probe", "bootstrap 95 % CI"):
        assert text in html


def test_run_facts_rejects_a_small_pool(world_facts):
    small = world_facts.by_relation()["sport"].sample(12, seed=0)
    with pytest.raises(FactError, match="need at least 24 known facts"):
        run_facts(small, CompareSettings(n_facts=16), seed=0)


def test_cli_compare_and_report(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["compare", "factworld", "factworld", "--methods", "path,nonlocalized",
                                   "--n-facts", "8", "--seeds", "1", "--steps", "10", "--no-relearn",
                                   "--max-maintain", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "nonlocalized" in res.output and "report →" in res.output and (out / "report.html").exists()
    (out / "report.html").unlink()
    res = CliRunner().invoke(app, ["report", str(out)])
    assert res.exit_code == 0 and (out / "report.html").exists()
    res = CliRunner().invoke(app, ["compare", "factworld", "factworld", "--methods", "probe,bogus", "--out",
                                   str(tmp_path / "x")])
    assert res.exit_code != 0 and "bogus" in res.output


def test_shards_merge_into_the_unsharded_summary(tmp_path):
    """compare --shard 0/2 and 1/2, then --merge: the same summary as one unsharded run. The random baseline's
    budget comes from the probe cell of the other shard, re-localized there. Per-run timings and the record of the
    MCQ shot choice (made by the first evaluated cell of a seed, in each shard) are the only differences."""
    from mechedit.compare import merge

    settings = CompareSettings(model="factworld", facts="factworld", relation="sport", methods=["probe", "random"],
                               n_facts=8, seeds=1, steps=5, max_maintain=16, relearn=False, latent=False)
    whole = compare(settings, tmp_path / "whole", progress=False)
    for i in range(2):
        compare(settings, tmp_path / f"s{i}", progress=False, shard=(i, 2))
    merged = merge([tmp_path / "s1", tmp_path / "s0"], tmp_path / "merged")

    def strip(metrics: dict) -> dict:
        return {k: v for k, v in metrics.items() if k != "extra"}

    assert [(r.seed, r.method) for r in merged.runs] == [(r.seed, r.method) for r in whole.runs]
    assert [strip(r.metrics) for r in merged.runs] == [strip(r.metrics) for r in whole.runs]
    assert merged.methods == whole.methods and merged.paired == whole.paired
    assert (tmp_path / "merged" / "summary.csv").read_text() == (tmp_path / "whole" / "summary.csv").read_text()
    res = CliRunner().invoke(app, ["compare", "--merge", str(tmp_path / "s0"), "--merge", str(tmp_path / "s1"),
                                   "--out", str(tmp_path / "cli-merged")])
    assert res.exit_code == 0 and (tmp_path / "cli-merged" / "report.html").exists(), res.output
    # bad input: one line naming the culprit
    res = CliRunner().invoke(app, ["compare", "factworld", "factworld", "--shard", "2/2", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--shard '2/2': index 2 out of range 0..1" in res.output
    res = CliRunner().invoke(app, ["compare", "--merge", str(tmp_path / "s0"), "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "shard(s) 1/2 missing" in res.output
    other = json.loads((tmp_path / "s1" / "shard.json").read_text())
    other["settings"]["steps"] = 6
    (tmp_path / "s1" / "shard.json").write_text(json.dumps(other))
    res = CliRunner().invoke(app, ["compare", "--merge", str(tmp_path / "s0"), "--merge", str(tmp_path / "s1"),
                                   "--out", str(tmp_path / "z")])
    assert res.exit_code == 2 and "setting 'steps' is 6" in res.output and len(res.output.strip().splitlines()) == 1


def test_paper_preset_sets_the_experiment_and_options_override_it(tmp_path, monkeypatch):
    from mechedit.cli import compare as cli_compare
    from mechedit.compare import PRESETS, apply_preset

    paper = apply_preset(CompareSettings(), "paper")
    assert paper.methods == ["probe", "path", "causal-tracing", "random", "nonlocalized"]
    assert (paper.n_facts, paper.seeds, paper.relearn_mode, paper.latent, paper.diagnostics) == (32, 3, "lora",
                                                                                                  True, True)
    assert (paper.steps, paper.max_maintain) == (30, 32)
    seen = {}
    monkeypatch.setattr(cli_compare, "run_and_report", lambda settings, *a, **k: seen.update(s=settings))
    res = CliRunner().invoke(app, ["compare", "factworld", "factworld", "--preset", "paper", "--seeds", "1",
                                   "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    s = seen["s"]
    assert s.seeds == 1 and s.methods == PRESETS["paper"]["methods"] and s.diagnostics  # --seeds overrides
    res = CliRunner().invoke(app, ["compare", "factworld", "factworld", "--preset", "papers", "--out",
                                   str(tmp_path / "x")])
    assert res.exit_code != 0 and "papers" in res.output and "paper" in res.output
