"""Snakemake adapter for the design rule: runs the registry's stage (batchmix.pipeline.registry)."""

from batchmix.pipeline import run_snakemake_job

run_snakemake_job(snakemake, "design")  # noqa: F821 (Snakemake defines `snakemake` in scripts)
