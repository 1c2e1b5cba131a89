"""The validate stage: the config's expression table and sample sheet checked before any job runs."""

from __future__ import annotations

import logging

from batchmix.io import ValidatedInputs, validate_inputs

__all__ = ["load_validated", "validate_stage"]

logger = logging.getLogger(__name__)


def load_validated(config: dict, *, expression: str | None = None, samples: str | None = None) -> ValidatedInputs:
    """Read and validate the expression table and sample sheet (by default the config's).

    Raises
    ------
    batchmix.io.InputError
        Naming the file, the row or column and what to do.
    """
    return validate_inputs(
        expression or config["expression"],
        samples or config["samples"],
        config["input_type"],
        config["model"],
        config["batch"],
    )


def validate_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Check the inputs against each other and the config; writes nothing.

    Returns the counts (``genes``, ``samples``, ``batches``) and the non-fatal ``notes``.
    """
    validated = load_validated(config, expression=inputs["expression"], samples=inputs["samples"])
    for note in validated.notes:
        logger.info("note: %s", note)
    return {
        "genes": int(validated.expression.shape[0]),
        "samples": int(validated.expression.shape[1]),
        "batches": int(validated.batch.nunique()),
        "notes": list(validated.notes),
    }
