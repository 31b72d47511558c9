# CityTwin — the two Quickstart commands (`make demo`, `make test`) and a few more.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/citytwin demo --out demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_store.py
	$(BIN)/python benchmarks/bench_synth.py
	$(BIN)/python benchmarks/bench_networks.py
	$(BIN)/python benchmarks/bench_warning.py
	$(BIN)/python benchmarks/bench_timeseries.py
	$(BIN)/python benchmarks/bench_ingest.py

vendor:  # the console's browser libraries, pinned in citytwin/web/package.json (needs npm)
	citytwin/web/vendor.sh

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache
