# rsseg — common tasks. `make install && make bench` runs the whole benchmark on the embedded default.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= potsdam
PROFILE ?= smoke

.PHONY: install test mutants bench rehearse lint clean

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

# Every pretrained loading path of the paper configs, offline, against a cache of RANDOM weights of the real
# architectures (docs/rehearsal.md): writes the cache (about 12 GB, once), then runs the heavy rehearsal tests.
REHEARSAL_CACHE ?= .cache/rehearsal
rehearse: install
	$(BIN)/rsseg rehearse-cache $(call quote,$(REHEARSAL_CACHE))
	mkdir -p results && rm -f results/rehearsal.jsonl
	RSSEG_REHEARSAL_CACHE=$(call quote,$(REHEARSAL_CACHE)) RSSEG_REHEARSAL_BIG=1 \
		RSSEG_REHEARSAL_RECORDS=results/rehearsal.jsonl $(BIN)/python -m pytest -q -m heavy tests/test_rehearsal_*.py

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
