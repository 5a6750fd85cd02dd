"""The main job on factworld: compare writes every file, baselines share the budget, the report is self-contained."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from mechedit.cli import app
from mechedit.compare import CompareSettings, compare, run_facts
from mechedit.facts import FactError
from mechedit.report import write_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small real comparison: 2 seeds x (probe, path, random, nonlocalized), short edits and attacks."""
    out = tmp_path_factory.mktemp("compare")
    settings = CompareSettings(model="factworld", facts="factworld", relation="sport",
                               methods=["probe", "path", "random", "nonlocalized"], n_facts=8, seeds=2, steps=20,
                               max_maintain=24, relearn_steps=6)
    summary = compare(settings, out, progress=False)
    return out, summary


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


def test_report_is_self_contained(run_dir):
    out, _ = run_dir
    html = write_report(out).read_text()
    assert "<script src=" not in html  # plotly is embedded: no network needed
    assert html.count("plotly") > 10 and "Plotly.newPlot" in html
    for text in ("probe", "nonlocalized", "Verdicts", "Relearning attack", "Provenance", "transformer_lens"):
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
