"""Snakemake adapter for the gather_lmm rule: runs the registry's stage (batchmix.pipeline.registry)."""

from batchmix.pipeline import run_snakemake_job

run_snakemake_job(snakemake, "gather_lmm")  # noqa: F821 (Snakemake defines `snakemake` in scripts)
