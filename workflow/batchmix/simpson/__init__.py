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

Random-effects within-batch test (``within_test="random_effects"``, the default)
---------------------------------------------------------------------------------
The pooled r_W weights batches by their within-batch variance and never asks whether the direction
is consistent: one batch where both genes vary can carry a pair.  The default test instead combines
the per-batch correlations r_b (each gene regressed on [1, C_b] inside batch b) by DerSimonian-Laird
over the batches usable for both genes (w_b = n_b - rank[1, C_b] - 2 >= 1, within-batch SD >=
``min_sd``, and for count input >= 3 samples above the value of a zero count), and uses z_RE in
place of z_W in the same intersection-union p.  Pairs with fewer than ``min_batches`` usable batches
get p = 1 and still count in M.  Because p >= 2 Phi(-|z_T|), only pairs past the pooled bound need
per-batch work, and BH/BY stay exact over all M pairs.  DerSimonian-Laird is approximate with few
batches: :func:`sign_flip_replicate` checks the level on the data.  ``within_test="pooled"`` is the
test above; it does not test consistency across batches.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .calibration import (
    CALIBRATION_METHODS,
    PermutationCheck,
    calibration,
    calibration_summary,
    permutation_check,
    permutation_check_saved,
    permuted_values,
    sign_flip_data,
    sign_flip_replicate,
)
from .lurking import LurkingFactors, factor_shares, lurking_columns, lurking_factors
from .pairs import (
    CANDIDATE_COLUMNS,
    REVERSAL_COLUMNS,
    WITHIN_TESTS,
    PairStatistics,
    SimpsonResult,
    block_pairs,
    combine,
    p_bound,
    pair_statistics,
    scan_block_pair,
    scan_data,
)
from .prepare import UNITS_POOLED, UNITS_RANDOM_EFFECTS, SimpsonData, align_batch, prepare, prepare_saved
from .statistics import RandomEffects, harmonic_number, random_effects, reversal_p, step_up_q

__all__ = [
    "SimpsonResult",
    "SimpsonData",
    "PermutationCheck",
    "PairStatistics",
    "RandomEffects",
    "LurkingFactors",
    "REVERSAL_COLUMNS",
    "CANDIDATE_COLUMNS",
    "WITHIN_TESTS",
    "CALIBRATION_METHODS",
    "scan",
    "prepare",
    "prepare_saved",
    "UNITS_RANDOM_EFFECTS",
    "UNITS_POOLED",
    "scan_data",
    "block_pairs",
    "scan_block_pair",
    "combine",
    "p_bound",
    "pair_statistics",
    "random_effects",
    "reversal_p",
    "step_up_q",
    "harmonic_number",
    "align_batch",
    "calibration",
    "calibration_summary",
    "sign_flip_data",
    "sign_flip_replicate",
    "permutation_check",
    "permutation_check_saved",
    "permuted_values",
    "lurking_columns",
    "factor_shares",
    "lurking_factors",
]


def scan(
    expression: pd.DataFrame,
    batch: pd.Series,
    fdr: float = 0.05,
    method: str = "bh",
    covariates: np.ndarray | None = None,
    genes: int | None = None,
    block_size: int = 1024,
    *,
    within_test: str = "random_effects",
    min_batches: int = 3,
    min_sd: float = 0.1,
    zero_value: float | None = None,
) -> SimpsonResult:
    """Find gene pairs whose pooled and within-batch correlations are reversed.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes x samples on a variance-stabilised scale; unique gene index.
    batch : pandas.Series
        Sample id -> batch label; must cover every column of ``expression``.
    fdr : float
        Nominal false discovery rate, 0 < fdr < 1, controlled over all G(G-1)/2 pairs.
    method : {"bh", "by"}
        Benjamini-Hochberg or Benjamini-Yekutieli.
    covariates : numpy.ndarray, optional
        N x k fixed design to adjust for, without intercept, rows in the order of
        ``expression.columns``.  Pooled side: residuals on [1, C]; random-effects side: on [1, C_b]
        inside each batch; pooled within side: on [batch, C].
    genes : int, optional
        Scan only the ``genes`` most variable genes; None scans all.
    block_size : int
        Genes per block; memory is O(block_size^2 x batches) for the candidates of a block pair.
    within_test : {"random_effects", "pooled"}
        The within-batch side: DerSimonian-Laird over usable batches (consistency across batches),
        or the pooled within-batch correlation (does not test consistency).
    min_batches : int
        Usable batches a pair needs under ``random_effects``; fewer give p = 1 (still counted in M).
    min_sd : float
        Smallest within-batch residual SD of a usable (gene, batch).
    zero_value : float, optional
        Count input: the stabilised value of a zero count; a usable (gene, batch) has at least 3
        samples above it.  None for continuous input.

    Returns
    -------
    SimpsonResult
        Reversals with q <= fdr and the bookkeeping of the scan.
    """
    data = prepare(expression, batch, covariates=covariates, genes=genes, min_sd=min_sd, zero_value=zero_value)
    return scan_data(
        data, fdr=fdr, method=method, within_test=within_test, min_batches=min_batches, block_size=block_size
    )
