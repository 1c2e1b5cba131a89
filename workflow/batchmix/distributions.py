"""Tail probabilities of the t and chi-square distributions, and Benjamini-Hochberg q-values, with the
numbers of :mod:`scipy.stats`, computed from :mod:`scipy.special`.

Importing :mod:`scipy.stats` costs about 0.5 s of CPU (it formats the docstrings of a hundred
distributions). Every workflow job is a fresh interpreter, and most need only ``t.sf``,
``chi2.sf`` or ``false_discovery_control``; these functions call the same special functions that
``scipy.stats`` calls, with the same handling of the edges (infinite and missing values, invalid
degrees of freedom), so the doubles are the same (``tests/unit/test_distributions.py`` checks them
against :mod:`scipy.stats` bit for bit). :mod:`scipy.special` itself is imported on first use:
modules that import these functions (the DE's statuses, read by the summary) need not pay for it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["t_sf", "chi2_sf", "bh_adjust", "bh_qvalues"]


def _result(values: np.ndarray):
    """A 0-d result as a numpy scalar, as :mod:`scipy.stats` returns it."""
    return values[()] if values.ndim == 0 else values


def t_sf(x, df):
    """``scipy.stats.t.sf(x, df)``: P(T > x) for Student's t with ``df`` degrees of freedom.

    NaN for ``df <= 0`` or missing; 0 at ``x = inf`` and 1 at ``x = -inf``.
    """
    from scipy import special

    x, df = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(df, dtype=float))
    valid = df > 0
    out = np.where(valid, special.stdtr(np.where(valid, df, 1.0), -x), np.nan)
    out = np.where(valid & (x == -np.inf), 1.0, out)
    out = np.where(valid & (x == np.inf), 0.0, out)
    return _result(np.asarray(out, dtype=float))


def chi2_sf(x, df):
    """``scipy.stats.chi2.sf(x, df)``: P(X > x) for a chi-square with ``df`` degrees of freedom.

    NaN for ``df <= 0`` or missing; 1 at ``x <= 0``, 0 at ``x = inf``.
    """
    from scipy import special

    x, df = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(df, dtype=float))
    valid = df > 0
    out = np.where(valid, special.chdtrc(np.where(valid, df, 1.0), np.where(x > 0, x, 1.0)), np.nan)
    out = np.where(valid & (x <= 0), 1.0, out)
    out = np.where(valid & (x == np.inf), 0.0, out)
    out = np.where(np.isnan(x), np.nan, out)
    return _result(np.asarray(out, dtype=float))


def bh_adjust(p) -> np.ndarray:
    """``scipy.stats.false_discovery_control(p, method="bh")`` of a 1-d array of p-values in [0, 1].

    The p-values sorted, times m / rank, the running minimum from the largest down, back in the
    input order, clipped to [0, 1] (ties take the same value whatever their order).
    """
    p = np.asarray(p, dtype=float)
    if p.ndim != 1:
        raise ValueError("p must be one-dimensional")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("`ps` must include only numbers between 0 and 1.")
    m = p.size
    if m <= 1:
        return p
    order = np.argsort(p)
    adjusted = p[order] * (m / np.arange(1, m + 1, dtype=float))
    np.minimum.accumulate(adjusted[::-1], out=adjusted[::-1])
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return np.clip(out, 0.0, 1.0)


def bh_qvalues(p) -> np.ndarray:
    """Benjamini-Hochberg q-values of the finite entries of ``p`` (:func:`bh_adjust`); NaN stays NaN and
    is not counted among the tests."""
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = bh_adjust(p[finite])
    return q
