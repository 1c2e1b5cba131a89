#!/usr/bin/env bash
# Snakemake runs this inside the new conda environment of envs/batchmix.yaml (--sdm conda), from the
# workflow's working directory: the clone's root, where pyproject.toml is. It installs batchmix
# itself (its dependencies come from the conda environment), editable so that the rules run the
# clone's code.
set -euo pipefail
python -m pip install --no-deps -e .
