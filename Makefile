# psec_jax developer commands. Everything runs inside .venv, created on first use from constraints.txt
# (the exact versions the test suite was last run with).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all format demo lock info clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "error: python3.11 not found (set PYTHON=...)" >&2; exit 2; }
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "psec_jax needs Python >= 3.11, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade --constraint constraints.txt pip
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[dev]'
	touch $@

# pytest-xdist workers: one per core, at most 4 (each compiles on its own); a test file stays on one
# worker, so its module fixtures are built once
PYTEST_PARALLEL ?= -n auto --maxprocesses=4 --dist loadfile

# Lint and format checks (ruff), then the default suite (no `slow` tests; `accelerator` tests skip
# themselves on CPU), printing the slowest tests.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

# Rewrite the code as ruff formats it and apply ruff's safe fixes.
format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Everything, slow tests included.
test-all: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m ""

# PSEC continual policy shift on walker (stand -> walk) under the paper's protocol: a LoRA skill on the
# shipped pi_0 (psec_jax/rl/pretrained) against a scratch policy, 5 seeds x 10 episodes; regenerates
# its walk dataset from the committed behaviour policies if absent. Rerunning with the same DEMO_DIR
# resumes (finished stages are not retrained).
DEMO_DIR ?= runs/demo
demo: $(STAMP)
	$(BIN)/psec-jax psec_continual --config=psec_continual:demo --workdir=$(DEMO_DIR)

info: $(STAMP)
	$(BIN)/psec-jax info

# Re-resolve the newest compatible versions into constraints.txt (then run `make test` and commit).
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/python -m pip install --quiet --upgrade pip
	.lockvenv/bin/python -m pip install --quiet '.[dev]'
	{ echo "# Exact versions the test suite was run with (regenerate: make lock)."; \
	  .lockvenv/bin/python -m pip freeze --all --exclude psec_jax --exclude setuptools --exclude wheel; } > constraints.txt
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
