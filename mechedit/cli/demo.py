"""``mechedit demo``: the main job a researcher runs first (``make demo``)."""

from __future__ import annotations

from pathlib import Path

import typer

from mechedit.cli import app
from mechedit.cli.common import FORCE_HELP, user_errors
from mechedit.cli.compare import check_settings, run_and_report
from mechedit.compare import CompareSettings

# small enough to finish in a few minutes on 2 CPU cores; `mechedit compare` takes every knob
DEMO = {
    "smollm2-135m": {"facts": "counterfact", "relation": "P178", "methods": ["probe", "path", "nonlocalized"],
                     "n_facts": 8, "seeds": 1, "steps": 15, "max_maintain": 32, "relearn_steps": 10,
                     "latent": True, "relearn": True},
    "factworld": {"facts": "factworld", "methods": ["probe", "path", "causal-tracing", "random", "nonlocalized"],
                  "n_facts": 16, "seeds": 3, "steps": 30, "max_maintain": 64, "latent": True, "relearn": True},
}


@app.command()
def demo(
    model: str = typer.Option("smollm2-135m", "--model", help="smollm2-135m (a few minutes) or factworld (~1 min)"),
    out: Path = typer.Option(Path("runs/demo"), "--out"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Compare fact-lookup localization with baselines on a bundled model: table, report, elapsed time."""
    with user_errors():
        if model not in DEMO:
            raise ValueError(f"demo runs on {', '.join(DEMO)}; use `mechedit compare` for other models")
        settings = CompareSettings(model=model, **DEMO[model])
        check_settings(settings, out, force)
        run_and_report(settings, out, force)
