"""Snakemake adapter for the uncertainty rule: runs the registry's stage (batchmix.pipeline.registry)."""

import os

# The bootstrap runs many small matrix products in its own threads: one BLAS thread each is faster
# (only effective before numpy is first imported in this process).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from batchmix.pipeline import run_snakemake_job  # noqa: E402 (after the BLAS settings)

run_snakemake_job(snakemake, "uncertainty")  # noqa: F821 (Snakemake defines `snakemake` in scripts)
