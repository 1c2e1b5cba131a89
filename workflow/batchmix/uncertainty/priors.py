"""Priors: on the variance ratio λ = σ_b²/σ² (grid posterior) and brms 2.18's defaults (importance sampling)."""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "BRMS_DEFAULT",
    "PRIORS",
    "brms_default_location_scale",
    "log_half_student_t",
    "log_prior_lambda",
    "log_student_t",
    "r_mad",
    "r_round",
]

PRIORS = ("unif_icc", "half_cauchy")


def log_prior_lambda(t: np.ndarray, prior: str = "unif_icc", scale: float = 1.0) -> np.ndarray:
    """Log prior density of the variance ratio λ = σ_b²/σ², as a density in λ, at λ = exp(t).

    Parameters
    ----------
    t : numpy.ndarray
        ``log λ``.
    prior : {"unif_icc", "half_cauchy"}
        ``"unif_icc"``: ``p(λ) = (1+λ)⁻²`` (ICC uniform on (0, 1)). ``"half_cauchy"``:
        σ_b/σ ~ half-Cauchy(0, ``scale``), ``p(λ) = 1/(π s √λ (1 + λ/s²))``.
    scale : float
        Scale ``s`` of the half-Cauchy prior on σ_b/σ (ignored for ``"unif_icc"``).

    Returns
    -------
    numpy.ndarray
        ``log p(λ)`` (normalised: both priors are proper). Add ``t`` for the density of ``log λ``.
    """
    t = np.asarray(t, dtype=float)
    if prior == "unif_icc":
        return -2.0 * np.logaddexp(0.0, t)
    if prior == "half_cauchy":
        if not scale > 0:
            raise ValueError(f"half_cauchy prior scale must be > 0, got {scale}")
        return -math.log(math.pi * scale) - 0.5 * t - np.logaddexp(0.0, t - 2.0 * math.log(scale))
    raise ValueError(f"unknown prior {prior!r}; choose one of {PRIORS}")


# ----------------------------------------------------------------------------------------------
# brms 2.18's default priors of a Gaussian model (R/priors.R: def_dprior, def_scale_prior)
# ----------------------------------------------------------------------------------------------

#: The multi-parameter priors of the importance-sampling posterior (see :mod:`.multicomp`).
BRMS_DEFAULT = "brms_default"


def r_round(x: float, digits: int = 1) -> float:
    """R's ``round(x, digits)`` (R ≥ 4.0.0): the closer of the two ``digits``-decimal neighbours of x.

    R 4's algorithm picks, among the two decimal candidates bracketing ``x``, the one nearer
    to ``x`` as a double; an exact tie goes to the even last digit (IEC 60559).
    """
    if not np.isfinite(x):
        return float(x)
    scale = 10.0**digits
    lo = math.floor(x * scale) / scale
    hi = math.ceil(x * scale) / scale
    d_lo, d_hi = abs(x - lo), abs(hi - x)
    if d_lo < d_hi:
        return lo
    if d_hi < d_lo:
        return hi
    return lo if round(lo * scale) % 2 == 0 else hi


def r_mad(y: np.ndarray) -> float:
    """R's ``mad(y)``: ``1.4826 · median(|y − median(y)|)``."""
    y = np.asarray(y, dtype=float)
    return float(1.4826 * np.median(np.abs(y - np.median(y))))


def brms_default_location_scale(y: np.ndarray) -> tuple[float, float]:
    """Location and scale of brms 2.18's default priors for a Gaussian response ``y``.

    brms's ``def_scale_prior(x, data, center = FALSE)`` (the intercept, identity link):
    ``location = round(median(y), 1)``, ``scale = max(2.5, round(mad(y), 1))``. The SD and σ
    priors use the same scale with location 0 (``center = TRUE``).

    Returns
    -------
    (location, scale)
    """
    y = np.asarray(y, dtype=float)
    scale = 2.5
    scale_y = r_round(r_mad(y), 1)
    if np.isfinite(scale_y):
        scale = max(scale, scale_y)
    location = r_round(float(np.median(y)), 1)
    if not np.isfinite(location):
        location = 0.0
    return location, scale


def log_student_t(x: np.ndarray, df: float, location, scale) -> np.ndarray:
    """Log density of Student-t(df, location, scale) (Stan's ``student_t_lpdf``), broadcasting."""
    z = (np.asarray(x, dtype=float) - location) / scale
    return (
        math.lgamma((df + 1) / 2)
        - math.lgamma(df / 2)
        - 0.5 * math.log(df * math.pi)
        - np.log(scale)
        - (df + 1) / 2 * np.log1p(z * z / df)
    )


def log_half_student_t(x: np.ndarray, df: float, scale) -> np.ndarray:
    """Log density of the half-Student-t(df, 0, scale) on x > 0 (Stan's truncation at 0: + log 2)."""
    return math.log(2.0) + log_student_t(x, df, 0.0, scale)
