"""``mechedit demo``: the main job a researcher runs first (``make demo``)."""

from __future__ import annotations

from pathlib import Path

import typer

from mechedit.cli import app
from mechedit.cli.common import FORCE_HELP, console, device_option, dtype_option, user_errors
from mechedit.cli.compare import check_settings, run_and_report
from mechedit.compare import CompareSettings

# a small cut of `compare --preset paper`, small enough to finish in a few minutes on 2 CPU cores (`mechedit
# compare` takes every knob; docs/results.md is the full-size run). SmolLM2 runs on
# CounterFact P37 ("official language"): the relation whose answer its probes decode well above a lexical baseline
# (`mechedit facts smollm2-135m counterfact --profile`; P178 "developed by" is read off the subject's tokens)
DEMO = {
    "smollm2-135m": {"facts": "counterfact", "relation": "P37",
                     "methods": ["probe", "path", "causal-tracing", "nonlocalized"],
                     "n_facts": 8, "seeds": 1, "steps": 15, "max_maintain": 32, "relearn_steps": 10,
                     "latent": True, "relearn": True},
    "factworld": {"facts": "factworld", "methods": ["probe", "path", "causal-tracing", "random", "nonlocalized"],
                  "n_facts": 16, "seeds": 3, "steps": 30, "max_maintain": 64, "latent": True, "relearn": True},
}

# what a run of the demo's size can and cannot show, printed after its table
DEMO_SCOPE = {
    "smollm2-135m": ("scope: 8 facts x 1 seed shows the workflow, not a result: the relearning attack tests 4 "
                     "held-out facts and one seed gives no interval across fact samples; the comparison at a "
                     "size that supports conclusions is `mechedit compare smollm2-135m counterfact --relation P37 "
                     "--preset paper` (32 facts x 3 seeds, ~41 min; its result is in docs/results.md)"),
    "factworld": ("scope: 16 facts x 3 seeds on a 4-layer model trained by mechedit: ground truth for the tools, "
                  "not evidence about real language models"),
}


@app.command()
def demo(
    model: str = typer.Option("smollm2-135m", "--model", help="smollm2-135m (a few minutes) or factworld (~1 min)"),
    out: Path = typer.Option(Path("runs/demo"), "--out"),
    device: str = device_option(),
    dtype: str = dtype_option(),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Compare fact-lookup localization with baselines on a bundled model: table, report, elapsed time."""
    with user_errors():
        if model not in DEMO:
            raise ValueError(f"demo runs on {', '.join(DEMO)}; use `mechedit compare` for other models")
        settings = CompareSettings(model=model, **DEMO[model], device=device, dtype=dtype)
        check_settings(settings, out, force)
        run_and_report(settings, out, force)
        console.print(f"[dim]{DEMO_SCOPE[model]}[/]")
