"""Snakemake adapter for the uncertainty rule (see batchmix.uncertainty.uncertainty_stage)."""
import os
import sys
from pathlib import Path

# The bootstrap runs many small matrix products in its own threads: one BLAS thread each is faster
# (only effective before numpy is first imported in this process).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Make the package importable when it is not installed (e.g. a --sdm conda environment).
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from batchmix.stages import log_to
from batchmix.uncertainty import uncertainty_stage

with log_to(snakemake.log[0]):
    uncertainty_stage(
        dict(snakemake.config),
        snakemake.input.expression,
        snakemake.input.gene_status,
        snakemake.input.gene_fits,
        snakemake.input.samples,
        dict(snakemake.output.items()),
        threads=snakemake.threads,
    )
