"""Residualised data of a Simpson scan: the pooled, within and per-batch residuals, and which
(gene, batch) cells the random-effects test may use.

Everything a scan of any block pair needs is computed here once, from the whole gene set, so that
block-pair jobs of the workflow see exactly the same numbers as one scan of all pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["SimpsonData", "prepare", "align_batch", "orthonormal_basis"]

logger = logging.getLogger(__name__)

# A gene whose residual sum of squares is below this fraction of its raw sum of squares is constant
# up to rounding (projection residuals of a constant are ~1e-16, not 0): its correlations are 0/0.
RELATIVE_VARIANCE_TOLERANCE = 1e-20
# Samples of a batch that must lie above the stabilised value of a zero count (count input only):
# with fewer, the within-batch correlation is driven by one or two expressed samples.
MIN_EXPRESSED_SAMPLES = 3


@dataclass
class SimpsonData:
    """Residualised values of the scanned genes (made by :func:`prepare`).

    Attributes
    ----------
    genes : pandas.Index
        Scanned genes, in input order; pair indices refer to this order.
    values : numpy.ndarray
        G x N input values of the scanned genes (float64).
    pooled : numpy.ndarray
        G x N residuals on [1, C] (the pooled side).
    within : numpy.ndarray
        G x N residuals on [batch indicators, C] (the pooled within-batch correlation r_W).
    batch_residuals : numpy.ndarray
        G x N residuals on [1, C_b] fitted inside each batch b (the random-effects side).
    usable : numpy.ndarray
        G x B bool: batch b may enter the random-effects test of gene g (w_b >= 1, within-batch SD
        >= ``min_sd``, and for count input at least 3 samples above ``zero_value``).
    batch_weights : numpy.ndarray
        B float: w_b = n_b - rank[1, C_b] - 2, the inverse variance of atanh(r_b).
    df_pooled, df_within : int
        N - rank[1, C] - 2 and N - rank[batch, C] - 2.
    batch_codes : numpy.ndarray
        N integer batch code per sample.
    batch_labels : list of str
        Batch label per code (order of first appearance, or the categorical order).
    genes_excluded : pandas.Series
        Gene -> reason, for every input gene left out.
    min_sd, zero_value
        The options the usable mask was made with.
    """

    genes: pd.Index
    values: np.ndarray
    pooled: np.ndarray
    within: np.ndarray
    batch_residuals: np.ndarray
    usable: np.ndarray
    batch_weights: np.ndarray
    df_pooled: int
    df_within: int
    batch_codes: np.ndarray
    batch_labels: list[str]
    genes_excluded: pd.Series
    min_sd: float
    zero_value: float | None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def cache(self) -> dict:
        """Derived arrays of this data (unit rows, packed masks), keyed by what they are."""
        return self._cache

    @property
    def batch_columns(self) -> list[np.ndarray]:
        """Sample positions of each batch."""
        return [np.flatnonzero(self.batch_codes == k) for k in range(len(self.batch_labels))]

    def unit_rows(self, name: str, dtype=np.float64) -> np.ndarray:
        """Rows of ``pooled`` or ``within`` scaled to unit norm (cached per dtype).

        Their inner products are the correlations r_T and r_W.
        """
        key = (name, np.dtype(dtype).str)
        if key not in self._cache:
            matrix = getattr(self, name)
            norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
            positive = norms > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                # the numbers of np.where(positive, matrix / norm, 0), without its second array
                unit = matrix / np.where(positive, norms, 1.0)[:, None]
            unit[~positive] = 0.0
            self._cache[key] = np.ascontiguousarray(unit, dtype=dtype)
        return self._cache[key]

    def unit_batch_rows(self, dtype=np.float64) -> np.ndarray:
        """Per-batch residuals scaled to unit norm inside each batch, zero where unusable (cached).

        The inner product of two genes' rows over the columns of batch b is their within-batch
        correlation r_b, and exactly 0 when b is unusable for either gene.
        """
        key = ("batch", np.dtype(dtype).str)
        if key not in self._cache:
            unit = np.zeros_like(self.batch_residuals)
            for k, columns in enumerate(self.batch_columns):
                block = self.batch_residuals[:, columns]
                norms = np.sqrt(np.einsum("ij,ij->i", block, block))
                use = self.usable[:, k]
                unit[np.ix_(use, columns)] = block[use] / norms[use, None]
            self._cache[key] = np.ascontiguousarray(unit, dtype=dtype)
        return self._cache[key]

    def unit_batch_sorted(self, dtype=np.float32) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """:meth:`unit_batch_rows` with the columns ordered batch by batch, and each batch's (start, stop).

        A batch's columns are then a contiguous slice, so its correlations are one matrix product of
        two views, without copying the columns out first (cached).  Built from the batch-sorted
        residuals directly (the same numbers as sorting :meth:`unit_batch_rows`, without its
        scattered writes); other dtypes are the float64 array cast.
        """
        key = ("batch_sorted", np.dtype(dtype).str)
        if key not in self._cache:
            order, starts = self.batch_order()
            stops = np.append(starts[1:], order.size)
            bounds = [(int(a), int(b)) for a, b in zip(starts, stops)]
            key64 = ("batch_sorted", np.dtype(np.float64).str)
            if key64 not in self._cache:
                unit = np.zeros(self.batch_residuals.shape)
                for k, (start, stop) in enumerate(bounds):
                    # the block as unit_batch_rows takes it (the same memory layout, so the same sums
                    # of squares to the bit)
                    block = self.batch_residuals[:, order[start:stop]]
                    norms = np.sqrt(np.einsum("ij,ij->i", block, block))
                    use = self.usable[:, k]
                    unit[use, start:stop] = block[use] / norms[use, None]
                self._cache[key64] = (unit, bounds)
            if key != key64:
                self._cache[key] = (np.ascontiguousarray(self._cache[key64][0], dtype=dtype), bounds)
        return self._cache[key]

    def batch_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Columns ordered batch by batch, and where each batch starts (for ``np.add.reduceat``)."""
        key = ("batch_order", "")
        if key not in self._cache:
            order = np.argsort(self.batch_codes, kind="stable")
            counts = np.bincount(self.batch_codes, minlength=len(self.batch_labels))
            self._cache[key] = (order, np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64))
        return self._cache[key]

    def with_batch_residuals(self, batch_residuals: np.ndarray) -> "SimpsonData":
        """The same genes and usable mask with other per-batch residuals (values rebuilt from them).

        Used by the sign-flip calibration: the batch fits stay, the residuals are reflected, and the
        pooled and within residuals are recomputed from the new values.
        """
        fitted = self.values - self.batch_residuals
        values = fitted + batch_residuals
        pooled = values - self._project("pooled", values)
        within = values - self._project("within", values)
        return SimpsonData(
            genes=self.genes,
            values=values,
            pooled=pooled,
            within=within,
            batch_residuals=batch_residuals,
            usable=self.usable,
            batch_weights=self.batch_weights,
            df_pooled=self.df_pooled,
            df_within=self.df_within,
            batch_codes=self.batch_codes,
            batch_labels=self.batch_labels,
            genes_excluded=self.genes_excluded,
            min_sd=self.min_sd,
            zero_value=self.zero_value,
            _cache={k: v for k, v in self._cache.items() if k[0] == "basis"},
        )

    def _project(self, which: str, values: np.ndarray) -> np.ndarray:
        basis = self._cache[("basis", which)]
        return (values @ basis) @ basis.T


def _residual(values: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``values - (values @ basis) @ basis.T``, subtracted into the buffer of the projection (one array)."""
    out = (values @ basis) @ basis.T
    np.subtract(values, out, out=out)
    return out


def orthonormal_basis(design: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the column space of ``design`` (N x k), by SVD."""
    if design.shape[1] == 0:
        return np.zeros((design.shape[0], 0))
    u, s, _ = np.linalg.svd(design, full_matrices=False)
    tolerance = s.max() * max(design.shape) * np.finfo(float).eps if s.size else 0.0
    return u[:, s > tolerance]


def align_batch(columns: pd.Index, batch: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Integer batch code per column and the labels, in the order of first appearance.

    A categorical ``batch`` keeps its category order (unused categories dropped).
    """
    missing = [s for s in columns if s not in batch.index]
    if missing:
        raise ValueError(f"{len(missing)} samples have no batch label, e.g. {missing[:5]}")
    aligned = batch.reindex(columns)
    if aligned.isna().any():
        bad = list(aligned.index[aligned.isna()][:5])
        raise ValueError(f"batch label is missing (NaN) for samples {bad}")
    if isinstance(aligned.dtype, pd.CategoricalDtype):
        aligned = aligned.cat.remove_unused_categories()
        codes = aligned.cat.codes.to_numpy()
        labels = [str(c) for c in aligned.cat.categories]
    else:
        # order of first appearance: deterministic and follows the sample sheet
        codes, uniques = pd.factorize(aligned, sort=False)
        labels = [str(u) for u in uniques]
    return np.asarray(codes, dtype=np.int64), labels


def _covariate_matrix(covariates, n_samples: int) -> np.ndarray:
    if covariates is None:
        return np.zeros((n_samples, 0))
    matrix = np.asarray(covariates, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.shape[0] != n_samples:
        raise ValueError(f"covariates have {matrix.shape[0]} rows, expression has {n_samples} samples")
    if not np.isfinite(matrix).all():
        raise ValueError("covariates contain non-finite values")
    return matrix


def prepare(
    expression: pd.DataFrame,
    batch: pd.Series,
    *,
    covariates: np.ndarray | None = None,
    genes: int | None = None,
    min_sd: float = 0.1,
    zero_value: float | None = None,
) -> SimpsonData:
    """Residualise the genes once for every scan of their pairs.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes x samples on a variance-stabilised scale; unique gene index.
    batch : pandas.Series
        Sample id -> batch label; must cover every column of ``expression``.
    covariates : numpy.ndarray, optional
        N x k fixed design without intercept, rows in the order of ``expression.columns``.
    genes : int, optional
        Keep only the ``genes`` most variable genes (sample variance, among scannable genes).
    min_sd : float
        A (gene, batch) is usable by the random-effects test only when the gene's residual SD inside
        the batch, sqrt(RSS_b / (n_b - rank[1, C_b])), is at least this (0.1 on the VST scale).
    zero_value : float, optional
        For count input: the stabilised value of a zero count.  A (gene, batch) is then usable only
        when at least 3 samples of the batch lie above it.  None (continuous input) skips this rule.

    Returns
    -------
    SimpsonData
    """
    if not expression.index.is_unique:
        dup = list(expression.index[expression.index.duplicated()][:5])
        raise ValueError(f"gene identifiers must be unique; duplicated: {dup}")
    if min_sd < 0:
        raise ValueError(f"min_sd must be >= 0, got {min_sd}")
    codes, labels = align_batch(expression.columns, batch)
    values = expression.to_numpy(dtype=np.float64)
    n_samples = values.shape[1]
    indicators = np.zeros((n_samples, len(labels)))
    indicators[np.arange(n_samples), codes] = 1.0
    covariate_matrix = _covariate_matrix(covariates, n_samples)
    basis_pooled = orthonormal_basis(np.column_stack([np.ones(n_samples), covariate_matrix]))
    basis_within = orthonormal_basis(np.column_stack([indicators, covariate_matrix]))
    df_pooled = n_samples - basis_pooled.shape[1] - 2
    df_within = n_samples - basis_within.shape[1] - 2
    if df_within < 1:
        raise ValueError(
            f"too few samples: N={n_samples}, rank[batch, covariates]={basis_within.shape[1]} "
            "leaves no degrees of freedom for the within-batch correlation"
        )

    reasons: dict[object, str] = {}
    finite = np.isfinite(values).all(axis=1)
    for gene in expression.index[~finite]:
        reasons[gene] = "missing or non-finite values"
    # Fresh memory is the main cost here (each new page is faulted in): no copy where nothing is
    # missing, and the residuals subtracted into the projections' buffers. The layouts are those of
    # the plain expressions (np.where keeps the table's column-major order), so every sum and product
    # runs in the same order and gives the same doubles.
    clean = values if finite.all() else np.where(finite[:, None], values, 0.0)
    within = _residual(clean, basis_within)
    ss_within = np.einsum("ij,ij->i", within, within)
    ss_raw = np.einsum("ij,ij->i", clean, clean)
    flat = finite & (ss_within <= RELATIVE_VARIANCE_TOLERANCE * ss_raw)
    reason_flat = "zero within-batch variance" + ("" if covariate_matrix.shape[1] == 0 else " after covariates")
    for gene in expression.index[flat]:
        reasons[gene] = reason_flat
    valid = finite & ~flat
    if genes is not None:
        if genes < 2:
            raise ValueError("genes must be at least 2 (or None for all genes)")
        valid_idx = np.flatnonzero(valid)
        if valid_idx.size > genes:
            variance = np.var(clean[valid_idx], axis=1, ddof=1)
            # stable sort: ties in variance keep the input order
            order = np.argsort(-variance, kind="stable")
            dropped = np.sort(valid_idx[order[genes:]])
            for gene in expression.index[dropped]:
                reasons[gene] = f"not among the top {genes} most variable genes"
            valid[dropped] = False
    keep = np.flatnonzero(valid)
    kept = clean[keep]
    pooled = _residual(kept, basis_pooled)

    # The random-effects side: each gene regressed on [1, C_b] inside each batch b.
    batch_residuals = np.zeros_like(kept)
    n_batches = len(labels)
    usable = np.zeros((keep.size, n_batches), dtype=bool)
    weights = np.zeros(n_batches)
    for k in range(n_batches):
        columns = np.flatnonzero(codes == k)
        basis = orthonormal_basis(np.column_stack([np.ones(columns.size), covariate_matrix[columns]]))
        rank = basis.shape[1]
        weights[k] = columns.size - rank - 2
        block = kept[:, columns]
        residual = block - (block @ basis) @ basis.T
        batch_residuals[:, columns] = residual
        if weights[k] < 1:
            continue
        rss = np.einsum("ij,ij->i", residual, residual)
        raw = np.einsum("ij,ij->i", block, block)
        sd = np.sqrt(rss / (columns.size - rank))
        ok = (sd >= min_sd) & (rss > RELATIVE_VARIANCE_TOLERANCE * raw)
        if zero_value is not None:
            # a little above the zero value, so that rounding of the VST cannot count a zero as expressed
            above = block > zero_value + 1e-9 * max(1.0, abs(zero_value))
            ok &= above.sum(axis=1) >= MIN_EXPRESSED_SAMPLES
        usable[:, k] = ok
    logger.info(
        "simpson: %d genes, %d batches with w_b >= 1; %.1f%% of (gene, batch) cells usable",
        keep.size,
        int((weights >= 1).sum()),
        100.0 * usable.mean() if usable.size else 0.0,
    )
    excluded = pd.Series(
        [reasons[g] for g in expression.index if g in reasons],
        index=pd.Index([g for g in expression.index if g in reasons], name="gene"),
        name="reason",
        dtype=object,
    )
    data = SimpsonData(
        genes=expression.index[keep],
        values=kept,
        pooled=pooled,
        within=within if keep.size == within.shape[0] else np.ascontiguousarray(within[keep]),
        batch_residuals=batch_residuals,
        usable=usable,
        batch_weights=weights,
        df_pooled=df_pooled,
        df_within=df_within,
        batch_codes=codes,
        batch_labels=labels,
        genes_excluded=excluded,
        min_sd=float(min_sd),
        zero_value=None if zero_value is None else float(zero_value),
    )
    data._cache[("basis", "pooled")] = basis_pooled
    data._cache[("basis", "within")] = basis_within
    return data
