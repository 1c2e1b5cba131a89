"""Snakemake adapter for the report rule: runs the registry's stage (batchmix.pipeline.registry)."""

from batchmix.pipeline import run_snakemake_job

run_snakemake_job(snakemake, "report")  # noqa: F821 (Snakemake defines `snakemake` in scripts)
