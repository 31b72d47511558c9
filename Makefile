# CityTwin — the two Quickstart commands (`make demo`, `make test`) and a few more.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-deps install clean vendor

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

# the peers and tools of the benchmarks: PostGIS (pygeoapi's provider), wrk, Chromium (and the
# console's CJK font, as in CI), itzï
bench-deps:
	@command -v wrk >/dev/null && command -v chromium >/dev/null \
	  && test -f /usr/share/postgresql/15/extension/postgis.control \
	  && fc-list | grep -qi "wenquanyi\|noto sans cjk" \
	  || (apt-get update -qq && apt-get install -y -qq wrk chromium postgresql-15-postgis-3 \
	      fonts-wqy-microhei)
	@test -x benchmarks/.cache/itzi-venv/bin/python || ($(PYTHON) -m venv benchmarks/.cache/itzi-venv \
	  && benchmarks/.cache/itzi-venv/bin/pip install --quiet itzi==25.8)   # the flood peer, apart

bench: $(STAMP) bench-deps
	$(BIN)/python benchmarks/bench_store.py
	$(BIN)/python benchmarks/bench_synth.py
	$(BIN)/python benchmarks/bench_networks.py
	$(BIN)/python benchmarks/bench_warning.py
	$(BIN)/python benchmarks/bench_timeseries.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_features.py
	$(BIN)/python benchmarks/bench_tiles.py
	$(BIN)/python benchmarks/bench_sensorthings.py
	$(BIN)/python benchmarks/bench_processes.py
	$(BIN)/python benchmarks/bench_console.py
	$(BIN)/python benchmarks/bench_flood.py

vendor:  # the console's browser libraries, pinned in citytwin/web/package.json (needs npm)
	citytwin/web/vendor.sh

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache
