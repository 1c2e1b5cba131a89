"""The formulas of the Simpson reversal tests, vectorised over pairs: Fisher z, the intersection-union
p-value, DerSimonian-Laird random effects, and the Benjamini-Hochberg/Yekutieli step-up."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

__all__ = [
    "RandomEffects",
    "R_CLIP",
    "fisher_z",
    "reversal_p",
    "random_effects",
    "pooled_threshold",
    "correlation_thresholds",
    "step_up_q",
    "harmonic_number",
    "norm_isf",
]

# r_b is clipped at +-(1 - 1e-7) before atanh, so that a perfect within-batch correlation (two points
# left after the covariates, or a duplicated gene) gives a large finite z instead of inf.
R_CLIP = 1.0 - 1e-7
# Largest M for which c(M) is summed term by term (as statsmodels does).
_EXACT_HARMONIC_LIMIT = 10_000_000


def fisher_z(r: np.ndarray, df: float) -> np.ndarray:
    """atanh(r) sqrt(df), with r clipped to [-1, 1]."""
    return np.arctanh(np.clip(r, -1.0, 1.0)) * math.sqrt(df)


def reversal_p(z_pooled: np.ndarray, z_within: np.ndarray) -> np.ndarray:
    """p = min(1, 2 min{max(Phi(-z_T), Phi(z_W)), max(Phi(z_T), Phi(-z_W))}).

    Each direction ("pooled positive, within negative" and the reverse) is an intersection-union
    test: both one-sided Fisher-z tests must reject, so its p-value is the larger of the two; a
    Bonferroni factor 2 covers the two directions.  ``z_within`` is the pooled within-batch z (the
    ``pooled`` test) or z_RE (the ``random_effects`` test).
    """
    # ndtr(-z) = P(Z > z), accurate in the upper tail
    positive_negative = np.maximum(special.ndtr(-z_pooled), special.ndtr(z_within))
    negative_positive = np.maximum(special.ndtr(z_pooled), special.ndtr(-z_within))
    return np.minimum(1.0, 2.0 * np.minimum(positive_negative, negative_positive))


@dataclass
class RandomEffects:
    """DerSimonian-Laird summary of the per-batch Fisher z of each pair (arrays of length K)."""

    k: np.ndarray  # usable batches
    z_bar: np.ndarray  # fixed-effect mean of z_b
    q: np.ndarray  # Cochran's Q
    tau2: np.ndarray  # between-batch variance of the true z
    mu: np.ndarray  # random-effects mean of z_b
    z: np.ndarray  # z_RE = mu sqrt(sum w*_b)
    i2: np.ndarray  # max(0, (Q - (k - 1)) / Q); 0 when k = 1 or Q = 0
    n_agree: np.ndarray  # usable batches whose r_b has the sign of mu


def random_effects(r: np.ndarray, usable: np.ndarray, weights: np.ndarray) -> RandomEffects:
    """DerSimonian-Laird random-effects meta-analysis of per-batch correlations, one row per pair.

    With U the usable batches of the pair, k = |U|, z_b = atanh(r_b) (r_b clipped at +-(1 - 1e-7))
    and weight w_b = n_b - rank[1, C_b] - 2:

        z_bar = sum w_b z_b / sum w_b,   Q = sum w_b (z_b - z_bar)^2,
        tau2 = max(0, (Q - (k - 1)) / (sum w_b - sum w_b^2 / sum w_b)),
        w*_b = 1 / (1 / w_b + tau2),    mu = sum w*_b z_b / sum w*_b,   z_RE = mu sqrt(sum w*_b).

    k = 1 gives tau2 = 0 and I2 = 0 (no heterogeneity can be estimated); k = 0 gives NaN.

    Parameters
    ----------
    r : numpy.ndarray
        K x B per-batch correlations (any value where not usable).
    usable : numpy.ndarray
        K x B bool.
    weights : numpy.ndarray
        B weights w_b (>= 1 wherever ``usable``).

    Returns
    -------
    RandomEffects
    """
    r = np.asarray(r, dtype=np.float64)
    safe_weights = np.maximum(np.asarray(weights, dtype=np.float64), 1.0)
    w = np.where(usable, safe_weights, 0.0)
    z = np.where(usable, np.arctanh(np.clip(np.where(usable, r, 0.0), -R_CLIP, R_CLIP)), 0.0)
    k = usable.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sum_w = w.sum(axis=1)
        z_bar = (w * z).sum(axis=1) / sum_w
        q = (w * (z - z_bar[:, None]) ** 2).sum(axis=1)
        denominator = sum_w - (w * w).sum(axis=1) / sum_w
        tau2 = np.where(k > 1, np.maximum(0.0, (q - (k - 1)) / np.where(k > 1, denominator, 1.0)), 0.0)
        w_star = np.where(usable, 1.0 / (1.0 / safe_weights + tau2[:, None]), 0.0)
        sum_w_star = w_star.sum(axis=1)
        mu = (w_star * z).sum(axis=1) / sum_w_star
        z_re = mu * np.sqrt(sum_w_star)
        i2 = np.where((q > 0) & (k > 1), np.maximum(0.0, (q - (k - 1)) / np.where(q > 0, q, 1.0)), 0.0)
    tau2 = np.where(k > 0, tau2, np.nan)
    i2 = np.where(k > 0, i2, np.nan)
    n_agree = (usable & (np.sign(np.where(usable, r, 0.0)) == np.sign(mu)[:, None]) & (mu != 0)[:, None]).sum(axis=1)
    return RandomEffects(k=k, z_bar=z_bar, q=q, tau2=tau2, mu=mu, z=z_re, i2=i2, n_agree=n_agree)


def norm_isf(q):
    """The standard normal's upper quantile, ``scipy.stats.norm.isf(q)``, as the same double.

    ``norm.isf`` is ``-ndtri(q)`` (scaled by 1, shifted by 0); calling :func:`scipy.special.ndtri`
    directly spares every Simpson job the import of :mod:`scipy.stats` (about 0.5 s).
    """
    return -special.ndtri(q)


def pooled_threshold(p_bound: float, df_pooled: int) -> float:
    """|r_T| threshold that every pair with p <= p_bound must reach, under either test.

    p <= p_bound needs, in one direction, max(Phi(-+z_T), ...) <= p_bound / 2, hence
    Phi(-|z_T|) <= p_bound / 2, i.e. |r_T| >= tanh(z_{1 - p_bound/2} / sqrt(df_T)).  In words: p is at
    least twice the pooled one-sided p, whatever the within-batch side.
    """
    return math.tanh(norm_isf(p_bound / 2.0) / math.sqrt(df_pooled))


def correlation_thresholds(p_bound: float, df_pooled: int, df_within: int) -> tuple[float, float]:
    """|r| thresholds of the pooled test equivalent to p <= p_bound.

    p <= p_bound  <=>  in one direction both one-sided p-values are <= p_bound / 2
                  <=>  (r_T >= c_T and r_W <= -c_W) or (r_T <= -c_T and r_W >= c_W),
    with c = tanh(z_{1 - p_bound/2} / sqrt(df)), because each one-sided p is monotone in r.
    """
    z = norm_isf(p_bound / 2.0)
    return math.tanh(z / math.sqrt(df_pooled)), math.tanh(z / math.sqrt(df_within))


def harmonic_number(m: int) -> float:
    """c(M) = sum_{i=1}^{M} 1/i, the Benjamini-Yekutieli constant."""
    if m <= _EXACT_HARMONIC_LIMIT:
        return float(np.sum(1.0 / np.arange(1, m + 1)))
    # Euler-Maclaurin; the next term is below 1/(120 M^4)
    return math.log(m) + np.euler_gamma + 1.0 / (2 * m) - 1.0 / (12 * m * m)


def step_up_q(p_candidates: np.ndarray, n_pairs: int, factor: float) -> np.ndarray:
    """Benjamini-Hochberg (factor 1) or -Yekutieli (factor c(M)) q-values of the candidates, exact
    for every q <= fdr.

    Proof that the candidates suffice.  BH over all M pairs, with p sorted ascending, is
    q_(k) = min(1, min_{j >= k} factor * M p_(j) / j).  The candidates are all pairs with p <= t,
    t = fdr / factor.  (i) A candidate's rank among all M pairs equals its rank among the K
    candidates, because every other pair has a larger p.  (ii) For j > K, p_(j) > t, so
    factor * M p_(j) / j > fdr * M / j >= fdr: the terms the candidates leave out all exceed fdr.
    Hence q_(k) computed over j <= K equals the exact q whenever either is <= fdr, and a
    non-candidate has q >= factor * p > fdr.  Pairs whose p is 1 by rule (k < min_batches) are
    non-candidates and still count in M.
    """
    order = np.argsort(p_candidates, kind="stable")
    ranks = np.arange(1, p_candidates.size + 1, dtype=np.float64)
    raw = factor * n_pairs * p_candidates[order] / ranks
    q_sorted = np.minimum.accumulate(raw[::-1])[::-1]
    q = np.empty_like(q_sorted)
    q[order] = np.minimum(q_sorted, 1.0)
    return q
