"""The validate stage: the config's expression table and sample sheet checked before any job runs.

:func:`load_validated` reads both inputs, checks them against each other and the config, checks the
``levels`` and runs the design check (:func:`batchmix.design_check.check_design`): a design that cannot
answer (``~ group + (1|group)``, one sample per batch, no residual degrees of freedom) stops here, in
the main process, before anything is written. :func:`load_samples` is the one way every stage reads
the sample sheet: read, then made categorical where the config says (``levels``, the batch), with
the kinship matrix of ``covariance: {kinship: path}`` attached as the columns ``(1 | kinship)`` reads
(:func:`batchmix.lmm.kinship.attach_kinship`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd

from batchmix.design import categorize, formula_columns
from batchmix.design_check import DesignReport, check_design
from batchmix.io import InputError, ValidatedInputs, read_expression, read_samples, validate_inputs
from batchmix.lmm.kinship import KinshipError, attach_kinship, read_kinship

__all__ = [
    "kinship_path",
    "load_samples",
    "load_validated",
    "design_report",
    "sheet_design_report",
    "validate_stage",
    "with_kinship",
]

logger = logging.getLogger(__name__)


def _categorical(config: dict) -> list[str]:
    batch = config.get("batch")
    return [batch] if batch else []


def categorized(config: dict, samples, *, source: str = "sample sheet"):
    """``samples`` with the config's ``levels`` and batch columns categorical (:func:`batchmix.design.categorize`).

    Raises
    ------
    batchmix.io.InputError
        When ``levels`` names a column that is not in the sheet or lists its levels wrongly; the
        message names the column and lists its levels.
    """
    try:
        return categorize(samples, levels=config.get("levels") or {}, categorical=_categorical(config))
    except ValueError as err:
        raise InputError(f"{source}: {err}") from None


def kinship_path(config: dict) -> str | None:
    """The kinship matrix of the config (``covariance: {kinship: path}``), or None."""
    return (config.get("covariance") or {}).get("kinship") or None


def with_kinship(config: dict, samples):
    """``samples`` with the config's kinship matrix attached (unchanged without one).

    Raises
    ------
    batchmix.io.InputError
        When the matrix cannot be used (:func:`batchmix.lmm.kinship.read_kinship`: not found, not
        square, not symmetric, not positive semi-definite, sample ids missing); the message names the
        file and the problem.
    """
    matrix_path = kinship_path(config)
    if not matrix_path:
        return samples
    try:
        K = read_kinship(matrix_path, samples.index)
    except KinshipError as err:
        raise InputError(f"config covariance: kinship: {err}") from None
    return attach_kinship(samples, K)


def load_samples(config: dict, path: str | Path | None = None):
    """Read the sample sheet (by default the config's) with the config's categorical columns.

    Every stage reads the sheet through this function, so that ``levels`` and the batch column give
    the same factors, coefficient names and signs everywhere, and every stage sees the same kinship
    matrix.

    Parameters
    ----------
    config : dict
        The workflow config (``samples``, ``batch``, ``levels``, ``covariance``).
    path : str or Path, optional
        The sheet; default ``config["samples"]``.

    Returns
    -------
    pandas.DataFrame
        As :func:`batchmix.io.read_samples`, the ``levels`` columns and the batch as
        :class:`pandas.Categorical`; with ``covariance: {kinship: path}`` also the matrix as the
        columns ``kinship::<sample id>`` (:func:`batchmix.lmm.kinship.attach_kinship`).
    """
    path = path or config["samples"]
    return with_kinship(config, categorized(config, read_samples(path), source=str(path)))


def _validate_without_batch(
    expression_path, samples_path, input_type: str, model: str, config: dict
) -> ValidatedInputs:
    """The checks of :func:`batchmix.io.validate_inputs` that do not concern a batch (``batch: null``)."""
    samples = read_samples(samples_path)
    expression = read_expression(
        expression_path,
        input_type,
        layer=config.get("expression_layer"),
        sample_names=config.get("featurecounts_samples"),
    )
    missing = [s for s in samples.index if s not in set(expression.columns)]
    extra = [s for s in expression.columns if s not in set(samples.index)]
    if missing or extra:
        raise InputError(
            f"the sample ids of {samples_path} and the columns of {expression_path} differ "
            f"(in the sheet only: {missing[:5]}; in the table only: {extra[:5]}). They must match exactly."
        )
    try:
        columns = formula_columns(model)
    except ValueError as err:
        raise InputError(f"config: model {model!r} is not a valid lme4-style formula: {err}") from err
    absent = [c for c in columns if c not in samples.columns]
    if absent:
        raise InputError(
            f"{samples_path}: column(s) {absent} of the model {model!r} are not in the sample sheet "
            f"(its columns: {list(samples.columns)}). Fix the names in the config or add the columns."
        )
    for column in columns:
        if samples[column].isna().any():
            raise InputError(f"{samples_path}: column {column!r} has missing values; fill them or remove the samples.")

    expression = expression.loc[:, list(samples.index)]
    notes = []
    n_missing = int(expression.isna().any(axis=1).sum())
    if n_missing:
        notes.append(f"{n_missing} gene(s) have missing values; they are fitted on their observed samples.")
    return ValidatedInputs(
        expression=expression, samples=samples, batch=pd.Series(dtype=str, name="batch"), notes=notes
    )


def load_validated(
    config: dict, *, expression: str | None = None, samples: str | None = None, check: bool = True
) -> ValidatedInputs:
    """Read and validate the expression table and sample sheet (by default the config's), and check the design.

    The returned sheet has the config's categorical columns (:func:`load_samples`).

    Parameters
    ----------
    config : dict
        The workflow config with defaults filled in.
    expression, samples : str, optional
        The inputs; default the config's.
    check : bool
        Run the design check and stop on its errors.

    Raises
    ------
    batchmix.io.InputError
        Naming the file, the row or column and what to do; for a design that cannot be fitted, every
        error finding of the design check (each names the column and the fix); for a kinship matrix
        that cannot be used, the file and the problem.
    """
    expression_path = expression or config["expression"]
    samples_path = samples or config["samples"]
    batch = config.get("batch")
    if batch:
        validated = validate_inputs(
            expression_path, samples_path, config["input_type"], config["model"], batch, config=config
        )
    else:
        validated = _validate_without_batch(
            expression_path, samples_path, config["input_type"], config["model"], config
        )
    samples_sheet = with_kinship(config, categorized(config, validated.samples, source=str(samples_path)))
    validated = dataclasses.replace(validated, samples=samples_sheet)
    if check:
        design_report(config, validated).raise_on_errors(source=str(samples_path))
    return validated


def design_report(config: dict, validated: ValidatedInputs) -> DesignReport:
    """The design check of the validated inputs (:func:`batchmix.design_check.check_design`)."""
    return sheet_design_report(config, validated.samples, validated.expression)


def sheet_design_report(config: dict, samples: pd.DataFrame, expression: pd.DataFrame | None = None) -> DesignReport:
    """The design check of a sample sheet (read by :func:`load_samples`) and, for log input, the values.

    The expression table enters only the ``looks_like_counts`` finding of ``input_type: log``.
    """
    try:
        return check_design(
            samples,
            formula=config["model"],
            batch=config.get("batch"),
            input_type=config["input_type"],
            expression=expression,
            levels=config.get("levels") or {},
        )
    except ValueError as err:
        raise InputError(f"{config['samples']}: {err}") from None


def validate_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Check the inputs against each other and the config, and the design; writes nothing.

    Returns the counts (``genes``, ``samples``, ``batches``) and the non-fatal ``notes`` (the design
    check's warnings and notes among them).
    """
    validated = load_validated(config, expression=inputs["expression"], samples=inputs["samples"], check=False)
    report = design_report(config, validated)
    report.raise_on_errors(source=str(inputs["samples"]))
    notes = list(validated.notes) + [f"design check {f.severity} [{f.code}]: {f.message}" for f in report.findings]
    for note in notes:
        logger.info("note: %s", note)
    return {
        "genes": int(validated.expression.shape[0]),
        "samples": int(validated.expression.shape[1]),
        "batches": int(validated.batch.nunique()),
        "notes": notes,
    }
