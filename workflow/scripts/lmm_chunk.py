"""Snakemake adapter for the lmm_chunk rule: runs the registry's stage (batchmix.pipeline.registry)."""

from batchmix.pipeline import run_snakemake_job

run_snakemake_job(snakemake, "lmm_chunk")  # noqa: F821 (Snakemake defines `snakemake` in scripts)
