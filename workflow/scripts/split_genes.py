"""Snakemake adapter for the split_genes rule (see batchmix.stages.split_stage)."""
import sys
from pathlib import Path

# Make the package importable when it is not installed (e.g. a --sdm conda environment).
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from batchmix.stages import log_to, split_stage

with log_to(snakemake.log[0]):
    split_stage(snakemake.input.expression, snakemake.input.gene_status, list(snakemake.output))
