"""Snakemake adapter for the simpson_null rule: runs the registry's stage (batchmix.pipeline.registry)."""

from batchmix.pipeline import run_snakemake_job

run_snakemake_job(snakemake, "simpson_null")  # noqa: F821 (Snakemake defines `snakemake` in scripts)
