"""Empirical checks of the scan's false discovery rate: the sign-flip null (the default) and the
within-batch permutation null.

Sign flip.  Each gene's within-batch residuals (on [1, C_b]) are multiplied by a random sign per
(gene, batch), keeping its batch fits and the observed usable mask, and all pairs are scanned again.
Every |r_b| stays as observed and every batch's sign is randomised independently, so a direction
that is consistent across batches is destroyed while heterogeneous per-batch correlations are kept:
the null under which the random-effects test must hold its level.  The permutation null
(``permutation_check``) destroys every within-batch correlation: it tests only the complete null.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from batchmix.defaults import DEFAULT_SEED

from .pairs import scan_data
from .prepare import UNITS_POOLED, UNITS_RANDOM_EFFECTS, SimpsonData, prepare, prepare_saved, row_blocks

__all__ = [
    "PermutationCheck",
    "CALIBRATION_METHODS",
    "sign_flip_data",
    "sign_flip_replicate",
    "calibration_summary",
    "calibration",
    "permutation_check",
    "permutation_check_saved",
    "permuted_values",
]

logger = logging.getLogger(__name__)

CALIBRATION_METHODS = ("sign_flip", "permutation", "none")


def sign_flip_data(data: SimpsonData, replicate: int, *, seed: int = DEFAULT_SEED) -> SimpsonData:
    """The data of one sign-flip replicate: residuals reflected per (gene, batch), mask kept.

    The random stream is ``numpy.random.default_rng([seed, replicate])``: replicates are independent
    and each can run as its own job with the same result.
    """
    return data.with_batch_residuals(data.batch_residuals * _flip_signs(data, replicate, seed))


def _flip_signs(data: SimpsonData, replicate: int, seed: int) -> np.ndarray:
    """The G x N signs of one replicate: one per (gene, batch), spread over the batch's columns."""
    if replicate < 0:
        raise ValueError(f"replicate must be >= 0, got {replicate}")
    rng = np.random.default_rng([int(seed), int(replicate)])
    signs = rng.integers(0, 2, size=(data.n_genes, len(data.batch_labels))) * 2.0 - 1.0
    return signs[:, data.batch_codes]


def sign_flip_replicate(
    data: SimpsonData,
    replicate: int,
    *,
    seed: int = DEFAULT_SEED,
    fdr: float = 0.05,
    method: str = "bh",
    within_test: str = "random_effects",
    min_batches: int = 3,
    block_size: int = 1024,
    workdir: str | Path | None = None,
) -> int:
    """Pairs flagged (q <= fdr) on one sign-flip replicate of ``data``; every one is a false discovery.

    With ``workdir``, the replicate's data is built a block of genes at a time in a temporary folder
    there and scanned memory-mapped (:meth:`SimpsonData.with_batch_residuals_saved`: the same
    numbers, the memory of a block-pair job instead of a copy of every residual).
    """
    options = {"fdr": fdr, "method": method, "within_test": within_test, "min_batches": min_batches}
    if workdir is None:
        null = sign_flip_data(data, replicate, seed=seed)
        result = scan_data(null, block_size=block_size, **options)
    else:
        units = UNITS_RANDOM_EFFECTS if within_test == "random_effects" else UNITS_POOLED
        with tempfile.TemporaryDirectory(prefix=f"sign_flip_{replicate}_", dir=workdir) as folder:
            null = data.with_batch_residuals_saved(_flip_signs(data, replicate, seed), folder, units=units)
            result = scan_data(null, block_size=block_size, **options)
            del null
    logger.info("sign-flip replicate %d: %d pairs flagged", replicate, len(result.reversals))
    return len(result.reversals)


def calibration_summary(
    flagged: int, flagged_null: list[int], *, method: str = "sign_flip", seed: int = DEFAULT_SEED
) -> dict:
    """Combine replicates: ``{method, replicates, flagged, flagged_null, empirical_fdr, seed}``.

    empirical_fdr = mean(flagged_null) / max(flagged, 1): the expected share of false discoveries
    among the pairs flagged on the data (0 when nothing is flagged under the null).
    """
    flagged_null = [int(v) for v in flagged_null]
    mean_null = float(np.mean(flagged_null)) if flagged_null else float("nan")
    return {
        "method": method,
        "replicates": len(flagged_null),
        "flagged": int(flagged),
        "flagged_null": flagged_null,
        "empirical_fdr": mean_null / max(int(flagged), 1),
        "seed": int(seed),
    }


def calibration(
    expression: pd.DataFrame,
    batch: pd.Series,
    *,
    n_replicates: int = 3,
    seed: int = DEFAULT_SEED,
    fdr: float = 0.05,
    method: str = "bh",
    within_test: str = "random_effects",
    min_batches: int = 3,
    covariates: np.ndarray | None = None,
    genes: int | None = None,
    min_sd: float = 0.1,
    zero_value: float | None = None,
    block_size: int = 1024,
) -> dict:
    """Sign-flip calibration in one call: the scan on the data and on ``n_replicates`` null replicates.

    Returns
    -------
    dict
        :func:`calibration_summary` of the replicates.
    """
    if n_replicates < 1:
        raise ValueError("n_replicates must be at least 1")
    data = prepare(expression, batch, covariates=covariates, genes=genes, min_sd=min_sd, zero_value=zero_value)
    options = dict(fdr=fdr, method=method, within_test=within_test, min_batches=min_batches, block_size=block_size)
    observed = len(scan_data(data, **options).reversals)
    null = [sign_flip_replicate(data, r, seed=seed, **options) for r in range(n_replicates)]
    return calibration_summary(observed, null, seed=seed)


@dataclass
class PermutationCheck:
    """Result of :func:`permutation_check`.

    Attributes
    ----------
    n_permutations : int
        Number of within-batch permutations run.
    discoveries_observed : int
        Reversals reported on the data (R).
    mean_discoveries_null : float
        Mean number of reversals reported on the permuted data (mean V).
    empirical_fdr : float
        mean V / max(R, 1).
    seed : int
        Seed of the permutations.
    null_counts : list of int
        Reversals reported on each permuted data set.
    """

    n_permutations: int
    discoveries_observed: int
    mean_discoveries_null: float
    empirical_fdr: float
    seed: int
    null_counts: list[int]


def permutation_check(
    expression: pd.DataFrame,
    batch: pd.Series,
    fdr: float = 0.05,
    method: str = "bh",
    covariates: np.ndarray | None = None,
    genes: int | None = None,
    n_permutations: int = 5,
    seed: int = DEFAULT_SEED,
    *,
    within_test: str = "random_effects",
    min_batches: int = 3,
    min_sd: float = 0.1,
    zero_value: float | None = None,
) -> PermutationCheck:
    """Empirical false discovery rate of the scan under the complete within-batch null.

    Each gene's within-batch residuals (on [batch, C]) are permuted inside every batch,
    independently per gene, and added back to its fitted batch (and covariate) part.  This keeps
    every gene's batch means, hence the between-batch structure and the pooled correlations it
    drives, and destroys the within-batch correlations, so every reversal found on permuted data is
    false.  (One permutation shared by all genes would relabel samples and leave every r_W
    unchanged: not a null.)  The usable mask is recomputed on the permuted data, which has the same
    values per (gene, batch).  The empirical FDR is mean(V_perm) / max(R_obs, 1).

    Parameters
    ----------
    expression, batch, fdr, method, covariates, genes, within_test, min_batches, min_sd, zero_value
        As in :func:`batchmix.simpson.scan`.  The gene set is chosen once on the observed data.
    n_permutations : int
        Number of permuted data sets.
    seed : int
        Seed of ``numpy.random.default_rng`` (default ``batchmix.defaults.DEFAULT_SEED``).

    Returns
    -------
    PermutationCheck

    See Also
    --------
    permutation_check_saved : the same check on prepared data, a block of genes at a time.
    """
    if n_permutations < 1:
        raise ValueError("n_permutations must be at least 1")
    options = dict(fdr=fdr, method=method, within_test=within_test, min_batches=min_batches)
    data = prepare(expression, batch, covariates=covariates, genes=genes, min_sd=min_sd, zero_value=zero_value)
    r_observed = len(scan_data(data, **options).reversals)
    null_counts = []
    for permutation in range(n_permutations):
        values = permuted_values(data, permutation, seed=seed)
        frame = pd.DataFrame(values, index=data.genes, columns=expression.columns)
        null = prepare(frame, batch, covariates=covariates, genes=None, min_sd=min_sd, zero_value=zero_value)
        null_counts.append(len(scan_data(null, **options).reversals))
    return _permutation_result(n_permutations, r_observed, null_counts, seed)


def permutation_check_saved(
    data: SimpsonData,
    batch: pd.Series,
    workdir: str | Path,
    *,
    fdr: float = 0.05,
    method: str = "bh",
    covariates: np.ndarray | None = None,
    n_permutations: int = 5,
    seed: int = DEFAULT_SEED,
    within_test: str = "random_effects",
    min_batches: int = 3,
    min_sd: float = 0.1,
    zero_value: float | None = None,
    observed: int | None = None,
) -> PermutationCheck:
    """:func:`permutation_check` on prepared data (e.g. memory-mapped, :meth:`SimpsonData.load`), with
    bounded memory: each permuted data set is built and prepared a block of genes at a time in a
    temporary folder under ``workdir`` (:func:`batchmix.simpson.prepare_saved`) and scanned
    memory-mapped.

    ``data`` is the observed data as :func:`batchmix.simpson.prepare` gives it (its genes already
    chosen); ``batch``, ``covariates``, ``min_sd`` and ``zero_value`` those it was prepared with.
    ``observed``: the number of reversals on ``data``, when the caller has scanned it already (else
    it is scanned here).  The same permutations and counts as :func:`permutation_check` on the
    matrix ``data`` was prepared from (the same random draws, rows and arithmetic; tested).
    """
    if n_permutations < 1:
        raise ValueError("n_permutations must be at least 1")
    options = dict(fdr=fdr, method=method, within_test=within_test, min_batches=min_batches)
    r_observed = len(scan_data(data, **options).reversals) if observed is None else int(observed)
    units = UNITS_RANDOM_EFFECTS if within_test == "random_effects" else UNITS_POOLED
    null_counts = []
    for permutation in range(n_permutations):

        def read_blocks(permutation=permutation):
            for rows in row_blocks(data.n_genes):
                yield permuted_values(data, permutation, seed=seed, rows=rows)

        with tempfile.TemporaryDirectory(prefix=f"permutation_{permutation}_", dir=workdir) as folder:
            null = prepare_saved(
                folder,
                read_blocks,
                data.genes,
                data.samples,
                batch,
                covariates=covariates,
                genes=None,
                min_sd=min_sd,
                zero_value=zero_value,
                units=units,
            )
            null_counts.append(len(scan_data(null, **options).reversals))
            del null  # its memory-mapped arrays, before the folder goes
        logger.info("permutation check: %d of %d permutations done", permutation + 1, n_permutations)
    return _permutation_result(n_permutations, r_observed, null_counts, seed)


def permuted_values(
    data: SimpsonData, permutation: int, *, seed: int = DEFAULT_SEED, rows: slice | None = None
) -> np.ndarray:
    """The values of one data set of :func:`permutation_check` (genes ``rows``, default all): each gene's
    fitted part plus its within-batch residuals permuted inside every batch.

    The random stream is that of ``numpy.random.default_rng(seed)`` drawing, permutation after
    permutation and batch after batch, one uniform per (gene, sample of the batch) for all genes
    (``rng.random((n_genes, batch size))``, whose row-wise argsort orders that gene's residuals);
    a block of rows jumps to its draws (``PCG64.advance``), so any block gives the rows of the whole.
    """
    rows = slice(*(slice(None) if rows is None else rows).indices(data.n_genes))
    if rows.step != 1:
        # the draws of a block are those of consecutive rows of the whole
        raise ValueError(f"rows must be consecutive genes (a slice without a step), got {rows}")
    within = np.asarray(data.within[rows])
    values = np.asarray(data.values[rows]) - within
    permuted = within.copy()
    n_genes, n_rows = data.n_genes, within.shape[0]
    # draws before this permutation: every batch's columns for every gene, in each earlier one
    offset = permutation * n_genes * sum(columns.size for columns in data.batch_columns)
    for columns in data.batch_columns:
        generator = np.random.PCG64(seed)
        generator.advance(offset + rows.start * columns.size)
        draws = np.random.Generator(generator).random((n_rows, columns.size))
        order = np.argsort(draws, axis=1)
        permuted[:, columns] = np.take_along_axis(within[:, columns], order, axis=1)
        offset += n_genes * columns.size
    return values + permuted


def _permutation_result(n_permutations: int, r_observed: int, null_counts: list, seed: int) -> PermutationCheck:
    mean_null = float(np.mean(null_counts))
    return PermutationCheck(
        n_permutations=n_permutations,
        discoveries_observed=r_observed,
        mean_discoveries_null=mean_null,
        empirical_fdr=mean_null / max(r_observed, 1),
        seed=seed,
        null_counts=[int(c) for c in null_counts],
    )
