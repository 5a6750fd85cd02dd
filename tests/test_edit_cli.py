"""``mechedit edit``: marks facts, trains, writes a loadable edit directory; bad input is one line, exit 2."""

from __future__ import annotations

from conftest import one_thread
from typer.testing import CliRunner

from mechedit.cli import app
from mechedit.components import MLP
from mechedit.edit import EditResult
from mechedit.facts import load_facts
from mechedit.localize.localization import make_localization


def test_cli_edit_writes_edit_dir(factworld, tmp_path):
    make_localization(factworld, "manual", [MLP(1), MLP(2)]).save(tmp_path / "loc.json")
    with one_thread():
        res = CliRunner().invoke(app, ["edit", "factworld", "factworld", "--localization", str(tmp_path / "loc.json"),
                                       "--objective", "npo", "--out", str(tmp_path / "ed"), "--steps", "4",
                                       "--n-forget", "6", "--lr", "3e-3"])
    assert res.exit_code == 0, res.output
    assert "forget: true-answer accuracy" in res.output
    result = EditResult.load(tmp_path / "ed", model=factworld)  # the session model is the edit's base
    assert result.objective == "npo" and result.config.steps == 4 and len(result.log) == 4
    facts = load_facts(tmp_path / "ed" / "facts.csv")
    assert sum(f.forget for f in facts) == 6 and not any(f.target for f in facts)
    assert len(result.extra["changed_facts"]) == 6


def test_cli_edit_bad_input(tmp_path):
    res = CliRunner().invoke(app, ["edit", "factworld", "factworld", "--localization", str(tmp_path / "none.json"),
                                   "--out", str(tmp_path / "ed"), "--objective", "forget-all"])
    assert res.exit_code == 2 and "unknown objective" in res.output
