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
from batchmix.io.readers import read_expression_table, read_sheet_table

__all__ = [
    "COUNT_INPUT_TYPES",
    "INPUT_TYPES",
    "MIN_COUNT_GENES",
    "ValidatedInputs",
    "read_expression",
    "read_samples",
    "validate_inputs",
    "batch_labels",
]

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
        Non-fatal observations (e.g. genes with missing values, rounded estimated counts).
    symbols : pandas.Series or None
        Gene symbols by gene id when the input carries them (``var`` of an .h5ad), else None.
    """

    expression: pd.DataFrame
    samples: pd.DataFrame
    batch: pd.Series
    notes: list[str] = field(default_factory=list)
    symbols: pd.Series | None = None


def _listing(items: list, total: int | None = None, *, quote: bool = False) -> str:
    """The first few items, comma-separated; ``quote``: each as ``repr`` so that whitespace shows."""
    items = [repr(str(i)) if quote else str(i) for i in items]
    total = len(items) if total is None else total
    shown = ", ".join(items[:_SHOW])
    return shown + (f" and {total - _SHOW} more" if total > _SHOW else "")


def _check_ids(ids: pd.Series, path: Path, what: str, kind: str, where) -> None:
    """Ids must be present, unique and without surrounding whitespace; ``where(i)`` names row ``i`` in the file."""
    text = ids.astype(object)
    missing = text.isna() | (text.astype(str).str.strip() == "")
    if missing.any():
        rows = np.flatnonzero(missing.to_numpy())
        shown = _listing([where(i) for i in rows[:_SHOW]], len(rows))
        raise InputError(f"{path}: empty {kind} id in the first column of the {what} at {shown}. Give every row an id.")
    text = text.astype(str)
    padded = text != text.str.strip()
    if padded.any():
        rows = np.flatnonzero(padded.to_numpy())
        shown = [f"{text.iloc[i]!r} ({where(i)})" for i in rows[:_SHOW]]
        raise InputError(
            f"{path}: {kind} id(s) with leading or trailing whitespace in the {what}: {_listing(shown, len(rows))}. "
            "Remove the spaces or tabs around the ids (they must match the other file exactly)."
        )
    dup = text[text.duplicated(keep=False)]
    if len(dup):
        first = dup.drop_duplicates()
        detail = [
            f"{g!r} ({', '.join(where(i) for i in np.flatnonzero((text == g).to_numpy())[:5])})" for g in first[:_SHOW]
        ]
        raise InputError(
            f"{path}: duplicate {kind} ids in the {what}: {_listing(detail, len(first))}. "
            f"Each {kind} must appear once: merge or rename the duplicates."
        )


def _check_sample_columns(samples: list[str], path: Path, what: str) -> None:
    dup_cols = list(dict.fromkeys(s for s in samples if samples.count(s) > 1))
    if dup_cols:
        raise InputError(
            f"{path}: duplicate sample columns in the {what}: {_listing(dup_cols, quote=True)}. "
            "Each sample must appear once."
        )
    padded = [s for s in samples if s != s.strip() or not s]
    if padded:
        raise InputError(
            f"{path}: sample column name(s) in the {what} that are empty or have leading or trailing whitespace: "
            f"{_listing(padded, quote=True)}. Name every column exactly as its sample id in the sample sheet."
        )


# Input types whose values are read counts: size factors and the VST apply.
COUNT_INPUT_TYPES = ("counts", "estimated_counts")
INPUT_TYPES = (*COUNT_INPUT_TYPES, "log")

# A count table needs at least this many genes: the VST's dispersion trend is estimated across genes
# (one gene gives no trend and DESeq2's fit stops; from two on, batchmix falls back to the mean).
MIN_COUNT_GENES = 2


# Cell checks run on blocks of this many columns, so that their temporary arrays stay small next to
# the matrix; the full mask is built only when a check fails, to name the cells.
_BLOCK_COLUMNS = 32


def _blocks(arr: np.ndarray):
    for j in range(0, arr.shape[1], _BLOCK_COLUMNS):
        yield arr[:, j : j + _BLOCK_COLUMNS]


def _any_cell(arr: np.ndarray, test) -> bool:
    return any(bool(test(block).any()) for block in _blocks(arr))


def _count_cells(arr: np.ndarray, test) -> int:
    return sum(int(np.count_nonzero(test(block))) for block in _blocks(arr))


def _fractional(values: np.ndarray) -> np.ndarray:
    return values != np.round(values)


def _cells(failing: np.ndarray, ids, samples, where, show) -> tuple[list[str], int]:
    r, c = np.nonzero(failing)
    shown = [f"gene {ids[i]!r} ({where(i)}), sample {samples[j]!r}{show(i, j)}" for i, j in zip(r[:_SHOW], c[:_SHOW])]
    return shown, len(r)


def read_expression(
    path: str | Path,
    input_type: str = "counts",
    *,
    layer: str | None = None,
    sample_names: dict | None = None,
) -> pd.DataFrame:
    """Read and check a genes × samples expression table.

    Parameters
    ----------
    path : str or Path
        Table with the gene id in the first column and one column per sample (TSV/CSV, optionally
        gzipped; featureCounts output; Parquet), or an AnnData .h5ad file (samples × genes).
    input_type : {"counts", "estimated_counts", "log"}
        ``counts``: every value must be a non-negative integer, no missing values.
        ``estimated_counts``: non-negative numbers (salmon/kallisto/RSEM through tximport), rounded to
        whole numbers as DESeq2's ``DESeqDataSetFromTximport`` does (``round()``, half to even).
        ``log``: every value must be numeric; missing values are allowed (the per-gene fits handle them).
    layer : str, optional
        For .h5ad: read this layer instead of ``X`` (config ``expression_layer``).
    sample_names : dict, optional
        For featureCounts output: BAM path or base name → sample id (config ``featurecounts_samples``).

    Returns
    -------
    pandas.DataFrame
        float64 values, index ``gene_id`` (strings, verbatim), columns = sample ids.

    Raises
    ------
    InputError
        Naming the file, the gene, line and sample of the first offending cells, and what to do.
    """
    return _read_expression(path, input_type, layer=layer, sample_names=sample_names)[0]


def _read_expression(path, input_type, *, layer, sample_names) -> tuple[pd.DataFrame, pd.Series | None, list[str], str]:
    """:func:`read_expression`, with the reader's gene symbols, notes and the file's format."""
    path = Path(path)
    what = "expression table"
    if input_type not in INPUT_TYPES:
        raise InputError(f"config: input_type must be one of {', '.join(INPUT_TYPES)}, not {input_type!r}.")
    table = read_expression_table(path, what, layer=layer, sample_names=sample_names)
    ids, samples, arr, where = table.ids, table.samples, table.values, table.where
    if len(ids) == 0:
        raise InputError(f"{path}: the {what} has a header but no gene rows. Was it exported completely?")
    _check_ids(pd.Series(ids, dtype=object), path, what, "gene", where)
    _check_sample_columns(samples, path, what)
    notes = list(table.notes)

    def value(i, j):
        return f": {arr[i, j]:g}"

    if _any_cell(arr, np.isinf):
        cells, n = _cells(np.isinf(arr), ids, samples, where, value)
        raise InputError(
            f"{path}: infinite values in the {what} at {_listing(cells, n)}. "
            "Replace them by numbers" + (" or leave the cells empty (missing)." if input_type == "log" else ".")
        )
    if input_type in COUNT_INPUT_TYPES:
        if _any_cell(arr, np.isnan):
            cells, n = _cells(np.isnan(arr), ids, samples, where, lambda i, j: "")
            raise InputError(
                f"{path}: missing values in a count table at {_listing(cells, n)}. Counts cannot be missing: "
                "fill them in, drop the gene, or use `input_type: log` for log-scale data."
            )
        if _any_cell(arr, lambda b: b < 0):
            cells, n = _cells(arr < 0, ids, samples, where, value)
            raise InputError(
                f"{path}: negative counts at {_listing(cells, n)}. Counts must be non-negative; "
                "if these are log-scale values, set `input_type: log`."
            )
        n_fractional = _count_cells(arr, _fractional)
        if input_type == "counts" and n_fractional:
            cells, n = _cells(_fractional(arr), ids, samples, where, value)
            raise InputError(
                f"{path}: non-integer counts at {_listing(cells, n)}. With `input_type: counts` every value must be "
                "a whole number (raw read counts). Estimated counts (salmon, kallisto or RSEM through tximport) "
                "are not whole: set `input_type: estimated_counts` to round them as DESeq2's "
                "DESeqDataSetFromTximport does. For normalised or log-scale values set `input_type: log`."
            )
        if input_type == "estimated_counts":
            np.round(arr, out=arr)  # half to even, as R's round() in DESeqDataSetFromTximport
            notes.append(
                f"input_type estimated_counts: {n_fractional} value(s) rounded to whole numbers "
                "(as DESeq2's DESeqDataSetFromTximport)."
            )
        # counts have no NaN here, so a sample's largest count says whether any is positive (a
        # reduction: no boolean copy of the matrix)
        zero = ~(arr.max(axis=0) > 0) if arr.size else ~(arr > 0).any(axis=0)
        if zero.any():
            names = [samples[j] for j in np.flatnonzero(zero)]
            raise InputError(
                f"{path}: sample(s) {_listing(names, quote=True)} have only zero counts in the {what}. A sample "
                "without reads has no library size: neither size-factor method (ratio or poscounts) can normalise "
                "it. Remove it from the expression table and the sample sheet (it is most likely a failed library)."
            )
        if len(ids) < MIN_COUNT_GENES:
            raise InputError(
                f"{path}: the count table has {len(ids)} gene; the VST estimates its dispersion trend across "
                f"genes and needs at least {MIN_COUNT_GENES} (it works well from a few hundred). Give the whole "
                "table of the experiment, not a selection of genes (select genes afterwards, in the results), "
                "or give already normalised log-scale values with `input_type: log`."
            )
    out = pd.DataFrame(arr, index=pd.Index(ids.astype(str), name="gene_id", dtype=object), columns=samples, copy=False)
    return out, table.symbols, notes, table.source


def read_samples(path: str | Path) -> pd.DataFrame:
    """Read and check the sample sheet.

    Parameters
    ----------
    path : str or Path
        Table with the sample id in the first column; every other column is a covariate. A .h5ad
        file gives its ``obs`` (the sample id is the obs index).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``sample_id``; columns whose every value is numeric become numbers,
        the others stay strings.
    """
    path = Path(path)
    what = "sample sheet"
    table, lines = read_sheet_table(path, what)
    if table.shape[0] == 0:
        raise InputError(f"{path}: the {what} has a header but no sample rows.")

    def where(i: int) -> str:
        return f"line {lines[i]}" if lines is not None and i < len(lines) else f"row {i + 1}"

    ids = table.iloc[:, 0]
    _check_ids(ids, path, what, "sample", where)
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
    *,
    config: dict | None = None,
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
    input_type : {"counts", "estimated_counts", "log"}
    model : str
        lme4-style formula, e.g. ``"~ Infection + (1|Batch)"``.
    batch : str
        Sample-sheet column naming the batch.
    config : dict, optional
        The workflow config (defaults filled in). When given, its input keys are used and checked too:
        ``expression_layer`` and ``featurecounts_samples`` (how to read the table), and
        ``vst.size_factors: ratio`` (needs a gene without zeros, else the fix is named here, before any job).

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
    config = config or {}
    expression, symbols, reader_notes, source = _read_expression(
        expression_path,
        input_type,
        layer=config.get("expression_layer"),
        sample_names=config.get("featurecounts_samples"),
    )
    if input_type in COUNT_INPUT_TYPES and (config.get("vst") or {}).get("size_factors") == "ratio":
        # counts have no NaN (read_expression refused them): a gene is positive in every sample when
        # its smallest count is (a reduction: no boolean copy of the matrix)
        values = expression.to_numpy()
        if not ((values.min(axis=1) > 0) if values.size else (values > 0).all(axis=1)).any():
            raise InputError(
                f"{expression_path}: every gene has a zero count in at least one sample, so DESeq2's median-of-ratios "
                "size factors (`vst: {size_factors: ratio}`) cannot be computed. Set `vst: {size_factors: poscounts}` "
                "(DESeq2's choice for sparse data such as single-cell counts)."
            )

    in_sheet, in_table = list(samples.index), list(expression.columns)
    missing = [s for s in in_sheet if s not in set(in_table)]
    extra = [s for s in in_table if s not in set(in_sheet)]
    if missing or extra:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} sample(s) of the sample sheet {samples_path} have no column in the expression "
                f"table {expression_path}: {_listing(missing, quote=True)}"
            )
        if extra:
            parts.append(
                f"{len(extra)} column(s) of the expression table {expression_path} are not in the sample sheet: "
                f"{_listing(extra, quote=True)}"
            )
        hint = ""
        if source == "featureCounts":
            hint = (
                f" {expression_path} is featureCounts output: its sample ids are the BAM file names without "
                "directory and .bam. Map them to the sheet's ids with the config key featurecounts_samples "
                "({BAM path or base name: sample id}), or rename the sheet's ids."
            )
        raise InputError(
            "; ".join(parts) + ". The sample ids (first column of the sheet) must match the table's column names "
            "exactly: add the missing rows/columns or remove the extra ones." + hint
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

    notes = list(reader_notes)
    if in_table != in_sheet:  # reordering copies the whole table
        expression = expression.loc[:, in_sheet]
    # count tables cannot hold missing values (read_expression refused them)
    n_missing_genes = 0 if input_type in COUNT_INPUT_TYPES else int(expression.isna().any(axis=1).sum())
    if n_missing_genes:
        notes.append(f"{n_missing_genes} gene(s) have missing values; they are fitted on their observed samples.")
    return ValidatedInputs(expression=expression, samples=samples, batch=labels, notes=notes, symbols=symbols)
