"""Interactive circuit exploration: pick a relation, a fact, a corruption and a metric; see which heads and MLPs
carry the answer (activation patching), which heads write it straight into the logits (direct-effect path
patching: the extraction heads) and where one of them looks from the last token.

``CircuitExplorer.view`` is the whole logic — a plain function of the selection that returns numbers and plotly
figures — so it runs, and is tested, without any front-end. ``CircuitExplorer.widget`` wires ipywidgets dropdowns
to it; ``CircuitExplorer.show`` displays the widget in a live notebook and falls back to static figures of one
selection when ipywidgets is not installed or ``MECHEDIT_STATIC=1`` (how the notebooks are exported to HTML).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import plotly.graph_objects as go
import torch

from mechedit.components import parse_component
from mechedit.facts import FactSet
from mechedit.localize.localization import Localization
from mechedit.localize.patch_setup import PatchSetup, patch_setup
from mechedit.plots.circuit import plot_attention, plot_extraction_heads
from mechedit.plots.patching import plot_patching
from patching import activation_patch, path_patch
from patching.corrupt import Noise
from patching.metrics import answer_prob, logit_diff

CORRUPTIONS = ("swap", "random", "noise")
METRICS = {"logit_diff": "logit difference, true answer − runner-up", "answer_prob": "probability of the true answer"}
ALL_FACTS = -1  # the fact index that means "every explored fact of the relation, averaged"
MetricName = Literal["logit_diff", "answer_prob"]


@dataclass(frozen=True)
class Selection:
    """What the explorer shows: a relation, a fact index (``ALL_FACTS`` for the mean), a corruption and a metric."""

    relation: str
    fact: int
    corruption: str
    metric: str


@dataclass
class ExplorerView:
    """The numbers and figures of one selection."""

    selection: Selection
    prompt: str  # the prompt whose tokens the attention figure shows
    head_scores: dict[str, float] = field(repr=False)  # head label -> share of the clean − corrupted gap restored
    mlp_scores: dict[str, float] = field(repr=False)  # MLP label -> the same for MLPs (activation patching)
    extraction: list[tuple[str, float]]  # the top heads by direct effect on the logits, best first
    head: str  # the head whose attention is shown
    tokens: list[str] = field(repr=False)
    attention: list[float] = field(repr=False)  # that head's attention from the last token, per token
    clean: float  # the metric on the clean prompts
    corrupt: float  # the metric on the corrupted prompts
    figures: dict[str, go.Figure] = field(default_factory=dict, repr=False)


class CircuitExplorer:
    """Patching views of a model on a fact set, computed on demand and cached per selection."""

    def __init__(self, model, facts: FactSet, *, max_facts: int = 16, top_k: int = 4, seed: int = 0) -> None:
        """``facts``: known facts of one or more relations; at most ``max_facts`` per relation are explored."""
        self.model = model
        self.groups = {r: fs for r, fs in facts.by_relation().items() if len(fs) >= 2}
        if not self.groups:
            raise ValueError("the explorer needs a relation with at least two facts (subject swapping pairs them)")
        self.max_facts, self.top_k, self.seed = max_facts, top_k, seed
        self._setups: dict[tuple[str, str], PatchSetup] = {}
        self._views: dict[tuple[Selection, str | None], ExplorerView] = {}
        self.last_view: ExplorerView | None = None

    @property
    def relations(self) -> list[str]:
        """Relations that can be explored (at least two facts)."""
        return list(self.groups)

    def setup(self, relation: str, corruption: str) -> PatchSetup:
        """The clean/corrupted prompts of a relation (seeded sample of ``max_facts``), built once."""
        if relation not in self.groups:
            raise ValueError(f"unknown relation {relation!r}; choose from {', '.join(self.groups)}")
        key = (relation, corruption)
        if key not in self._setups:
            self._setups[key] = patch_setup(self.model, self.groups[relation], corruption=corruption,
                                            max_facts=self.max_facts, seed=self.seed)
        return self._setups[key]

    def fact_options(self, relation: str) -> list[tuple[str, int]]:
        """(label, index) of the selectable facts: every explored fact averaged, then each fact's prompt → answer."""
        facts = self.setup(relation, "swap").facts
        return [(f"all {len(facts)} facts (mean)", ALL_FACTS)] + [
            (f"{f.render()} → {f.answer}", i) for i, f in enumerate(facts)]

    def view(self, relation: str, fact: int = ALL_FACTS, corruption: str = "swap",
             metric: MetricName = "logit_diff", head: str | None = None) -> ExplorerView:
        """Patch every head and MLP for this selection and build its figures (the widgets' callback)."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        sel = Selection(relation, int(fact), corruption, metric)
        if (sel, head) in self._views:
            self.last_view = self._views[(sel, head)]
            return self.last_view
        s = self.setup(relation, corruption)
        if not ALL_FACTS <= sel.fact < len(s.facts):
            raise ValueError(f"fact index {fact} out of range: {relation} has {len(s.facts)} explored facts")
        rows = slice(None) if sel.fact == ALL_FACTS else slice(sel.fact, sel.fact + 1)
        batch = s.batch if sel.fact == ALL_FACTS else s.batch.slice(sel.fact, sel.fact + 1)
        cut = s.batch.input_ids.shape[1] - batch.input_ids.shape[1]  # columns slice() trimmed as all-padding
        corrupt = s.corruption
        corrupt = (Noise(corrupt.positions[rows, cut:], corrupt.scale, corrupt.seed) if isinstance(corrupt, Noise)
                   else corrupt[rows, cut:])
        answers, others = s.answer_ids[rows], s.other_ids[rows]
        fn = logit_diff(answers, others) if metric == "logit_diff" else answer_prob(answers)
        args = (self.model, batch.input_ids, batch.attention_mask, corrupt, fn)
        heads = activation_patch(*args, components="heads", direction="denoising")
        mlps = activation_patch(*args, components="mlps", direction="denoising")
        direct = path_patch(*args, senders="heads")
        extraction = direct.top(self.top_k)
        shown = head or extraction[0][0]
        one = 0 if sel.fact == ALL_FACTS else sel.fact
        tokens, attention, subject = self._attention(s, one, shown)
        view = ExplorerView(sel, s.facts[one].render(), heads.scores(), mlps.scores(), extraction, shown, tokens,
                            attention, heads.clean, heads.corrupt)
        view.figures = self._figures(view, subject)
        self._views[(sel, head)] = view
        self.last_view = view
        return view

    def _attention(self, s: PatchSetup, row: int, head: str) -> tuple[list[str], list[float], tuple[int, int]]:
        """One head's attention from the last token of prompt ``row`` (its own tokens, no padding)."""
        c = parse_component(head)
        one = s.batch.slice(row, row + 1)
        name = f"blocks.{c.layer}.attn.hook_pattern"
        with torch.no_grad():
            _, cache = self.model.run_with_cache(one.input_ids, attention_mask=one.attention_mask, names_filter=[name])
        pattern = cache[name][0, c.head, -1].float().tolist()
        tokens = [self.model.tokenizer.decode([t]) for t in one.input_ids[0].tolist()]
        return tokens, pattern, (int(one.subject_start[0]), int(one.subject_last[0]))

    def _figures(self, view: ExplorerView, subject: tuple[int, int]) -> dict[str, go.Figure]:
        """Patching heatmap and MLP bars (extraction heads outlined), extraction-head bars, attention bars."""
        sel = view.selection
        scores = {parse_component(label): v for label, v in {**view.head_scores, **view.mlp_scores}.items()}
        loc = Localization(f"explorer ({sel.corruption}, {sel.metric})", [], scores,
                           extra={"extraction_heads": [label for label, _ in view.extraction]})
        what = "all facts" if sel.fact == ALL_FACTS else f"fact {sel.fact}"
        patching = plot_patching(loc)
        patching.update_layout(title=f"{sel.relation}, {what}: activation patching, {METRICS[sel.metric]} restored "
                                     f"(clean {view.clean:.3f}, corrupted {view.corrupt:.3f}; outlined: extraction "
                                     "heads)", title_font_size=13)
        return {"patching": patching,
                "extraction": plot_extraction_heads(view.extraction, f"top {len(view.extraction)} extraction heads "
                                                                     "(direct effect on the logits)"),
                "attention": plot_attention(view.tokens, view.attention, view.head, subject)}

    def widget(self, on_view: Callable[[ExplorerView], None] | None = None):
        """ipywidgets dropdowns (relation, fact, corruption, metric, head) above the figures of the selection.

        Every change calls ``update``, which computes ``view`` and redraws; ``on_view`` is called with each new
        view. Raises ImportError without ipywidgets.
        """
        import ipywidgets as w
        from IPython import get_ipython

        relation = w.Dropdown(options=self.relations, description="relation")
        fact = w.Dropdown(options=self.fact_options(self.relations[0]), description="fact",
                          layout=w.Layout(width="480px"))
        corruption = w.Dropdown(options=list(CORRUPTIONS), description="corruption")
        metric = w.Dropdown(options=[(v, k) for k, v in METRICS.items()], description="metric",
                            layout=w.Layout(width="420px"))
        head = w.Dropdown(options=[("top extraction head", None)], description="attention of")
        out = w.Output()
        busy = {"on": False}

        def update(change=None) -> ExplorerView:
            if busy["on"]:
                return self.last_view
            busy["on"] = True
            try:
                if change is not None and change.get("owner") is relation:
                    fact.options = self.fact_options(relation.value)
                    fact.value = ALL_FACTS
                view = self.view(relation.value, fact.value, corruption.value, metric.value, head.value)
                head.options = [("top extraction head", None)] + [(label, label) for label, _ in view.extraction]
            finally:
                busy["on"] = False
            if get_ipython() is not None:  # draw only in a kernel; a plain caller reads the returned view
                # set the Output widget's state to the figures' mime bundles rather than capturing display() calls
                # by message id: a notebook runner without a widget front-end (nbclient) waited minutes on those
                out.outputs = tuple({"output_type": "display_data", "data": fig._repr_mimebundle_(), "metadata": {}}
                                    for fig in view.figures.values())
            if on_view is not None:
                on_view(view)
            return view

        for control in (relation, fact, corruption, metric, head):
            control.observe(update, names="value")
        box = w.VBox([w.HBox([relation, corruption, metric]), w.HBox([fact, head]), out])
        box.update = update  # the callback, for a caller (or a test) without a front-end
        update()
        return box

    def show(self, relation: str | None = None, fact: int = ALL_FACTS, corruption: str = "swap",
             metric: MetricName = "logit_diff", static: bool | None = None) -> ExplorerView | None:
        """Display the interactive widget, or — without ipywidgets, with ``static=True`` or ``MECHEDIT_STATIC=1``
        (a page exported to HTML has no widget front-end) — the figures of one selection; returns that view."""
        from IPython import get_ipython
        from IPython.display import display

        if static is None:
            static = os.environ.get("MECHEDIT_STATIC") == "1"
        if not static:
            try:
                display(self.widget())
                return None
            except ImportError:
                pass
        view = self.view(relation or self.relations[0], fact, corruption, metric)
        if get_ipython() is not None:  # outside a kernel display() would print each figure's repr
            for fig in view.figures.values():
                display(fig)
        return view
