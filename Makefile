# rsseg — common tasks. `make install && make bench` runs the whole benchmark on the embedded default.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= potsdam
PROFILE ?= smoke

.PHONY: install test bench lint clean

install: $(BIN)/rsseg

$(BIN)/rsseg: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/rsseg bench $(DATASET) --profile $(PROFILE) $(if $(DATA_ROOT),--data-root $(DATA_ROOT),)

lint: install
	$(BIN)/ruff check rsseg tests benchmarks

clean:
	rm -rf .cache/rsseg results/bench .pytest_cache
