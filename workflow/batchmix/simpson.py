"""Simpson's-paradox co-expression reversals: gene pairs whose pooled correlation
and within-batch correlation have opposite signs, both significantly.

Definitions
-----------
For genes x, y on the stabilised scale, N samples in B batches, the pooled
cross-product splits into a within-batch and a between-batch part,

    S_T(x, y) = S_W(x, y) + S_B(x, y),
    S_T(x, y) = sum_i (x_i - xbar)(y_i - ybar),
    S_W(x, y) = sum_b sum_{i in b} (x_i - xbar_b)(y_i - ybar_b),
    S_B(x, y) = sum_b n_b (xbar_b - xbar)(ybar_b - ybar).

The pooled correlation is r_T = S_T(x,y) / sqrt(S_T(x,x) S_T(y,y)), the
within-batch (batch-adjusted, partial) correlation r_W and the between-batch
correlation r_B follow in the same way from S_W and S_B.  ``between_share`` is
S_B(x,y) / S_T(x,y): for a reversal it is always above 1, because the
within part has the opposite sign (1.4 means the between-batch covariance is
140 % of the pooled one and the within-batch part -40 %).

Covariates (``adjust_for``): each gene is residualised by least squares on
[1, C] for the pooled part and on [batch indicators, C] for the within part.
Because span[1, C] lies inside span[batch, C], S_T = S_W + S_B still holds with
S_B = x'(P_[batch,C] - P_[1,C])y, a positive semi-definite "between batches,
given the covariates" part.  Degrees of freedom are reduced by the ranks:
df_T = N - rank[1, C] - 2 and df_W = N - rank[batch, C] - 2, which without
covariates are N - 3 and N - B - 2.

Test.  With z_T = atanh(r_T) sqrt(df_T), z_W = atanh(r_W) sqrt(df_W) and Z a
standard normal, the two one-sided Fisher-z tests in the reversed directions
"pooled positive, within negative" are p_T+ = P(Z > z_T), p_W- = P(Z < z_W);
for "pooled negative, within positive" p_T- = P(Z < z_T), p_W+ = P(Z > z_W).
Each direction is an intersection-union test (both must reject, so its p-value
is the larger of the two), and a Bonferroni factor 2 covers the two directions:

    p = min(1, 2 * min(max(p_T+, p_W-), max(p_T-, p_W+))).

Pairs whose r_T and r_W have the same sign get p = 1.  The false discovery rate
is controlled over all M = G(G-1)/2 pairs by Benjamini-Hochberg (or
Benjamini-Yekutieli, with c(M) = sum_{i<=M} 1/i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats

__all__ = [
    "SimpsonResult",
    "PermutationCheck",
    "scan",
    "permutation_check",
    "plot_reversals",
    "REVERSAL_COLUMNS",
]

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
]

# A gene whose within-batch residual sum of squares is below this fraction of its
# raw sum of squares is constant inside every batch up to rounding: its r_W is 0/0.
_RELATIVE_VARIANCE_TOLERANCE = 1e-20
# Rows of the data gathered at once when finishing the reported pairs, so that
# many hits never materialise hits x samples matrices.
_HIT_CHUNK = 16384
# Largest M for which c(M) is summed term by term (as statsmodels does).
_EXACT_HARMONIC_LIMIT = 10_000_000


@dataclass
class SimpsonResult:
    """Result of :func:`scan`.

    Attributes
    ----------
    reversals : pandas.DataFrame
        One row per reversal with q <= ``fdr``; columns ``REVERSAL_COLUMNS``
        (gene_a, gene_b, r_pooled, r_within, r_between, between_share, p, q,
        n_batches_within_sign, per_batch_r), sorted by p, then gene_a, gene_b.
        gene_a precedes gene_b in the input order.
    n_genes : int
        Genes scanned.
    n_pairs : int
        G(G-1)/2, the number of tests the FDR is controlled over.
    n_candidates : int
        Pairs that passed the cheap bound p <= fdr (BH) or p <= fdr / c(M) (BY).
    fdr : float
        Nominal false discovery rate.
    method : str
        ``"bh"`` or ``"by"``.
    genes_excluded : pandas.Series
        Gene -> reason, for every input gene left out of the scan.
    """

    reversals: pd.DataFrame
    n_genes: int
    n_pairs: int
    n_candidates: int
    fdr: float
    method: str
    genes_excluded: pd.Series


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
    """

    n_permutations: int
    discoveries_observed: int
    mean_discoveries_null: float
    empirical_fdr: float
    seed: int


@dataclass
class _Prepared:
    """Residualised data of the scanned genes (internal)."""

    genes: pd.Index
    pooled: np.ndarray  # G x N residuals on [1, C]
    within: np.ndarray  # G x N residuals on [batch, C]
    df_pooled: int
    df_within: int
    batch_codes: np.ndarray  # N, integer code per sample
    batch_labels: list[str]
    genes_excluded: pd.Series


def _orthonormal_basis(design: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the column space of ``design`` (N x k), by SVD."""
    u, s, _ = np.linalg.svd(design, full_matrices=False)
    tolerance = s.max() * max(design.shape) * np.finfo(float).eps if s.size else 0.0
    return u[:, s > tolerance]


def _align_batch(expression: pd.DataFrame, batch: pd.Series) -> tuple[np.ndarray, list[str]]:
    missing = [s for s in expression.columns if s not in batch.index]
    if missing:
        raise ValueError(f"{len(missing)} samples have no batch label, e.g. {missing[:5]}")
    aligned = batch.reindex(expression.columns)
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


def _prepare(
    expression: pd.DataFrame,
    batch: pd.Series,
    covariates: np.ndarray | None,
    genes: int | None,
) -> _Prepared:
    if not expression.index.is_unique:
        dup = list(expression.index[expression.index.duplicated()][:5])
        raise ValueError(f"gene identifiers must be unique; duplicated: {dup}")
    codes, labels = _align_batch(expression, batch)
    values = expression.to_numpy(dtype=np.float64)
    n_samples = values.shape[1]
    indicators = np.zeros((n_samples, len(labels)))
    indicators[np.arange(n_samples), codes] = 1.0
    if covariates is None:
        covariate_matrix = np.zeros((n_samples, 0))
    else:
        covariate_matrix = np.asarray(covariates, dtype=np.float64)
        if covariate_matrix.ndim == 1:
            covariate_matrix = covariate_matrix[:, None]
        if covariate_matrix.shape[0] != n_samples:
            raise ValueError(
                f"covariates have {covariate_matrix.shape[0]} rows, expression has {n_samples} samples"
            )
        if not np.isfinite(covariate_matrix).all():
            raise ValueError("covariates contain non-finite values")
    basis_pooled = _orthonormal_basis(np.column_stack([np.ones(n_samples), covariate_matrix]))
    basis_within = _orthonormal_basis(np.column_stack([indicators, covariate_matrix]))
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
    clean = np.where(finite[:, None], values, 0.0)
    within = clean - (clean @ basis_within) @ basis_within.T
    ss_within = np.einsum("ij,ij->i", within, within)
    ss_raw = np.einsum("ij,ij->i", clean, clean)
    flat = finite & (ss_within <= _RELATIVE_VARIANCE_TOLERANCE * ss_raw)
    reason_flat = (
        "zero within-batch variance"
        if covariate_matrix.shape[1] == 0
        else "zero within-batch variance after covariates"
    )
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
    pooled = clean[keep] - (clean[keep] @ basis_pooled) @ basis_pooled.T
    excluded = pd.Series(
        [reasons[g] for g in expression.index if g in reasons],
        index=pd.Index([g for g in expression.index if g in reasons], name="gene"),
        name="reason",
        dtype=object,
    )
    return _Prepared(
        genes=expression.index[keep],
        pooled=pooled,
        within=np.ascontiguousarray(within[keep]),
        df_pooled=df_pooled,
        df_within=df_within,
        batch_codes=codes,
        batch_labels=labels,
        genes_excluded=excluded,
    )


def _harmonic(m: int) -> float:
    """c(M) = sum_{i=1}^{M} 1/i (Benjamini-Yekutieli)."""
    if m <= _EXACT_HARMONIC_LIMIT:
        return float(np.sum(1.0 / np.arange(1, m + 1)))
    # Euler-Maclaurin; the next term is below 1/(120 M^4)
    return math.log(m) + np.euler_gamma + 1.0 / (2 * m) - 1.0 / (12 * m * m)


def _reversal_p(r_pooled: np.ndarray, r_within: np.ndarray, df_pooled: int, df_within: int) -> np.ndarray:
    """p = min(1, 2 min(max(p_T+, p_W-), max(p_T-, p_W+))), see the module docstring."""
    z_pooled = np.arctanh(np.clip(r_pooled, -1.0, 1.0)) * math.sqrt(df_pooled)
    z_within = np.arctanh(np.clip(r_within, -1.0, 1.0)) * math.sqrt(df_within)
    # ndtr(-z) = P(Z > z), accurate in the upper tail
    positive_negative = np.maximum(special.ndtr(-z_pooled), special.ndtr(z_within))
    negative_positive = np.maximum(special.ndtr(z_pooled), special.ndtr(-z_within))
    return np.minimum(1.0, 2.0 * np.minimum(positive_negative, negative_positive))


def _correlation_thresholds(p_bound: float, df_pooled: int, df_within: int) -> tuple[float, float]:
    """|r| thresholds equivalent to p <= p_bound.

    p <= p_bound  <=>  in one direction both one-sided p-values are <= p_bound / 2
                  <=>  (r_T >= c_T and r_W <= -c_W) or (r_T <= -c_T and r_W >= c_W),
    with c = tanh(z_{1 - p_bound/2} / sqrt(df)), because each one-sided p is
    monotone in r.
    """
    z = stats.norm.isf(p_bound / 2.0)
    return math.tanh(z / math.sqrt(df_pooled)), math.tanh(z / math.sqrt(df_within))


def _normalise_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    return matrix / norms[:, None]


def _candidate_pairs(
    prepared: _Prepared, p_bound: float, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j with p <= p_bound, by blocks of the correlation matrices.

    Memory is O(block_size^2 + candidates): the G x G matrices never exist.
    """
    unit_pooled = _normalise_rows(prepared.pooled)
    unit_within = _normalise_rows(prepared.within)
    c_pooled, c_within = _correlation_thresholds(p_bound, prepared.df_pooled, prepared.df_within)
    # Screen with a little slack, then apply the exact p <= p_bound on the few
    # candidates, so rounding at the threshold cannot lose a pair.
    slack = 1e-9
    lo_pooled, lo_within = max(c_pooled - slack, 0.0), max(c_within - slack, 0.0)
    n_genes = unit_pooled.shape[0]
    found_a, found_b, found_rt, found_rw = [], [], [], []
    for start_a in range(0, n_genes, block_size):
        stop_a = min(start_a + block_size, n_genes)
        for start_b in range(start_a, n_genes, block_size):
            stop_b = min(start_b + block_size, n_genes)
            r_pooled = unit_pooled[start_a:stop_a] @ unit_pooled[start_b:stop_b].T
            r_within = unit_within[start_a:stop_a] @ unit_within[start_b:stop_b].T
            mask = (r_pooled >= lo_pooled) & (r_within <= -lo_within)
            mask |= (r_pooled <= -lo_pooled) & (r_within >= lo_within)
            if start_a == start_b:
                mask &= np.triu(np.ones(mask.shape, dtype=bool), k=1)
            ia, ib = np.nonzero(mask)
            if ia.size:
                found_rt.append(r_pooled[ia, ib])
                found_rw.append(r_within[ia, ib])
                found_a.append((ia + start_a).astype(np.int32))
                found_b.append((ib + start_b).astype(np.int32))
    if not found_a:
        empty_i, empty_r = np.zeros(0, np.int32), np.zeros(0)
        return empty_i, empty_i.copy(), empty_r, empty_r.copy()
    idx_a, idx_b = np.concatenate(found_a), np.concatenate(found_b)
    r_pooled, r_within = np.concatenate(found_rt), np.concatenate(found_rw)
    p = _reversal_p(r_pooled, r_within, prepared.df_pooled, prepared.df_within)
    keep = p <= p_bound
    return idx_a[keep], idx_b[keep], r_pooled[keep], r_within[keep]


def _step_up_q(p_candidates: np.ndarray, n_pairs: int, factor: float) -> np.ndarray:
    """Benjamini-Hochberg q-values of the candidates, exact for every q <= fdr.

    Proof that candidates suffice.  BH over all M pairs, with p sorted
    ascending, is q_(k) = min(1, min_{j >= k} factor * M p_(j) / j), factor = 1
    (BH) or c(M) (BY).  Candidates are all pairs with p <= t, t = fdr / factor.
    (i) A candidate's rank among all M pairs equals its rank among the K
    candidates, because every pair with a smaller p also has p <= t and is a
    candidate (ties at t are all kept, since the bound is p <= t).
    (ii) For j > K, p_(j) > t and j <= M, so factor * M p_(j) / j >= factor *
    p_(j) > fdr: the terms the candidates leave out all exceed fdr.
    Hence q_(k) computed over j <= K equals the exact q whenever either is
    <= fdr, and a non-candidate has q >= factor * p > fdr.
    """
    order = np.argsort(p_candidates, kind="stable")
    ranks = np.arange(1, p_candidates.size + 1, dtype=np.float64)
    raw = factor * n_pairs * p_candidates[order] / ranks
    q_sorted = np.minimum.accumulate(raw[::-1])[::-1]
    q = np.empty_like(q_sorted)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


def _row_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise sum(a b) / sqrt(sum a^2 sum b^2); NaN where a norm is zero."""
    numerator = np.einsum("ij,ij->i", a, b)
    denominator = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def _describe_hits(
    prepared: _Prepared, idx_a: np.ndarray, idx_b: np.ndarray, r_within: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """r_B, between_share, n_batches_within_sign and per_batch_r of the reported pairs."""
    n_hits = idx_a.size
    r_between = np.empty(n_hits)
    share = np.empty(n_hits)
    batch_columns = [np.flatnonzero(prepared.batch_codes == k) for k in range(len(prepared.batch_labels))]
    per_batch = np.full((n_hits, len(batch_columns)), np.nan)
    for start in range(0, n_hits, _HIT_CHUNK):
        sl = slice(start, min(start + _HIT_CHUNK, n_hits))
        pooled_a, pooled_b = prepared.pooled[idx_a[sl]], prepared.pooled[idx_b[sl]]
        within_a, within_b = prepared.within[idx_a[sl]], prepared.within[idx_b[sl]]
        # the between part of each gene is pooled - within residual (orthogonal to within)
        between_a, between_b = pooled_a - within_a, pooled_b - within_b
        r_between[sl] = _row_correlation(between_a, between_b)
        share[sl] = np.einsum("ij,ij->i", between_a, between_b) / np.einsum("ij,ij->i", pooled_a, pooled_b)
        for k, columns in enumerate(batch_columns):
            # fewer than 3 samples: a correlation of 2 centred points is always +-1
            if columns.size >= 3:
                per_batch[sl, k] = _row_correlation(within_a[:, columns], within_b[:, columns])
    with np.errstate(invalid="ignore"):
        n_same = np.sum(np.sign(per_batch) == np.sign(r_within)[:, None], axis=1)
    labels = prepared.batch_labels
    compact = [
        ";".join(f"{label}:{value:.2f}" for label, value in zip(labels, row)) for row in per_batch
    ]
    return r_between, share, n_same, compact


def scan(
    expression: pd.DataFrame,
    batch: pd.Series,
    fdr: float = 0.05,
    method: str = "bh",
    covariates: np.ndarray | None = None,
    genes: int | None = None,
    block_size: int = 2048,
) -> SimpsonResult:
    """Find gene pairs whose pooled and within-batch correlations are reversed.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes x samples on a variance-stabilised scale; unique gene index.
    batch : pandas.Series
        Sample id -> batch label; must cover every column of ``expression``.
    fdr : float
        Nominal false discovery rate, 0 < fdr < 1, controlled over all
        G(G-1)/2 pairs.
    method : {"bh", "by"}
        Benjamini-Hochberg or Benjamini-Yekutieli.
    covariates : numpy.ndarray, optional
        N x k fixed design to adjust for, without intercept, rows in the order
        of ``expression.columns`` (a DataFrame is taken as its values).  Genes are residualised on [1, C] (pooled)
        and [batch, C] (within); both dfs drop by the covariates' rank.
    genes : int, optional
        Scan only the ``genes`` most variable genes (sample variance on the
        given scale, among the genes that can be scanned); None scans all.
    block_size : int
        Genes per block of the correlation matrices; memory is
        O(block_size^2 + candidates).

    Returns
    -------
    SimpsonResult
        Reversals with q <= fdr and the bookkeeping of the scan.
    """
    if not 0.0 < fdr < 1.0:
        raise ValueError(f"fdr must be in (0, 1), got {fdr}")
    if method not in ("bh", "by"):
        raise ValueError(f"method must be 'bh' or 'by', got {method!r}")
    if block_size < 1:
        raise ValueError("block_size must be positive")
    prepared = _prepare(expression, batch, covariates, genes)
    n_genes = len(prepared.genes)
    n_pairs = n_genes * (n_genes - 1) // 2
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in _COLUMN_DTYPES.items()})
    if n_pairs == 0:
        return SimpsonResult(empty, n_genes, n_pairs, 0, fdr, method, prepared.genes_excluded)
    factor = _harmonic(n_pairs) if method == "by" else 1.0
    # BH/BY q >= factor * p, so only pairs with p <= fdr / factor can reach q <= fdr
    p_bound = fdr / factor
    idx_a, idx_b, r_pooled, r_within = _candidate_pairs(prepared, p_bound, block_size)
    n_candidates = idx_a.size
    p = _reversal_p(r_pooled, r_within, prepared.df_pooled, prepared.df_within)
    q = _step_up_q(p, n_pairs, factor)
    hit = q <= fdr
    idx_a, idx_b, r_pooled, r_within, p, q = (v[hit] for v in (idx_a, idx_b, r_pooled, r_within, p, q))
    r_between, share, n_same, compact = _describe_hits(prepared, idx_a, idx_b, r_within)
    # keep the caller's gene labels (not str()) so that they index ``expression`` again
    names = prepared.genes.to_numpy(dtype=object)
    table = pd.DataFrame(
        {
            "gene_a": names[idx_a],
            "gene_b": names[idx_b],
            "r_pooled": r_pooled,
            "r_within": r_within,
            "r_between": r_between,
            "between_share": share,
            "p": p,
            "q": q,
            "n_batches_within_sign": n_same.astype(np.int64),
            "per_batch_r": compact,
        }
    )
    if table.empty:
        table = empty
    else:
        table = table.sort_values(["p", "gene_a", "gene_b"], kind="stable").reset_index(drop=True)
    table = table.astype(_COLUMN_DTYPES)
    return SimpsonResult(table, n_genes, n_pairs, int(n_candidates), fdr, method, prepared.genes_excluded)


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
}


def permutation_check(
    expression: pd.DataFrame,
    batch: pd.Series,
    fdr: float = 0.05,
    method: str = "bh",
    covariates: np.ndarray | None = None,
    genes: int | None = None,
    n_permutations: int = 5,
    seed: int = 1,
) -> PermutationCheck:
    """Empirical false discovery rate of :func:`scan` under a within-batch null.

    Each gene's within-batch residuals are permuted inside every batch,
    independently per gene, and added back to its fitted batch (and covariate)
    part.  This keeps every gene's batch means, hence the between-batch
    structure and the pooled correlations it drives, and destroys the
    within-batch correlations, so every reversal found on permuted data is
    false.  (One permutation shared by all genes would relabel samples and
    leave every r_W unchanged: not a null.)  The empirical FDR is
    mean(V_perm) / max(R_obs, 1).

    Parameters
    ----------
    expression, batch, fdr, method, covariates, genes
        As in :func:`scan`.  The gene set is chosen once on the observed data.
    n_permutations : int
        Number of permuted data sets.
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    PermutationCheck
    """
    if n_permutations < 1:
        raise ValueError("n_permutations must be at least 1")
    observed = scan(expression, batch, fdr=fdr, method=method, covariates=covariates, genes=genes)
    prepared = _prepare(expression, batch, covariates, genes)
    values = expression.loc[prepared.genes].to_numpy(dtype=np.float64)
    fitted = values - prepared.within
    rng = np.random.default_rng(seed)
    batch_columns = [np.flatnonzero(prepared.batch_codes == k) for k in range(len(prepared.batch_labels))]
    null_counts = []
    for _ in range(n_permutations):
        permuted = prepared.within.copy()
        for columns in batch_columns:
            order = np.argsort(rng.random((permuted.shape[0], columns.size)), axis=1)
            permuted[:, columns] = np.take_along_axis(prepared.within[:, columns], order, axis=1)
        frame = pd.DataFrame(fitted + permuted, index=prepared.genes, columns=expression.columns)
        result = scan(frame, batch, fdr=fdr, method=method, covariates=covariates, genes=None)
        null_counts.append(len(result.reversals))
    mean_null = float(np.mean(null_counts))
    r_observed = len(observed.reversals)
    return PermutationCheck(
        n_permutations=n_permutations,
        discoveries_observed=r_observed,
        mean_discoveries_null=mean_null,
        empirical_fdr=mean_null / max(r_observed, 1),
        seed=seed,
    )


def plot_reversals(
    expression: pd.DataFrame, batch: pd.Series, reversals: pd.DataFrame, top: int = 4
):
    """Pooled versus per-batch view of the top reversals.

    One row per pair (the first ``top`` rows of ``reversals``): left, the pooled
    scatter with its OLS line; right, the same points coloured by batch with one
    OLS line per batch.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes x samples, the scale the scan used.
    batch : pandas.Series
        Sample id -> batch label.
    reversals : pandas.DataFrame
        ``SimpsonResult.reversals`` (gene_a, gene_b, r_pooled, r_within, q, ...).
    top : int
        Number of pairs to draw.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import seaborn as sns
    from matplotlib.figure import Figure

    if reversals.empty or top < 1:
        fig = Figure(figsize=(5.0, 1.6))
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "No Simpson's-paradox reversals found", ha="center", va="center")
        return fig
    codes, labels = _align_batch(expression, batch)
    palette = sns.color_palette("husl" if len(labels) > 10 else "tab10", len(labels))
    rows = reversals.head(top)
    fig = Figure(figsize=(10.0, 3.6 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)

    def ols_line(ax, x, y, **style):
        if x.size >= 2 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            grid = np.array([x.min(), x.max()])
            ax.plot(grid, intercept + slope * grid, **style)

    for row, pair in enumerate(rows.itertuples(index=False)):
        x = expression.loc[pair.gene_a].to_numpy(dtype=float)
        y = expression.loc[pair.gene_b].to_numpy(dtype=float)
        left, right = axes[row]
        left.scatter(x, y, s=14, color="0.35", alpha=0.8, linewidths=0)
        ols_line(left, x, y, color="black", linewidth=2)
        left.set_title(f"pooled: r = {pair.r_pooled:+.2f}", fontsize=10)
        for k, label in enumerate(labels):
            in_batch = codes == k
            right.scatter(x[in_batch], y[in_batch], s=14, color=palette[k], label=label, linewidths=0)
            ols_line(right, x[in_batch], y[in_batch], color=palette[k], linewidth=1.6)
        right.set_title(
            f"within batches: r = {pair.r_within:+.2f}, q = {pair.q:.2g}", fontsize=10
        )
        for ax in (left, right):
            ax.set_xlabel(str(pair.gene_a))
            ax.set_ylabel(str(pair.gene_b))
        if row == 0:
            right.legend(title="batch", fontsize=7, title_fontsize=8, loc="center left",
                         bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle("Simpson's-paradox reversals: pooled (left) vs within batch (right)")
    return fig
