"""Snakemake adapter for the simpson_prepare rule: runs the registry's stage (batchmix.pipeline.registry)."""

from batchmix.pipeline import run_snakemake_job

run_snakemake_job(snakemake, "simpson_prepare")  # noqa: F821 (Snakemake defines `snakemake` in scripts)
