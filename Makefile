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

# make bench DATASET=potsdam|vaihingen|chn6cug|refsegrs|loveda [DATA_ROOT=…] [PROFILE=smoke|paper] [METHODS=unet,d2ls]
#            [DEVICES=2 STRATEGY=ddp]   (DEVICES/STRATEGY go to every method's Lightning trainer)
bench: install
	$(BIN)/rsseg bench $(DATASET) --profile $(PROFILE) $(if $(DATA_ROOT),--data-root $(DATA_ROOT),) \
		$(if $(METHODS),--methods $(METHODS),) \
		$(if $(DEVICES)$(STRATEGY),-- $(if $(DEVICES),--trainer.devices $(DEVICES),) \
		$(if $(STRATEGY),--trainer.strategy $(STRATEGY),),)

lint: install
	$(BIN)/ruff check rsseg tests benchmarks

clean:
	rm -rf .cache/rsseg results/bench .pytest_cache
