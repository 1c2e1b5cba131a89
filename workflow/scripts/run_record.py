"""Snakemake adapter for the run_record rule: runs the registry's stage (batchmix.pipeline.registry)."""

from batchmix.pipeline import run_snakemake_job

run_snakemake_job(snakemake, "run_record")  # noqa: F821 (Snakemake defines `snakemake` in scripts)
