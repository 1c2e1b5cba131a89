"""Snakemake adapter for the lmm_chunk rule (see batchmix.stages.lmm_chunk_stage)."""
import sys
from pathlib import Path

# Make the package importable when it is not installed (e.g. a --sdm conda environment).
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from batchmix.stages import log_to, lmm_chunk_stage

with log_to(snakemake.log[0]):
    lmm_chunk_stage(
        dict(snakemake.config),
        snakemake.input.expression,
        snakemake.input.gene_status,
        snakemake.input.samples,
        dict(snakemake.output.items()),
    )
