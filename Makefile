# make run   — set up .venv (first time) and run the offline default experiment
# make test  — set up .venv (first time) and run the test suite (no downloads, CPU)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_FLAGS ?=

.PHONY: setup run test test-slow test-slurm lint bench gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,trackers]"
	touch $@

run: setup
	$(PY) -m cl.run

test: setup
	$(PY) -m pytest -m "not slow and not slurm and not bench and not gpu" $(PYTEST_FLAGS)

test-slow: setup
	$(PY) -m pytest -m "slow and not slurm" $(PYTEST_FLAGS)

test-slurm: setup
	$(PY) -m pytest -m slurm $(PYTEST_FLAGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) experiments/bench/stream_overhead.py

# every GPU test and GPU benchmark in <= 8 minutes on one GPU, one summary table (says so and skips without a GPU)
gpu-check: setup
	$(PY) scripts/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
