# Two commands for a fresh clone: `make run` and `make test`.
# Both create .venv when missing and install the exact lock (envs/requirements.lock), then batchmix
# itself on top of it (editable, without resolving dependencies again).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
LOCK := envs/requirements.lock

.PHONY: run study unlock test venv clean lint

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The local profile resumes by itself after a kill: rerun-incomplete (a job killed while it wrote its
# outputs is run again) and finished jobs are kept. After a kill, `make unlock` then `make run`.
run: $(STAMP)
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)

# Several analyses of the embedded example and of Bottomly et al. (config/study.yaml): one folder per
# analysis under results/, and results/index.html comparing them.
study: $(STAMP)
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) --configfile config/study.yaml

unlock: $(STAMP)
	$(BIN)/snakemake --profile profiles/local --unlock

# ruff's lint and format check first (seconds), then the whole test suite.
test: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/python -m pytest

# ruff (lint and format, configured in pyproject.toml) and Snakemake's own lint of the rules.
lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/snakemake --lint

clean:
	rm -rf results/* .snakemake
