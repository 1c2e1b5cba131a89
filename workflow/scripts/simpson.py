"""Snakemake adapter for the simpson rule (see batchmix.stages.simpson_stage)."""
import sys
from pathlib import Path

# Make the package importable when it is not installed (e.g. a --sdm conda environment).
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from batchmix.stages import log_to, simpson_stage

with log_to(snakemake.log[0]):
    simpson_stage(
        dict(snakemake.config),
        snakemake.input.expression,
        snakemake.input.gene_status,
        snakemake.input.samples,
        dict(snakemake.output.items()),
    )
