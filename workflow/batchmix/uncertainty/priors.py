"""Priors on the variance ratio λ = σ_b²/σ² of a one-variance-component model (used by the grid posterior)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PRIORS", "log_prior_lambda"]

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
