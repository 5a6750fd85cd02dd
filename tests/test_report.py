"""The report a researcher reads: forest plot first, unwrapped interval cells, condensed verdicts, mean ± CI curves,
and — when a headless Chromium is on the machine — the page as a browser draws it (no console error, every figure
rendered)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mechedit.plots.comparison import forest_figure, mean_curve_figure
from mechedit.report import Section, build_report, deciding_signal, interval_cell, render_page, write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


@pytest.fixture(scope="module")
def run_dir(small_comparison):
    """conftest's small real factworld comparison: 2 seeds × (probe, path, random, nonlocalized)."""
    return small_comparison[0]


def _figure_ids(page: str) -> list[str]:
    return re.findall(r'<div id="([0-9a-f-]+)" class="plotly-graph-div"', page)


def test_report_order_cells_and_single_plotly(run_dir):
    page = build_report(run_dir)
    assert page.count("<script type='text/javascript'>/**") == 1  # plotly.js embedded once, in the head
    assert "<script src=" not in page  # nothing fetched from the network
    sections = re.findall(r'<section id="([^"]+)">', page)
    assert sections[:3] == ["paired-differences", "summary", "verdicts"]
    first_fig = page.index('class="plotly-graph-div"')
    assert page.index('id="paired-differences"') < first_fig < page.index('id="summary"')  # forest plot first
    assert len(_figure_ids(page)) >= 4  # forest, relearning, latent, localization figures
    assert page.count('<p class="how"><b>How to read this:</b>') == len(sections) - 1  # all but provenance
    assert "td.num{white-space:nowrap" in page
    summary = page[page.index('id="summary"'):page.index('id="verdicts"')]
    # each interval cell holds the mean and its CI on one line: no <br>, no line break inside a numeric cell
    cells = re.findall(r'<td class="num"[^>]*>(.*?)</td>', summary)
    assert cells and all("<br>" not in c and "\n" not in c for c in cells)
    assert any(re.fullmatch(r'\d\.\d\d <span class="ci">\[\d\.\d\d, \d\.\d\d\]</span>', c) for c in cells)
    verdicts = page[page.index('id="verdicts"'):page.index('id="relearning-attack"')]
    assert verdicts.count('<td class="name">') == 4  # one row per method
    assert verdicts.count("<details>") == 8  # reasons: one collapsible block per run (4 methods × 2 seeds)


def test_write_report_embeds_toggle_and_integer_axes(run_dir):
    page = write_report(run_dir).read_text()
    assert "+ per-seed lines" in page and '"visible":false' in page  # per-seed lines hidden behind the button
    relearn = page[page.index('id="relearning-attack"'):page.index('id="latent-probes"')]
    assert '"tickvals":[0,5,6]' in relearn  # the attack's evaluated steps (6 steps, every 5): integers only


def test_deciding_signal_is_the_one_nearest_or_over_its_threshold():
    sig = {"behaviour": {"value": 0.1, "threshold": 0.5, "says": "removed"},
           "relearning": {"value": 0.3, "threshold": 0.5, "says": "removed"},
           "latent": {"value": None, "threshold": 0.5, "says": "not measured"},
           "drift": {"value": 0.9, "threshold": 0.01, "says": "informative"}}
    assert deciding_signal({"verdict": "removed", "signals": sig}) == ("relearning", 0.3, 0.5)
    sig["behaviour"] = {"value": 0.7, "threshold": 0.5, "says": "suppressed"}
    sig["latent"] = {"value": 0.6, "threshold": 0.5, "says": "suppressed"}
    assert deciding_signal({"verdict": "suppressed", "signals": sig}) == ("behaviour", 0.7, 0.5)
    assert deciding_signal({"verdict": None, "signals": {}}) == (None, None, None)


def test_interval_cell_and_missing_values():
    cell = interval_cell({"mean": -0.0625, "low": -0.125, "high": 0.0, "sd": 0.01, "n": 16, "over": "seeds × facts"},
                         signed=True)
    assert '>−0.06 <span class="ci">[−0.12, +0.00]</span></td>' in cell and "SD of per-seed means 0.0100" in cell
    assert ">–</td>" in interval_cell({"mean": None, "note": "not measured"})


def test_forest_and_curve_figures_from_plain_numbers():
    stat = {"mean": 0.1, "low": -0.05, "high": 0.2, "n": 8}
    paired = {"probe": {"path": {"edit_accuracy": stat, "forget_accuracy": {"mean": None}}},
              "nonlocalized": {}}
    fig = forest_figure(paired, [("edit", "edit_accuracy"), ("forget", "forget_accuracy")], ["probe", "path"])
    dots = [tr for tr in fig.data if tr.name == "path"]  # (the first, nameless trace only orders the rows)
    assert len(dots) == 1 and list(dots[0].x) == [0.1] and dots[0].marker.color == ("white",)
    assert forest_figure({}, [("edit", "edit_accuracy")], ["probe"]) is None
    curves = {"a": {0: ([0, 1, 2], [0.0, 0.5, 1.0]), 1: ([0, 1, 2], [0.0, 0.25, 0.5])}}
    fig = mean_curve_figure(curves, ["a", "b"], title="t", xlabel="layer", ylabel="y")
    mean = next(tr for tr in fig.data if tr.name == "a (mean of 2)")
    assert list(mean.y) == [0.0, 0.375, 0.75] and list(fig.layout.xaxis.tickvals) == [0, 1, 2]
    assert [tr.visible for tr in fig.data].count(False) == 2  # the two per-seed lines start hidden
    assert mean_curve_figure({}, ["a"], title="t", xlabel="x", ylabel="y") is None


def test_render_page_takes_extra_sections():
    page = render_page("t", "<p>intro</p>", [Section("Attack panels", "<p>body</p>", "read me")])
    assert '<section id="attack-panels">' in page and '<a href="#attack-panels">' in page and "read me" in page


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


# records uncaught errors, rejected promises and console.error calls on the <html> element, where --dump-dom sees it
CAPTURE = """<script>(function(){var errs=[];function note(m){errs.push(String(m));
document.documentElement.setAttribute('data-errors',JSON.stringify(errs));}
window.addEventListener('error',function(e){note(e.message);});
window.addEventListener('unhandledrejection',function(e){note('unhandled rejection: '+e.reason);});
var ce=console.error;console.error=function(){note([].slice.call(arguments).join(' '));ce.apply(console,arguments);};
})();</script>"""


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium/Chrome on PATH (apt-get install chromium)")
def test_report_draws_in_headless_chromium(run_dir, tmp_path):
    """The page as a browser shows it: loads without console errors and every figure has drawn its SVG."""
    page = write_report(run_dir).read_text()
    ids = _figure_ids(page)
    probe = tmp_path / "report.html"
    probe.write_text(page.replace("<head>", "<head>" + CAPTURE, 1))
    res = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                          "--window-size=1280,2000", "--virtual-time-budget=15000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    dom = res.stdout
    assert res.returncode == 0 and "</html>" in dom, res.stderr[-2000:]
    errors = re.search(r'<html[^>]*data-errors="([^"]*)"', dom)
    assert errors is None, json.loads(errors.group(1).replace("&quot;", '"'))
    assert "Uncaught" not in res.stderr, [ln for ln in res.stderr.splitlines() if "Uncaught" in ln]
    drawn = {}
    for i, fid in enumerate(ids):
        start = dom.index(f'id="{fid}"')
        end = dom.index(f'id="{ids[i + 1]}"') if i + 1 < len(ids) else len(dom)
        drawn[fid] = 'class="main-svg"' in dom[start:end]
    assert ids and all(drawn.values()), drawn


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium/Chrome on PATH (apt-get install chromium)")
def test_figures_command_writes_each_figure_as_png(run_dir, tmp_path):
    pytest.importorskip("kaleido")
    from typer.testing import CliRunner

    from mechedit.cli import app

    res = CliRunner().invoke(app, ["figures", str(run_dir), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == ["latent.png", "paired.png", "probe_accuracy.png", "relearn.png"]  # no diagnostics: no CKA
    assert all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in written)
    res = CliRunner().invoke(app, ["figures", str(run_dir), "--out", str(tmp_path)])
    assert res.exit_code != 0 and "--force" in res.output  # never overwritten silently


def test_figures_as_images_drop_the_pages_buttons(run_dir, tmp_path, monkeypatch):
    import plotly.graph_objects as go

    from mechedit.compare import Comparison
    from mechedit.report import FIGURES, write_figures

    comparison = Comparison.load(run_dir)
    figures = [fig for make in FIGURES.values() if (fig := make(comparison)) is not None]
    assert any(len(fig.layout.updatemenus) for fig in figures)  # the page has buttons to drop
    menus = {}
    monkeypatch.setattr(go.Figure, "write_image",
                        lambda fig, path, **kw: menus.__setitem__(Path(path).name, len(fig.layout.updatemenus)))
    write_figures(comparison, tmp_path)
    assert menus and set(menus.values()) == {0}, menus  # buttons do nothing in a PNG
