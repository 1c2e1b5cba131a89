"""The scan over gene pairs: candidates of one block pair, and the step-up over all pairs.

A scan is ``prepare`` (once), ``scan_block_pair`` for every pair of gene blocks (i <= j), then
``combine``.  The blocks may run as separate jobs: each returns the candidates of its block pair
(every pair there with p <= the bound), and ``combine`` runs BH/BY over all M = G(G-1)/2 pairs.  The
result does not depend on the blocking.

Speed.  Every pair with p <= p_bound has |r_T| >= c_T (``pooled_threshold``), so the per-batch work of
the random-effects test is done only for the pairs of a block pair that pass this bound, on genes
with at least ``min_batches`` usable batches.  Correlations are screened in float32 with a margin
(:mod:`batchmix.simpson.screen`: a cheap upper bound of the random-effects z drops most pairs before
any atanh), then every survivor is recomputed in float64 and tested exactly: float32 only decides
which pairs to recompute, never a reported number.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .prepare import SimpsonData
from .statistics import (
    correlation_thresholds,
    fisher_z,
    harmonic_number,
    norm_isf,
    pooled_threshold,
    random_effects,
    reversal_p,
    step_up_q,
)

__all__ = [
    "SimpsonResult",
    "REVERSAL_COLUMNS",
    "CANDIDATE_COLUMNS",
    "WITHIN_TESTS",
    "p_bound",
    "block_pairs",
    "scan_block_pair",
    "combine",
    "scan_data",
    "pair_statistics",
]

logger = logging.getLogger(__name__)

WITHIN_TESTS = ("random_effects", "pooled")

REVERSAL_COLUMNS = [
    "gene_a",
    "gene_b",
    "r_pooled",
    "r_within",
    "r_between",
    "between_share",
    "p",
    "q",
    "n_batches_within_sign",
    "per_batch_r",
    "mu_r",
    "tau2",
    "i2",
    "k_usable",
    "n_agree",
]
_COLUMN_DTYPES = {
    "gene_a": object,
    "gene_b": object,
    "r_pooled": np.float64,
    "r_within": np.float64,
    "r_between": np.float64,
    "between_share": np.float64,
    "p": np.float64,
    "q": np.float64,
    "n_batches_within_sign": np.int64,
    "per_batch_r": object,
    "mu_r": np.float64,
    "tau2": np.float64,
    "i2": np.float64,
    "k_usable": np.int64,
    "n_agree": np.int64,
}
CANDIDATE_COLUMNS = ["index_a", "index_b", "p"]

# Pairs per chunk when recomputing in float64 (chunk x N float64 arrays, ~65 MB at N = 500).
_EXACT_CHUNK = 16384
# Pairs per chunk of the exact recomputation of the scan's survivors (two chunk x N float64 buffers,
# ~1 MB each at N = 500, reused from chunk to chunk).
_GATHER_CHUNK = 256
# Screening margins of the float32 pass.  float32 inner products of unit vectors of a few hundred
# entries are off by ~1e-6; r_T is screened 1e-4 below its threshold, and z_RE 0.05 inside its
# threshold, which covers an error of up to ~1e-3 in every atanh(r_b) (|r_b| <= 0.99) even with all
# weight on one batch.  Pairs with a usable |r_b| > 0.99, where atanh is steep, always go on.
_SLACK_R = 1e-4
_SLACK_Z = 0.05
_STEEP_R = 0.99


# Below this share of a block pair's pairs past the pooled bound, their per-batch correlations are
# computed pair by pair (numba) rather than as full per-batch matrix products: with inner dimension
# n_b the products run far below BLAS peak, and pair by pair costs K x N against block^2 x N (at
# 20 batches of 25 samples the products of a whole 1024 x 1024 block pair cost about as much as
# 10-15% of its pairs one by one).
_DENSE_SURVIVORS = 0.1
# Rows of a block pair whose per-batch matrix products are held at once (B x rows x block float32).
_PRODUCT_ROWS = 256
# The cheap bound of the screen (batchmix.simpson.screen) is used when every usable |r_b| <= this.
_BOUND_R = 0.9


@dataclass
class SimpsonResult:
    """Result of :func:`scan`.

    Attributes
    ----------
    reversals : pandas.DataFrame
        One row per reversal with q <= ``fdr``; columns ``REVERSAL_COLUMNS``, sorted by p, then by
        consistency (``n_agree``, descending), then input order.  gene_a precedes gene_b in the
        input order.
    n_genes : int
        Genes scanned.
    n_pairs : int
        G(G-1)/2, the number of tests the FDR is controlled over.
    n_candidates : int
        Pairs with p <= fdr (BH) or p <= fdr / c(M) (BY): those the step-up needs.
    fdr : float
        Nominal false discovery rate.
    method : str
        ``"bh"`` or ``"by"``.
    genes_excluded : pandas.Series
        Gene -> reason, for every input gene left out of the scan.
    within_test : str
        ``"random_effects"`` or ``"pooled"``.
    min_batches : int
        Usable batches a pair needs under ``random_effects`` (fewer: p = 1).
    """

    reversals: pd.DataFrame
    n_genes: int
    n_pairs: int
    n_candidates: int
    fdr: float
    method: str
    genes_excluded: pd.Series
    within_test: str = "random_effects"
    min_batches: int = 3


def _check_options(fdr: float, method: str, within_test: str, min_batches: int) -> None:
    if not 0.0 < fdr < 1.0:
        raise ValueError(f"fdr must be in (0, 1), got {fdr}")
    if method not in ("bh", "by"):
        raise ValueError(f"method must be 'bh' or 'by', got {method!r}")
    if within_test not in WITHIN_TESTS:
        raise ValueError(f"within_test must be one of {WITHIN_TESTS}, got {within_test!r}")
    if min_batches < 1:
        raise ValueError(f"min_batches must be at least 1, got {min_batches}")


def p_bound(n_pairs: int, fdr: float, method: str) -> float:
    """Largest p a pair can have and still reach q <= fdr: fdr (BH) or fdr / c(M) (BY).

    BH/BY q >= factor * p, so only pairs with p <= fdr / factor can be reported.
    """
    return fdr / (harmonic_number(n_pairs) if method == "by" else 1.0)


def block_pairs(n_genes: int, block_size: int) -> list[tuple[slice, slice]]:
    """The block pairs (i <= j) that together hold every gene pair once; jobs of a scattered scan."""
    if block_size < 1:
        raise ValueError("block_size must be positive")
    starts = range(0, n_genes, block_size)
    blocks = [slice(s, min(s + block_size, n_genes)) for s in starts]
    return [(blocks[i], blocks[j]) for i in range(len(blocks)) for j in range(i, len(blocks))]


def _rows(block: slice, n_genes: int) -> np.ndarray:
    return np.arange(*block.indices(n_genes))


def _per_batch_r(data: SimpsonData, index_a: np.ndarray, index_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """K x B within-batch correlations (float64; NaN where unusable) and the K x B usable mask."""
    # the columns already sorted by batch: the same products as unit[rows][:, order], one copy fewer
    unit, _ = data.unit_batch_sorted(np.float64)
    _, starts = data.batch_order()
    usable = data.usable[index_a] & data.usable[index_b]
    r = np.empty((index_a.size, len(data.batch_labels)))
    if unit.shape[1] == 0:
        r[:] = 0.0
        return _nan_where_unusable(r, usable)
    for sl, rows_a, rows_b in _gathered_rows(unit, index_a, index_b):
        # the products in place of the first gene's rows: the same numbers as rows_a * rows_b
        np.add.reduceat(np.multiply(rows_a, rows_b, out=rows_a), starts, axis=1, out=r[sl])
    return _nan_where_unusable(r, usable)


def _nan_where_unusable(r: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r[~usable] = np.nan
    return r, usable


def _gathered_rows(unit: np.ndarray, index_a: np.ndarray, index_b: np.ndarray):
    """(slice, unit[index_a[slice]], unit[index_b[slice]]) chunk by chunk, in two reused buffers.

    Chunks of ``_GATHER_CHUNK`` pairs stay in cache, and the buffers are written again instead of
    fresh arrays being page-faulted in for every chunk (each row's numbers are those of unit[index]).
    The buffers of a chunk are overwritten by the next one: use them before asking for it.
    """
    size = max(min(_GATHER_CHUNK, index_a.size), 1)
    buffer_a = np.empty((size, unit.shape[1]), unit.dtype)
    buffer_b = np.empty((size, unit.shape[1]), unit.dtype)
    for start in range(0, index_a.size, size):
        sl = slice(start, min(start + size, index_a.size))
        n = sl.stop - start
        yield (
            sl,
            np.take(unit, index_a[sl], axis=0, out=buffer_a[:n]),
            np.take(unit, index_b[sl], axis=0, out=buffer_b[:n]),
        )


def _product_buffer(n_batches: int, n_rows: int, n_cols: int) -> np.ndarray:
    """A C-contiguous B x (n_rows n_cols + 16) float32 array: batch b's n_rows x n_cols products in row b.

    The 16 floats of padding put the batch planes 64 bytes further apart than dense: planes a power
    of two apart (1 MB for 256 x 1024) fall into the same cache sets and evict each other.
    """
    return np.empty((n_batches, n_rows * n_cols + 16), dtype=np.float32)


def _exact_random_effects_p(data, index_a, index_b, min_batches):
    r_pooled = np.empty(index_a.size)
    for sl, rows_a, rows_b in _gathered_rows(data.unit_rows("pooled"), index_a, index_b):
        np.einsum("ij,ij->i", rows_a, rows_b, out=r_pooled[sl])
    r_batch, usable = _per_batch_r(data, index_a, index_b)
    effects = random_effects(r_batch, usable, data.batch_weights)
    p = reversal_p(fisher_z(r_pooled, data.df_pooled), effects.z)
    return np.where(effects.k >= min_batches, p, 1.0)


def _take_rows(matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """matrix[rows]: a view when the rows are consecutive (a whole block), else a copy."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return matrix[rows[0] : rows[-1] + 1]
    return matrix[rows]


def _random_effects_candidates(data: SimpsonData, rows_a, rows_b, same, bound, min_batches):
    """Pairs of rows_a x rows_b with p_RE <= bound: float32 screen, float64 test of the survivors."""
    # numba is imported here: only the scan needs it, not every importer of batchmix.simpson
    from .screen import count_past, screen_pairs, screen_products

    # a gene with fewer usable batches than min_batches has p = 1 with every partner
    enough_genes = data.usable.sum(axis=1) >= min_batches
    rows_a, rows_b = rows_a[enough_genes[rows_a]], rows_b[enough_genes[rows_b]]
    empty = np.zeros(0, np.int64)
    if rows_a.size == 0 or rows_b.size == 0:
        return empty, empty.copy(), np.zeros(0)
    pooled32 = data.unit_rows("pooled", np.float32)
    r_pooled = _take_rows(pooled32, rows_a) @ _take_rows(pooled32, rows_b).T
    threshold = np.float32(pooled_threshold(bound, data.df_pooled) - _SLACK_R)
    # the screen: pairs past the pooled bound with >= min_batches usable batches, then the bound or
    # the float32 z_RE of batchmix.simpson.screen (its docstring has the margin argument)
    usable = np.ascontiguousarray(data.usable).view(np.uint8)
    usable_a, usable_b = usable[rows_a], usable[rows_b]
    weights = np.maximum(data.batch_weights, 1.0)
    ratio = float(weights.max() / weights.min()) if weights.size else 1.0
    options = (
        weights,
        ratio,
        int(min_batches),
        bool(same),
        float(norm_isf(bound / 2.0) - _SLACK_Z),
        _STEEP_R,
        _BOUND_R,
    )
    unit32, bounds = data.unit_batch_sorted(np.float32)
    left, right = _take_rows(unit32, rows_a), _take_rows(unit32, rows_b)
    out_i = np.empty(r_pooled.size, np.int64)
    out_j = np.empty(r_pooled.size, np.int64)
    n_past = count_past(r_pooled, threshold)
    if n_past < _DENSE_SURVIVORS * r_pooled.size:
        # few pairs past the bound: their per-batch inner products only (K x N work, not block^2 x N)
        starts = np.array([start for start, _ in bounds] + [unit32.shape[1]], dtype=np.int64)
        n_out = screen_pairs(left, right, starts, r_pooled, threshold, usable_a, usable_b, *options, out_i, out_j)
    else:
        # most pairs past the bound: one matrix product per batch, a few hundred rows at a time
        n_out = 0
        usable_b_t = np.ascontiguousarray(usable_b.T)
        buffer = _product_buffer(len(bounds), min(_PRODUCT_ROWS, rows_a.size), rows_b.size)
        for row0 in range(0, rows_a.size, _PRODUCT_ROWS):
            rows = slice(row0, min(row0 + _PRODUCT_ROWS, rows_a.size))
            n_rows = rows.stop - row0
            for b, (start, stop) in enumerate(bounds):
                plane = buffer[b, : n_rows * rows_b.size].reshape(n_rows, rows_b.size)
                np.matmul(left[rows, start:stop], right[:, start:stop].T, out=plane)
            n_out = screen_products(
                buffer, n_rows, r_pooled, row0, threshold, usable_a, usable_b_t, *options, out_i, out_j, n_out
            )
    del left, right, r_pooled
    index_a, index_b = rows_a[out_i[:n_out]], rows_b[out_j[:n_out]]
    p = _exact_random_effects_p(data, index_a, index_b, min_batches)
    exact = p <= bound
    logger.debug(
        "block pair: %d pairs past the pooled bound, %d screened, %d candidates", n_past, n_out, int(exact.sum())
    )
    return index_a[exact], index_b[exact], p[exact]


def _pooled_candidates(data: SimpsonData, rows_a, rows_b, same, bound):
    """Pairs of rows_a x rows_b with p_pooled <= bound (the pre-random-effects test, in float64)."""
    unit_pooled, unit_within = data.unit_rows("pooled"), data.unit_rows("within")
    c_pooled, c_within = correlation_thresholds(bound, data.df_pooled, data.df_within)
    # Screen with a little slack, then apply the exact p <= bound, so that rounding at the threshold
    # cannot lose a pair.
    slack = 1e-9
    lo_pooled, lo_within = max(c_pooled - slack, 0.0), max(c_within - slack, 0.0)
    r_pooled = unit_pooled[rows_a] @ unit_pooled[rows_b].T
    r_within = unit_within[rows_a] @ unit_within[rows_b].T
    mask = (r_pooled >= lo_pooled) & (r_within <= -lo_within)
    mask |= (r_pooled <= -lo_pooled) & (r_within >= lo_within)
    if same:
        mask &= rows_a[:, None] < rows_b[None, :]
    ia, ib = np.nonzero(mask)
    p = reversal_p(fisher_z(r_pooled[ia, ib], data.df_pooled), fisher_z(r_within[ia, ib], data.df_within))
    keep = p <= bound
    return rows_a[ia[keep]], rows_b[ib[keep]], p[keep]


def scan_block_pair(
    data: SimpsonData,
    block_a: slice,
    block_b: slice,
    *,
    fdr: float = 0.05,
    method: str = "bh",
    within_test: str = "random_effects",
    min_batches: int = 3,
) -> pd.DataFrame:
    """Candidates of one block pair: every pair (a in block_a, b in block_b, a < b) with p <= bound.

    Parameters
    ----------
    data : SimpsonData
        From :func:`prepare`, on all genes (the bound of BY depends on M).
    block_a, block_b : slice
        Rows of ``data.genes``; the same slice (pairs inside one block) or block_a wholly before
        block_b, as :func:`block_pairs` gives them.
    fdr, method, within_test, min_batches
        As in :func:`scan`.

    Returns
    -------
    pandas.DataFrame
        ``CANDIDATE_COLUMNS``: index_a, index_b (rows of ``data.genes``), p (exact, float64).
    """
    _check_options(fdr, method, within_test, min_batches)
    n_genes = data.n_genes
    rows_a, rows_b = _rows(block_a, n_genes), _rows(block_b, n_genes)
    same = block_a.indices(n_genes) == block_b.indices(n_genes)
    if not same and rows_a.size and rows_b.size and rows_a[-1] >= rows_b[0]:
        raise ValueError("block_a must be block_b or lie wholly before it")
    bound = p_bound(n_genes * (n_genes - 1) // 2, fdr, method)
    if within_test == "random_effects":
        index_a, index_b, p = _random_effects_candidates(data, rows_a, rows_b, same, bound, min_batches)
    else:
        index_a, index_b, p = _pooled_candidates(data, rows_a, rows_b, same, bound)
    return pd.DataFrame(
        {"index_a": index_a.astype(np.int64), "index_b": index_b.astype(np.int64), "p": p.astype(np.float64)}
    )


@dataclass
class PairStatistics:
    """Descriptive statistics of given pairs (arrays of length K; ``per_batch_r`` is K x B)."""

    r_pooled: np.ndarray
    r_within: np.ndarray
    r_between: np.ndarray
    between_share: np.ndarray
    per_batch_r: np.ndarray
    usable: np.ndarray
    mu_r: np.ndarray
    tau2: np.ndarray
    i2: np.ndarray
    k_usable: np.ndarray
    n_agree: np.ndarray
    z_random_effects: np.ndarray
    p_random_effects: np.ndarray
    n_batches_within_sign: np.ndarray


def _row_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    numerator = np.einsum("ij,ij->i", a, b)
    denominator = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def pair_statistics(
    data: SimpsonData, index_a: np.ndarray, index_b: np.ndarray, *, min_batches: int = 3
) -> PairStatistics:
    """Every reported statistic of the pairs (index_a[i], index_b[i]), in float64.

    r_pooled, r_within (pooled within-batch, on [batch, C] residuals), r_between and between_share =
    S_B / S_T (from pooled minus within residuals), the per-batch r_b on [1, C_b] residuals (NaN where
    the batch is unusable for either gene), the DerSimonian-Laird summary of the usable r_b, and the
    random-effects p (1 where fewer than ``min_batches`` batches are usable).
    """
    index_a, index_b = np.asarray(index_a, np.int64), np.asarray(index_b, np.int64)
    n = index_a.size
    r_pooled, r_within, r_between, share = (np.empty(n) for _ in range(4))
    for start in range(0, n, _EXACT_CHUNK):
        sl = slice(start, start + _EXACT_CHUNK)
        a, b = index_a[sl], index_b[sl]
        pooled_a, pooled_b = data.pooled[a], data.pooled[b]
        within_a, within_b = data.within[a], data.within[b]
        r_pooled[sl] = _row_correlation(pooled_a, pooled_b)
        r_within[sl] = _row_correlation(within_a, within_b)
        # the between part of each gene is pooled - within residual (orthogonal to within)
        between_a, between_b = pooled_a - within_a, pooled_b - within_b
        r_between[sl] = _row_correlation(between_a, between_b)
        with np.errstate(invalid="ignore", divide="ignore"):
            share[sl] = np.einsum("ij,ij->i", between_a, between_b) / np.einsum("ij,ij->i", pooled_a, pooled_b)
    per_batch, usable = _per_batch_r(data, index_a, index_b)
    effects = random_effects(per_batch, usable, data.batch_weights)
    with np.errstate(invalid="ignore"):
        n_same = np.sum(usable & (np.sign(per_batch) == np.sign(r_within)[:, None]), axis=1)
    return PairStatistics(
        r_pooled=r_pooled,
        r_within=r_within,
        r_between=r_between,
        between_share=share,
        per_batch_r=per_batch,
        usable=usable,
        mu_r=np.tanh(effects.mu),
        tau2=effects.tau2,
        i2=effects.i2,
        k_usable=effects.k,
        n_agree=effects.n_agree,
        z_random_effects=effects.z,
        p_random_effects=np.where(
            effects.k >= min_batches, reversal_p(fisher_z(r_pooled, data.df_pooled), effects.z), 1.0
        ),
        n_batches_within_sign=n_same,
    )


def combine(
    data: SimpsonData,
    candidates: list[pd.DataFrame] | pd.DataFrame,
    *,
    fdr: float = 0.05,
    method: str = "bh",
    within_test: str = "random_effects",
    min_batches: int = 3,
) -> SimpsonResult:
    """BH/BY over all M pairs from the candidates of every block pair, and the reported table.

    Parameters
    ----------
    data : SimpsonData
        The data the candidates were scanned on.
    candidates : list of pandas.DataFrame or pandas.DataFrame
        :func:`scan_block_pair` results of every block pair of :func:`block_pairs` (any order).
    fdr, method, within_test, min_batches
        As in :func:`scan`.

    Returns
    -------
    SimpsonResult
    """
    _check_options(fdr, method, within_test, min_batches)
    if isinstance(candidates, pd.DataFrame):
        candidates = [candidates]
    table = pd.concat([c[CANDIDATE_COLUMNS] for c in candidates], ignore_index=True) if candidates else None
    if table is None or table.empty:
        table = pd.DataFrame({"index_a": np.zeros(0, np.int64), "index_b": np.zeros(0, np.int64), "p": np.zeros(0)})
    # a fixed order, so that the result does not depend on the order of the jobs
    table = table.sort_values(["index_a", "index_b"], kind="stable").reset_index(drop=True)
    if table.duplicated(["index_a", "index_b"]).any():
        raise ValueError("a pair appears in two block pairs: the blocks overlap")
    n_genes = data.n_genes
    n_pairs = n_genes * (n_genes - 1) // 2
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in _COLUMN_DTYPES.items()})
    if n_pairs == 0:
        return SimpsonResult(empty, n_genes, n_pairs, 0, fdr, method, data.genes_excluded, within_test, min_batches)
    factor = harmonic_number(n_pairs) if method == "by" else 1.0
    p = table["p"].to_numpy()
    q = step_up_q(p, n_pairs, factor)
    hit = q <= fdr
    index_a, index_b = table["index_a"].to_numpy()[hit], table["index_b"].to_numpy()[hit]
    p, q = p[hit], q[hit]
    stats_ = pair_statistics(data, index_a, index_b, min_batches=min_batches)
    # keep the caller's gene labels (not str()) so that they index ``expression`` again
    names = data.genes.to_numpy(dtype=object)
    labels = data.batch_labels
    compact = [";".join(f"{label}:{value:.2f}" for label, value in zip(labels, row)) for row in stats_.per_batch_r]
    reversals = pd.DataFrame(
        {
            "gene_a": names[index_a],
            "gene_b": names[index_b],
            "r_pooled": stats_.r_pooled,
            "r_within": stats_.r_within,
            "r_between": stats_.r_between,
            "between_share": stats_.between_share,
            "p": p,
            "q": q,
            "n_batches_within_sign": stats_.n_batches_within_sign,
            "per_batch_r": compact,
            "mu_r": stats_.mu_r,
            "tau2": stats_.tau2,
            "i2": stats_.i2,
            "k_usable": stats_.k_usable,
            "n_agree": stats_.n_agree,
            "_a": index_a,
            "_b": index_b,
        }
    )
    if reversals.empty:
        reversals = empty
    else:
        reversals = (
            reversals.sort_values(["p", "n_agree", "_a", "_b"], ascending=[True, False, True, True], kind="stable")
            .drop(columns=["_a", "_b"])
            .reset_index(drop=True)
        )
    reversals = reversals[REVERSAL_COLUMNS].astype(_COLUMN_DTYPES)
    return SimpsonResult(
        reversals, n_genes, n_pairs, int(len(table)), fdr, method, data.genes_excluded, within_test, min_batches
    )


def scan_data(
    data: SimpsonData,
    *,
    fdr: float = 0.05,
    method: str = "bh",
    within_test: str = "random_effects",
    min_batches: int = 3,
    block_size: int = 1024,
) -> SimpsonResult:
    """Scan all pairs of prepared data: every block pair, then :func:`combine`."""
    _check_options(fdr, method, within_test, min_batches)
    candidates = [
        scan_block_pair(data, a, b, fdr=fdr, method=method, within_test=within_test, min_batches=min_batches)
        for a, b in block_pairs(data.n_genes, block_size)
    ]
    return combine(data, candidates, fdr=fdr, method=method, within_test=within_test, min_batches=min_batches)
