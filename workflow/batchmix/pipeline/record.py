"""The run_record stage: ``<outdir>/run.json``, what the analysis ran on and with (:mod:`batchmix.runrecord`)."""

from __future__ import annotations

import logging

from batchmix.runrecord import build_run_record, write_run_record

__all__ = ["run_record_stage"]

logger = logging.getLogger(__name__)


def run_record_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Write the run record of one analysis to ``outputs["record"]``.

    Parameters
    ----------
    config : dict
        The analysis's config.
    inputs : dict
        The input files the config names (:func:`batchmix.pipeline.paths.stage_inputs`); the record
        hashes the files the config names itself.
    outputs : dict
        ``record``: the JSON file (``<outdir>/run.json``).
    params : dict
        ``analysis``: the analysis's name (None without ``analyses:``); ``command``: the command line
        that started the run (None when unknown).

    Returns
    -------
    dict
        ``{"inputs": n}``, the number of input files recorded.
    """
    record = build_run_record(config, analysis=params.get("analysis"), command=params.get("command"))
    write_run_record(outputs["record"], record)
    logger.info("run record written to %s (%d input files)", outputs["record"], len(record["inputs"]))
    return {"inputs": len(record["inputs"])}
