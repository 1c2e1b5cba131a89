"""Validating the expression table and the sample sheet against each other and the config.

Every check here names the file, the row or column at fault and what to do, and raises
:class:`~batchmix.io.errors.InputError` before anything is computed or written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from batchmix.io.errors import InputError
from batchmix.io.tables import read_table

__all__ = ["ValidatedInputs", "read_expression", "read_samples", "validate_inputs", "batch_labels"]

# How many offending names an error message lists before it says "and N more".
_SHOW = 10


@dataclass
class ValidatedInputs:
    """Inputs that passed every check, aligned on the sample ids.

    Attributes
    ----------
    expression : pandas.DataFrame
        Genes × samples, float64, index ``gene_id``, columns in sample-sheet order.
    samples : pandas.DataFrame
        Sample sheet indexed by ``sample_id``, rows in sample-sheet order.
    batch : pandas.Series
        The batch label of each sample (strings).
    notes : list of str
        Non-fatal observations (e.g. genes with missing values).
    """

    expression: pd.DataFrame
    samples: pd.DataFrame
    batch: pd.Series
    notes: list[str] = field(default_factory=list)


def _listing(items: list, total: int | None = None) -> str:
    items = [str(i) for i in items]
    total = len(items) if total is None else total
    shown = ", ".join(items[:_SHOW])
    return shown + (f" and {total - _SHOW} more" if total > _SHOW else "")


def _check_ids(ids: pd.Series, path: Path, what: str, kind: str) -> None:
    """Ids must be present and unique; rows are reported as 1-based file lines (header is line 1)."""
    missing = ids.isna() | (ids.str.strip() == "")
    if missing.any():
        lines = (np.flatnonzero(missing.to_numpy()) + 2).tolist()
        raise InputError(
            f"{path}: empty {kind} id in the first column of the {what} at line(s) {_listing(lines)}. "
            "Give every row an id."
        )
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        first = dup.drop_duplicates()
        detail = [
            f"{g} (lines {', '.join(str(i + 2) for i in np.flatnonzero((ids == g).to_numpy()))})" for g in first[:_SHOW]
        ]
        raise InputError(
            f"{path}: duplicate {kind} ids in the {what}: {_listing(detail, len(first))}. "
            f"Each {kind} must appear once: merge or rename the duplicates."
        )


def read_expression(path: str | Path, input_type: str = "counts") -> pd.DataFrame:
    """Read and check a genes × samples expression table.

    Parameters
    ----------
    path : str or Path
        Table with the gene id in the first column and one column per sample.
    input_type : {"counts", "log"}
        ``counts``: every value must be a non-negative integer, no missing values.
        ``log``: every value must be numeric; missing values are allowed (the per-gene fits handle them).

    Returns
    -------
    pandas.DataFrame
        float64 values, index ``gene_id`` (strings), columns = sample ids.

    Raises
    ------
    InputError
        Naming the file, the gene and sample of the first offending cells, and what to do.
    """
    path = Path(path)
    what = "expression table"
    table = read_table(path, what)
    ids = table.iloc[:, 0]
    _check_ids(ids, path, what, "gene")
    samples = list(table.columns[1:])
    dup_cols = list(dict.fromkeys(s for s in samples if samples.count(s) > 1))
    if dup_cols:
        raise InputError(
            f"{path}: duplicate sample columns in the {what}: {_listing(dup_cols)}. Each sample must appear once."
        )
    raw = table.iloc[:, 1:]
    values = raw.apply(pd.to_numeric, errors="coerce")
    bad = values.isna() & raw.notna()
    if bad.to_numpy().any():
        r, c = np.nonzero(bad.to_numpy())
        cells = [
            f"gene {ids.iloc[i]} (line {i + 2}), sample {samples[j]}: {raw.iat[i, j]!r}"
            for i, j in zip(r[:_SHOW], c[:_SHOW])
        ]
        raise InputError(
            f"{path}: non-numeric values in the {what} at {_listing(cells, len(r))}. "
            "Every cell after the gene id must be a number."
        )
    arr = values.to_numpy(dtype=float)
    if input_type == "counts":
        # (cells that fail, how to show one cell's value, what is wrong, what to do)
        checks = [
            (
                np.isnan(arr),
                lambda v: "",
                "missing values in a count table",
                "Counts cannot be missing: fill them in, drop the gene, or use `input_type: log` for log-scale data.",
            ),
            (
                arr < 0,
                lambda v: f": {v:g}",
                "negative counts",
                "Counts must be non-negative integers; if these are log-scale values, set `input_type: log`.",
            ),
            (
                arr != np.round(arr),
                lambda v: f": {v:g}",
                "non-integer counts",
                "With `input_type: counts` every value must be a whole number (raw read counts); "
                "for normalised or log-scale values set `input_type: log`.",
            ),
        ]
        for failing, show, problem, advice in checks:
            if failing.any():
                r, c = np.nonzero(failing)
                cells = [
                    f"gene {ids.iloc[i]}, sample {samples[j]}{show(arr[i, j])}" for i, j in zip(r[:_SHOW], c[:_SHOW])
                ]
                raise InputError(f"{path}: {problem} at {_listing(cells, len(r))}. {advice}")
    elif input_type != "log":
        raise InputError(f"config: input_type must be 'counts' or 'log', not {input_type!r}.")
    if not np.isfinite(arr[~np.isnan(arr)]).all():
        raise InputError(f"{path}: infinite values in the {what}. Replace them by numbers or leave the cells empty.")
    out = pd.DataFrame(arr, index=pd.Index(ids.astype(str).to_numpy(), name="gene_id"), columns=samples)
    return out


def read_samples(path: str | Path) -> pd.DataFrame:
    """Read and check the sample sheet.

    Parameters
    ----------
    path : str or Path
        Table with the sample id in the first column; every other column is a covariate.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``sample_id``; columns whose every value is numeric become numbers,
        the others stay strings.
    """
    path = Path(path)
    what = "sample sheet"
    table = read_table(path, what)
    ids = table.iloc[:, 0]
    _check_ids(ids, path, what, "sample")
    sheet = table.iloc[:, 1:].copy()
    sheet.index = pd.Index(ids.astype(str).to_numpy(), name="sample_id")
    for col in sheet.columns:
        numeric = pd.to_numeric(sheet[col], errors="coerce")
        if numeric.notna().sum() == sheet[col].notna().sum():
            sheet[col] = numeric.astype(float)
    return sheet


def batch_labels(samples: pd.DataFrame, column: str) -> pd.Series:
    """The batch of each sample as text, as the sheet wrote it.

    A numeric batch column is read as floats (:func:`read_samples`); ``1.0`` becomes ``"1"`` again
    so that the labels match the sheet.

    Parameters
    ----------
    samples : pandas.DataFrame
        The sample sheet, as read by :func:`read_samples`.
    column : str
        The batch column.

    Returns
    -------
    pandas.Series
        Named ``batch``, indexed like ``samples``.
    """
    return (
        samples[column]
        .map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
        .rename("batch")
    )


def validate_inputs(
    expression_path: str | Path,
    samples_path: str | Path,
    input_type: str,
    model: str,
    batch: str,
) -> ValidatedInputs:
    """Read both inputs and check everything the workflow relies on.

    Checks: the tables parse; ids are present and unique; values are numeric (non-negative
    integers for counts); the sample ids of the sheet and of the table match exactly (the
    missing and extra ones are named); the formula parses and its columns exist in the sheet
    without missing values; the batch column exists and has at least two batches.

    Parameters
    ----------
    expression_path, samples_path : str or Path
        The config's ``expression`` and ``samples``.
    input_type : {"counts", "log"}
    model : str
        lme4-style formula, e.g. ``"~ Infection + (1|Batch)"``.
    batch : str
        Sample-sheet column naming the batch.

    Returns
    -------
    ValidatedInputs
        Expression with columns in sample-sheet order, the sheet, the batch labels.

    Raises
    ------
    InputError
        With a message that names the file, the row or column and what to do.
    """
    from batchmix.design import formula_columns

    expression_path, samples_path = Path(expression_path), Path(samples_path)
    samples = read_samples(samples_path)
    expression = read_expression(expression_path, input_type)

    in_sheet, in_table = list(samples.index), list(expression.columns)
    missing = [s for s in in_sheet if s not in set(in_table)]
    extra = [s for s in in_table if s not in set(in_sheet)]
    if missing or extra:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} sample(s) of the sample sheet {samples_path} have no column in the expression "
                f"table: {_listing(missing)}"
            )
        if extra:
            parts.append(
                f"{len(extra)} column(s) of the expression table {expression_path} are not in the sample sheet: "
                f"{_listing(extra)}"
            )
        raise InputError(
            "; ".join(parts) + ". The sample ids (first column of the sheet) must match the table's column names "
            "exactly: add the missing rows/columns or remove the extra ones."
        )

    try:
        columns = formula_columns(model)
    except ValueError as err:
        raise InputError(f"config: model {model!r} is not a valid lme4-style formula: {err}") from err
    absent = [c for c in dict.fromkeys(columns + [batch]) if c not in samples.columns]
    if absent:
        raise InputError(
            f"{samples_path}: column(s) {_listing(absent)} used by the config (model {model!r}, batch {batch!r}) "
            f"are not in the sample sheet. Its columns are: {_listing(list(samples.columns), len(samples.columns))}. "
            "Fix the names in the config or add the columns."
        )
    for col in dict.fromkeys(columns + [batch]):
        na = samples[col].isna()
        if na.any():
            raise InputError(
                f"{samples_path}: column {col!r} has missing values for sample(s) {_listing(list(samples.index[na]))}. "
                "Fill them in, or remove those samples from both files."
            )
    labels = batch_labels(samples, batch)
    n_batches = labels.nunique()
    if n_batches < 2:
        raise InputError(
            f"{samples_path}: column {batch!r} (the config's batch) has {n_batches} distinct value(s) "
            f"({_listing(labels.unique().tolist())}); batch-effect analysis needs at least two batches. "
            "Check that `batch` names the right column."
        )

    notes = []
    expression = expression.loc[:, in_sheet]
    n_missing_genes = int(expression.isna().any(axis=1).sum())
    if n_missing_genes:
        notes.append(f"{n_missing_genes} gene(s) have missing values; they are fitted on their observed samples.")
    return ValidatedInputs(expression=expression, samples=samples, batch=labels, notes=notes)
