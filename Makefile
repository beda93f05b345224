# rsseg — common tasks. `make install && make bench` runs the whole benchmark on the embedded default.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= potsdam
PROFILE ?= smoke

.PHONY: install test mutants bench lint clean

install: $(BIN)/rsseg

# pyproject.toml states version ranges; constraints.txt pins the versions the suite is tested with.
# [all,test]: every optional extra (methods, W&B, GeoTIFF; see README) and the test tools.
$(BIN)/rsseg: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[all,test]"
	@for command in fit validate test predict; do $(BIN)/rsseg $$command --help > /dev/null; done  # cache the help
	@touch $@

test: install
	$(BIN)/python -m pytest -q

# Each equation-level mutant in tests/mutants/catalogue.py must turn its group's default-run tests red
# (about 20 s per mutant on 2 cores). GROUP=metrics|d2ls|danet|idgbr|sdci runs one group.
mutants: install
	$(BIN)/python -m tests.mutants.run $(if $(GROUP),--group $(call quote,$(GROUP)),)

# make bench DATASET=potsdam|vaihingen|chn6cug|refsegrs|rrsisd|loveda|uavid [DATA_ROOT=…] [PROFILE=smoke|paper]
#            [METHODS=unet,d2ls] [SEEDS=3] [DEVICES=2 STRATEGY=ddp]   (SEEDS=N: seeds 0…N-1 per method;
#            DEVICES/STRATEGY go to every method's Lightning trainer)
# Every value reaches rsseg as one shell-quoted argument: spaces stay in it, `;` or `$(…)` never run.
quote = '$(subst ','"'"',$(1))'

bench: install
	$(call quote,$(BIN)/rsseg) bench $(call quote,$(DATASET)) --profile $(call quote,$(PROFILE)) \
		$(if $(DATA_ROOT),--data-root $(call quote,$(DATA_ROOT)),) \
		$(if $(METHODS),--methods $(call quote,$(METHODS)),) \
		$(if $(SEEDS),--seed-count $(call quote,$(SEEDS)),) \
		$(if $(DEVICES)$(STRATEGY),-- $(if $(DEVICES),--trainer.devices $(call quote,$(DEVICES)),) \
		$(if $(STRATEGY),--trainer.strategy $(call quote,$(STRATEGY)),),)

lint: install
	$(BIN)/ruff check rsseg tests benchmarks

clean:
	rm -rf .cache/rsseg results/bench .pytest_cache
