"""The run_record stage: ``<outdir>/run.json``, what the analysis ran on and with (:mod:`batchmix.runrecord`)."""

from __future__ import annotations

import logging
import os

from batchmix.runrecord import build_run_record, write_run_record

__all__ = ["COMMAND_VARIABLE", "run_record_stage"]

# The environment variable that holds the command line of a Snakemake run (set by the main process in
# workflow/rules/common.smk, inherited by its jobs). Read in the job, not passed as a rule parameter:
# a parameter would make Snakemake's params trigger rerun the job whenever the command line differs
# (a dry run included).
COMMAND_VARIABLE = "BATCHMIX_COMMAND"

logger = logging.getLogger(__name__)


def run_record_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Write the run record of one analysis to ``outputs["record"]``.

    Parameters
    ----------
    config : dict
        The analysis's config.
    inputs : dict
        The input files the config names and the report (:func:`batchmix.pipeline.paths.stage_inputs`:
        the job runs after every other); the record hashes the files the config names itself.
    outputs : dict
        ``record``: the JSON file (``<outdir>/run.json``).
    params : dict
        ``analysis``: the analysis's name (None without ``analyses:``); ``command``: the command line
        that started the run (default: the environment variable :data:`COMMAND_VARIABLE`; None when
        neither is set).

    Returns
    -------
    dict
        ``{"inputs": n}``, the number of input files recorded.
    """
    command = params.get("command") or os.environ.get(COMMAND_VARIABLE)
    record = build_run_record(config, analysis=params.get("analysis"), command=command)
    write_run_record(outputs["record"], record)
    logger.info("run record written to %s (%d input files)", outputs["record"], len(record["inputs"]))
    return {"inputs": len(record["inputs"])}
