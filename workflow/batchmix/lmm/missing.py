"""Genes grouped by their pattern of missing samples, and the one vocabulary of gene statuses.

Genes with the same observed samples share one design (the full design restricted to those
samples), so every engine fits them together. :func:`batchmix.lmm.fit` and the parametric
bootstrap (:mod:`batchmix.uncertainty.bootstrap`) both group genes here and set the statuses below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "OK",
    "SINGULAR",
    "ALL_MISSING",
    "CONSTANT",
    "TOO_FEW_OBSERVATIONS",
    "PERFECT_FIT",
    "NOT_CONVERGED",
    "NUMERICAL",
    "NO_STATUS",
    "ORIGINAL_FIT_FAILED",
    "DEGENERATE",
    "MissingnessPattern",
    "group_by_missingness",
    "constant_rows",
    "perfect_fit",
]

OK = "ok"
SINGULAR = "singular"  # a θ on the boundary (lme4's isSingular())
ALL_MISSING = "filtered:all_missing"
CONSTANT = "filtered:constant"  # no variation to model (e.g. all-zero genes)
TOO_FEW_OBSERVATIONS = "failed:too_few_observations"  # fewer than p + 2 samples or a degenerate design
PERFECT_FIT = "failed:perfect_fit"  # zero OLS residual
NOT_CONVERGED = "failed:not_converged"
NUMERICAL = "failed:numerical"
NO_STATUS = "failed:no_status"  # a gene without a status from the earlier stages
ORIGINAL_FIT_FAILED = "failed:original_fit"  # bootstrap: the gene's own fit is unusable
DEGENERATE = "failed:degenerate"  # grid posterior: S_λ not positive


@dataclass
class MissingnessPattern:
    """Genes (``rows`` of the table) observed on the same samples (``observed``, a mask over columns)."""

    observed: np.ndarray
    rows: np.ndarray

    @property
    def complete(self) -> bool:
        return bool(self.observed.all())


def group_by_missingness(
    values: np.ndarray,
    rows: np.ndarray,
    row_sums_of_squares: np.ndarray | None = None,
) -> tuple[list[MissingnessPattern], np.ndarray]:
    """Group the genes ``rows`` of ``values`` (genes × samples, NaN missing) by observed samples.

    Parameters
    ----------
    values : ndarray, G × n
    rows : ndarray of int
        The genes to group (e.g. those whose status is still ``ok``).
    row_sums_of_squares : ndarray, G, optional
        Σ y² per gene if known: a finite sum marks a complete gene, so only the other rows are
        inspected sample by sample.

    Returns
    -------
    patterns : list of MissingnessPattern
        The most common pattern (usually complete data) first, then the others; genes in input
        order within a pattern. Genes with no observed sample are in none.
    all_missing : ndarray of int
        The genes of ``rows`` with no observed sample (status :data:`ALL_MISSING`).
    """
    rows = np.asarray(rows, dtype=int)
    n = values.shape[1]
    if row_sums_of_squares is None:
        with np.errstate(over="ignore", invalid="ignore"):
            row_sums_of_squares = np.einsum("gi,gi->g", values[rows], values[rows])
        sums = row_sums_of_squares
    else:
        sums = row_sums_of_squares[rows]
    suspect = np.flatnonzero(~np.isfinite(sums))
    observed_suspect = np.isfinite(values[rows[suspect]])
    empty = np.zeros(rows.size, dtype=bool)
    empty[suspect] = ~observed_suspect.any(axis=1)
    all_missing = rows[empty]
    keep = ~empty
    todo = rows[keep]
    if not todo.size:
        return [], all_missing
    if not (observed_suspect.any(axis=1) & ~observed_suspect.all(axis=1)).any():
        return [MissingnessPattern(np.ones(n, dtype=bool), todo)], all_missing
    observed = np.ones((rows.size, n), dtype=bool)
    observed[suspect] = observed_suspect
    observed = observed[keep]
    masks, inverse = np.unique(observed, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(-np.bincount(inverse), kind="stable")
    return [MissingnessPattern(masks[i], todo[inverse == i]) for i in order], all_missing


def constant_rows(Y: np.ndarray, yty: np.ndarray) -> np.ndarray:
    """Rows whose spread is at most 1e-12 × max(|y|, 1) (no variation to model).

    Only rows whose centred sum of squares is tiny next to Σ y² (a superset of the
    constant rows) are checked value by value.
    """
    n = Y.shape[1]
    total = Y.sum(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        centred = yty - total * total / n
        candidate = ~(centred > 1e-8 * n * np.maximum(yty, 1.0))
    out = np.zeros(Y.shape[0], dtype=bool)
    idx = np.flatnonzero(candidate)
    if idx.size:
        sub = Y[idx]
        spread = sub.max(axis=1) - sub.min(axis=1)
        scale = np.maximum(np.abs(sub).max(axis=1), 1.0)
        out[idx] = spread <= 1e-12 * scale
    return out


def perfect_fit(ols_rss: np.ndarray, yty: np.ndarray) -> np.ndarray:
    """Genes that X fits exactly: an OLS residual sum of squares ≤ 1e-20 Σ y²."""
    return ols_rss <= 1e-20 * yty
