"""The workflow's stages behind one contract, and where their files go.

- :mod:`batchmix.pipeline.paths`     every output path, relative to an outdir (rules, CLI, report inputs)
- :mod:`batchmix.pipeline.registry`  the stages, one signature each, run with logging and timing
- :mod:`batchmix.pipeline.logs`      a job's log file, console logging and JSON run record (warnings)
- :mod:`batchmix.pipeline.validate`  the validate stage (inputs checked before any job)
- :mod:`batchmix.pipeline.stabilise` the stabilise stage (filter, size factors, VST)
- :mod:`batchmix.pipeline.lmm`       split_genes, lmm_chunk, gather_lmm
- :mod:`batchmix.pipeline.simpson`   the simpson stage
- :mod:`batchmix.pipeline.design`    the design stage (the design check, design.json)
- :mod:`batchmix.pipeline.de`        the de stage (DE with and without the batch, de/<coef>.tsv)
- :mod:`batchmix.pipeline.summary`   the diagnostics (PCA, batch R²) and summary (the verdict) stages
- :mod:`batchmix.pipeline.uncertainty` the uncertainty stage (bootstrap and posterior tables, figures)
- :mod:`batchmix.pipeline.record`    the run_record stage (run.json, :mod:`batchmix.runrecord`)
- :mod:`batchmix.pipeline.runner`    a whole analysis in-process (``batchmix run`` and ``batchmix replay``)

The report lives in :mod:`batchmix.report`; the registry runs it under the same signature.
"""

from batchmix.pipeline.paths import batch_is_random, report_inputs, stage_inputs, stage_outputs
from batchmix.pipeline.registry import COMPOSITES, STAGES, Stage, get_stage, run_snakemake_job, run_stage
from batchmix.pipeline.validate import load_samples, load_validated

__all__ = [
    "COMPOSITES",
    "STAGES",
    "Stage",
    "batch_is_random",
    "get_stage",
    "load_samples",
    "load_validated",
    "report_inputs",
    "run_snakemake_job",
    "run_stage",
    "stage_inputs",
    "stage_outputs",
]
