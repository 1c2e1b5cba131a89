"""Snakemake adapter for the compare rule: runs the registry's stage (batchmix.pipeline.registry), whole config."""

from batchmix.pipeline import run_snakemake_job

run_snakemake_job(snakemake, "compare")  # noqa: F821 (Snakemake defines `snakemake` in scripts)
