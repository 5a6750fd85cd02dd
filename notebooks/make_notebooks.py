"""Regenerates notebooks/*.ipynb (committed without outputs) from the cell lists below: edit here, then run it."""
from pathlib import Path

import nbformat as nbf

SWITCH = 'MODEL = "factworld"   # one-line switch: "smollm2-135m" (slower; uses CounterFact facts it knows)\n'
FACTS = 'FACTS = "factworld" if MODEL == "factworld" else "counterfact"\n'

def nb(cells):
    n = nbf.v4.new_notebook()
    n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    n.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
    return n

common_load = SWITCH + FACTS + '''
import mechedit
from mechedit.localize import localize
model = mechedit.load_model(MODEL)
facts = mechedit.validate_facts(model.tokenizer, mechedit.load_facts(FACTS), on_collision="drop")
if MODEL != "factworld":
    facts = facts.by_relation()["P103"].sample(200, seed=0)   # mother tongue: the relation SmolLM2 knows best
facts = mechedit.known_facts(model, facts)
print(len(facts), "known facts")
'''

nb1 = nb([
"md:# 01 · Circuit exploration\nLoad a model, pick a fact, and look at *where* the answer is computed: activation patching over heads and MLPs, direct-effect path patching to find **extraction heads**, then zoom into one head's attention.",
common_load,
"md:## Pick facts and build a clean/corrupted pair\nThe corruption swaps each subject for another subject of the same token length (so positions line up); the metric is the logit difference between the true answer and the runner-up.",
'''from mechedit.localize.patch_setup import patch_setup
facts_one = facts.by_relation()[facts.relations[0]]
setup = patch_setup(model, facts_one, corruption="swap", max_facts=16, seed=0)
fact = setup.facts[0]
print("example:", fact.render(), "->", fact.answer)
''',
"md:## Activation patching: every head and every MLP (denoising: restore clean activations into the corrupted run)",
'''from patching import activation_patch, path_patch
b = setup.batch
heads = activation_patch(model, b.input_ids, b.attention_mask, setup.corruption, setup.metric, components="heads",
                         direction="denoising")
mlps = activation_patch(model, b.input_ids, b.attention_mask, setup.corruption, setup.metric, components="mlps",
                        direction="denoising")
print("top heads:", heads.top(3)); print("top MLPs:", mlps.top(3))
''',
"md:## Direct-effect path patching: extraction heads\nEach head's output is patched straight into the final residual stream with everything else frozen.",
'''direct = path_patch(model, b.input_ids, b.attention_mask, setup.corruption, setup.metric, senders="heads")
extraction = [label for label, _ in direct.top(2)]
print("extraction heads:", direct.top(4))
''',
"md:## The same picture as a Localization, with the heatmap",
'''from mechedit.plots.patching import plot_patching
loc = localize(model, facts_one, method="path", progress=False)
print(loc.components, loc.extra.get("extraction_heads"))
plot_patching(loc)
''',
"md:## Zoom into one extraction head: where does it look from the last token?",
'''import torch, plotly.express as px
layer, head = (int(x) for x in extraction[0].split(".")[1:])
one = b.slice(0, 1)
_, cache = model.run_with_cache(one.input_ids, attention_mask=one.attention_mask,
                                names_filter=[f"blocks.{layer}.attn.hook_pattern"])
pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, head, -1]
tokens = [model.tokenizer.decode([t]) for t in one.input_ids[0]]
fig = px.bar(x=list(range(len(tokens))), y=pattern.tolist(), title=f"head {layer}.{head}: attention from the last token")
fig.update_xaxes(tickvals=list(range(len(tokens))), ticktext=tokens)
print("subject tokens:", tokens[one.subject_start[0]: one.subject_last[0] + 1])
fig
''',
"md:## Interactive explorer\nPick a relation, a fact (or all of them averaged), a corruption and a metric: the explorer patches every head and MLP for that choice (heatmap and bars, extraction heads outlined), ranks the extraction heads by their direct effect on the logits, and shows where one of them looks from the last token. Its logic is one plain function, `CircuitExplorer.view`; the dropdowns (ipywidgets) only call it. Without ipywidgets — or in the exported HTML page of this notebook — `show()` draws the figures of the first relation, all facts, swap corruption and logit difference instead.",
'''from mechedit.explorer import CircuitExplorer
explorer = CircuitExplorer(model, facts, max_facts=16)
explorer.show();   # the widget in a live notebook; the figures of one selection in a static page
''',
"md:The same function called directly, e.g. to see how the corruption changes the picture for one fact:",
'''for corruption in ("swap", "random", "noise"):
    view = explorer.view(explorer.relations[0], fact=0, corruption=corruption, metric="logit_diff")
    top = ", ".join(f"{label} {effect:.2f}" for label, effect in view.extraction[:2])
    print(f"{corruption:6s} clean {view.clean:5.2f}  corrupted {view.corrupt:5.2f}  top extraction heads: {top}")
''',
])

nb2 = nb([
"md:# 02 · Localize, then edit, then verify\nThe whole workflow on a fact set: find the fact-lookup MLPs (probe and path localizers), edit 16 facts there, and check whether the old facts are **removed** or only **suppressed** — against a nonlocalized edit at the same settings.",
common_load,
'''relation = max(facts.by_relation().items(), key=lambda kv: len(kv[1]))[0]
fs = facts.by_relation()[relation].mark_forget(16, seed=0)   # 16 facts get a new target answer
print(relation, len(fs.forget_set()), "to edit,", len(fs.maintain_set()), "to keep")
''',
"md:## Localize",
'''probe_loc = localize(model, fs, method="probe", progress=False)
path_loc = localize(model, fs, method="path", progress=False)
print("probe:", probe_loc.components, probe_loc.n_params)
print("path :", path_loc.components, path_loc.n_params)
from mechedit.plots.probe_accuracy import plot_probe_accuracy
plot_probe_accuracy(probe_loc)
''',
"md:## Edit (in place, revertible) and verify",
'''from mechedit.edit import EditConfig, edit
from mechedit.evaluate import evaluate
base = mechedit.load_model(MODEL)             # an untouched reference copy
results = {}
for name, loc in [("path", path_loc), ("nonlocalized", localize(model, fs, method="nonlocalized"))]:
    delta = edit(model, fs, loc, "edit", EditConfig(steps=30, seed=0), progress=False)
    ev = evaluate(model, fs, original=base, relearn=True, seed=0, progress=False)
    delta.revert(model)                        # bit-exact: the next method starts from the same weights
    results[name] = ev
    m = ev.to_dict()
    print(f"{name:13s} edit={m['edit_accuracy']:.2f} maintain={m['maintain_accuracy']:.2f} "
          f"mcq_edit={m['mcq_edit_accuracy']:.2f} relearn={m['relearn_accuracy']:.2f} verdict={m['verdict']}")
''',
"md:## Relearning and latent probes for the localized edit",
'''from mechedit.plots.verification import plot_latent, plot_relearning
plot_relearning(results["path"])
''',
'''plot_latent(results["path"])
''',
"md:## The real-model result, without running it\nThe repository commits the paper-size comparison on SmolLM2-135M (`docs/results/summary.json`, made by `make results`, ~45 min on 2 cores; read `docs/results.md`). Load it and draw its paired differences: each dot is a method's mean difference from the reference on the same seeds and facts, with its 95 % interval.",
'''from pathlib import Path
from mechedit.compare import Comparison, summary_markdown
from mechedit.report import paired_figure
paper = Comparison.load(Path("..") / "docs" / "results")
print(summary_markdown(paper).split("Cells:")[0])
paired_figure(paper)
''',
])

nb3 = nb([
"md:# 03 · Per-layer probe accuracy\nWhere does the attribute become linearly decodable at the last subject token? One curve per relation and prompt variant (full prompt vs the subject alone), with the automatically chosen fact-lookup range shaded.",
common_load,
'''from mechedit.localize.probe import probe_curves
from mechedit.plots.probe_accuracy import plot_probe_accuracy
curves = {}
for relation, rel_facts in facts.by_relation().items():
    if len(rel_facts) < 40:
        continue
    loc = localize(model, rel_facts, method="probe", progress=False)
    for variant, curve in loc.extra["curves"].items():
        curves[f"{relation} · {variant}"] = curve
    print(relation, "-> chosen MLP layers", loc.layers)
plot_probe_accuracy(curves, title="probe accuracy per layer")
''',
"md:## One relation in detail: the chosen range and chance level",
'''plot_probe_accuracy(loc)
''',
])

out = Path(__file__).parent
for name, n in [("01_circuit_exploration", nb1), ("02_localize_then_edit", nb2), ("03_probe_accuracy", nb3)]:
    for i, cell in enumerate(n.cells):
        cell.id = f"cell-{i:02d}"  # fixed ids: regenerating an unchanged notebook leaves its file unchanged
    nbf.write(n, out / f"{name}.ipynb")
print("written")
