"""Snakemake adapter for the report rule (see batchmix.report.build_report)."""
import sys
from pathlib import Path

# Make the package importable when it is not installed (e.g. a --sdm conda environment).
sys.path.insert(0, str(Path(snakemake.scriptdir).parent))

from batchmix.report import build_report
from batchmix.stages import log_to

with log_to(snakemake.log[0]):
    build_report(
        dict(snakemake.config),
        {name: str(path) for name, path in snakemake.input.items()},
        snakemake.output.html,
        snakemake.output.figures,
    )
