"""Snakemake adapter for the gather_lmm rule (see batchmix.stages.gather_stage)."""
import sys
from pathlib import Path

# Make the package importable when it is not installed (e.g. a --sdm conda environment).
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from batchmix.stages import log_to, gather_stage

with log_to(snakemake.log[0]):
    gather_stage(
        dict(snakemake.config),
        list(snakemake.input.fits),
        list(snakemake.input.blups),
        list(snakemake.input.corrected),
        snakemake.input.gene_status,
        dict(snakemake.output.items()),
    )
