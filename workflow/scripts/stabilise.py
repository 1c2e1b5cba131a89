"""Snakemake adapter for the stabilise rule (see batchmix.stages.stabilise_stage)."""
import sys
from pathlib import Path

# Make the package importable when it is not installed (e.g. a --sdm conda environment).
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from batchmix.stages import log_to, stabilise_stage

with log_to(snakemake.log[0]):
    stabilise_stage(dict(snakemake.config), dict(snakemake.output.items()))
