"""The lurking factor: sample-sheet columns nested in the batch, and how much of each reversal's
pooled correlation lies between their levels.

A column is nested in the batch when every batch holds a single level of it (Celltype in GSE147507:
each series is one cell line) and it has fewer levels than there are batches (a column with one
level per batch is the batch under another name).  For such a column C with level indicators L,
the pooled cross-product of a pair splits as S_T = (S_T - S_C) + S_C with

    S_C(x, y) = x' (P_[L, Cov] - P_[1, Cov]) y,

the cross-product between C's levels (given the covariates Cov).  When S_C / S_T > 1 the
within-level part S_T - S_C has the sign opposite to the pooled one: the pooled sign of the pair comes
entirely from the differences between C's levels, and the "reversal" contrasts those levels (cell
lines) with the within-batch correlation, not batches.  ``adjust_for: [C]`` takes the pooled side
within C's levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from batchmix.design import level_label
from batchmix.design_check import nested_columns

from .prepare import orthonormal_basis

__all__ = ["LurkingFactors", "lurking_columns", "factor_shares", "lurking_factors", "DRIVEN_SHARE", "DRIVING_FRACTION"]

# S_C / S_T above this: the pair's pooled sign comes from between C's levels.
DRIVEN_SHARE = 1.0
# A column drives the reversals when at least this fraction of the reported pairs is driven by it.
DRIVING_FRACTION = 0.5


def lurking_columns(samples: pd.DataFrame, batch: str, *, exclude: tuple[str, ...] = ()) -> list[str]:
    """Candidate lurking factors: the columns nested in the batch (the design check's definition,
    :func:`batchmix.design_check.nested_columns`) that group batches, i.e. have fewer levels than
    there are batches (a column with one level per batch is the batch under another name: its share
    is the between-batch share itself).

    Parameters
    ----------
    samples : pandas.DataFrame
        Sample sheet of the scanned samples (with the batch column).
    batch : str
        The batch column.
    exclude : tuple of str
        Columns not to consider (e.g. the covariates already adjusted for).

    Returns
    -------
    list of str
        In the sample sheet's column order.
    """
    n_batches = samples[batch].map(level_label).nunique()
    found = []
    for column in nested_columns(samples, batch):
        if column in exclude:
            continue
        n_levels = samples[column].map(lambda v: "<NA>" if pd.isna(v) else level_label(v)).nunique()
        if n_levels < n_batches:
            found.append(str(column))
    return found


def _level_indicators(levels: pd.Series) -> np.ndarray:
    codes, uniques = pd.factorize(levels.astype(object).where(levels.notna(), "<NA>").astype(str))
    indicators = np.zeros((codes.size, len(uniques)))
    indicators[np.arange(codes.size), codes] = 1.0
    return indicators


def factor_shares(
    expression: pd.DataFrame,
    pairs: pd.DataFrame,
    levels: pd.Series,
    *,
    covariates: np.ndarray | None = None,
) -> np.ndarray:
    """S_C / S_T for every row (gene_a, gene_b) of ``pairs``: the share of the pooled cross-product
    that lies between the levels of ``levels``.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes x samples, the values the scan used.
    pairs : pandas.DataFrame
        Columns gene_a, gene_b (e.g. ``SimpsonResult.reversals``).
    levels : pandas.Series
        Sample id -> level of the column (covering ``expression.columns``).
    covariates : numpy.ndarray, optional
        The scan's covariates (rows in the order of ``expression.columns``).

    Returns
    -------
    numpy.ndarray
        One share per row of ``pairs`` (NaN where S_T = 0).
    """
    if pairs.empty:
        return np.zeros(0)
    n = expression.shape[1]
    cov = np.zeros((n, 0)) if covariates is None else np.asarray(covariates, dtype=np.float64).reshape(n, -1)
    indicators = _level_indicators(levels.reindex(expression.columns))
    basis_pooled = orthonormal_basis(np.column_stack([np.ones(n), cov]))
    basis_levels = orthonormal_basis(np.column_stack([indicators, cov]))
    genes = pd.unique(np.concatenate([pairs["gene_a"].to_numpy(object), pairs["gene_b"].to_numpy(object)]))
    # row-major whatever the frame's layout (a Parquet matrix's or the prepared rows'), so that the
    # products, and their last bits, do not depend on where the values came from
    values = np.ascontiguousarray(expression.loc[genes].to_numpy(dtype=np.float64))
    pooled = values - (values @ basis_pooled) @ basis_pooled.T
    within_levels = values - (values @ basis_levels) @ basis_levels.T
    between = pooled - within_levels  # (P_[L, Cov] - P_[1, Cov]) x
    position = pd.Index(genes)
    a = position.get_indexer(pairs["gene_a"].to_numpy(object))
    b = position.get_indexer(pairs["gene_b"].to_numpy(object))
    s_total = np.einsum("ij,ij->i", pooled[a], pooled[b])
    s_between = np.einsum("ij,ij->i", between[a], between[b])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(s_total != 0, s_between / np.where(s_total != 0, s_total, 1.0), np.nan)


@dataclass
class LurkingFactors:
    """Result of :func:`lurking_factors`.

    Attributes
    ----------
    nested : list of str
        Columns nested in the batch.
    shares : pandas.DataFrame
        One row per reported pair (same index as the reversals), one column ``share_<column>`` per
        nested column: S_C / S_T.
    summary : dict
        Column -> {levels, n_pairs, n_driven, fraction_driven, median_share, driving}; ``driving``
        is true when at least half of the reported pairs have S_C / S_T > 1.
    """

    nested: list[str]
    shares: pd.DataFrame
    summary: dict


def lurking_factors(
    expression: pd.DataFrame,
    samples: pd.DataFrame,
    reversals: pd.DataFrame,
    *,
    batch: str,
    covariates: np.ndarray | None = None,
    exclude: tuple[str, ...] = (),
) -> LurkingFactors:
    """Name the sample-sheet columns nested in the batch and say whether they drive the reversals.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes x samples, the values the scan used.
    samples : pandas.DataFrame
        Sample sheet indexed by sample id (covering ``expression.columns``), with the batch column.
    reversals : pandas.DataFrame
        ``SimpsonResult.reversals``.
    batch : str
        The batch column.
    covariates : numpy.ndarray, optional
        The scan's covariates.
    exclude : tuple of str
        Columns not to consider (the covariates' columns).

    Returns
    -------
    LurkingFactors
    """
    missing = pd.Index(expression.columns).difference(samples.index)
    if len(missing):
        raise ValueError(f"samples missing from the sample sheet: {', '.join(map(str, missing[:5]))}")
    sheet = samples.loc[expression.columns]
    nested = lurking_columns(sheet, batch, exclude=exclude)
    shares = pd.DataFrame(index=reversals.index)
    summary = {}
    for column in nested:
        levels = sheet[column]
        share = factor_shares(expression, reversals, levels, covariates=covariates)
        shares[f"share_{column}"] = share
        driven = int(np.sum(share > DRIVEN_SHARE))
        n_pairs = int(len(reversals))
        fraction = driven / n_pairs if n_pairs else 0.0
        summary[column] = {
            "levels": sorted(map(str, pd.unique(levels.astype(object).where(levels.notna(), "<NA>")))),
            "n_pairs": n_pairs,
            "n_driven": driven,
            "fraction_driven": fraction,
            "median_share": float(np.nanmedian(share)) if n_pairs else None,
            "driving": bool(n_pairs > 0 and fraction >= DRIVING_FRACTION),
        }
    return LurkingFactors(nested=nested, shares=shares, summary=summary)
