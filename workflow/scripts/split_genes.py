"""Snakemake adapter for the split_genes rule: runs the registry's stage (batchmix.pipeline.registry)."""

from batchmix.pipeline import run_snakemake_job

run_snakemake_job(snakemake, "split_genes")  # noqa: F821 (Snakemake defines `snakemake` in scripts)
