"""limma-style empirical-Bayes moderation of per-gene residual variances.

With few samples per gene, a gene's residual variance is a noisy estimate
and a t-statistic built on it is unstable.  limma (Smyth 2004) models the
true variances as draws from a scaled inverse chi-square prior
``s0^2 * d0 / chi2(d0)`` whose two parameters are estimated from all genes
at once; each gene's posterior variance

    var_post = (d * s^2 + d0 * s0^2) / (d + d0)

then has ``d + d0`` degrees of freedom.  This module ports

* ``limma::fitFDist`` and ``limma::squeezeVar`` (:func:`squeeze_var`),
  including the trended prior (``covariate``, a natural cubic spline in the
  covariate) and the robust fit ``fitFDistRobustly`` (``robust=True``,
  without covariate), and
* ``limma::eBayes``' moderated t-statistics, applied to the residual
  variances of the per-gene linear mixed models (:func:`moderate_gene_fits`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special

from batchmix.distributions import t_sf

__all__ = ["SqueezeResult", "squeeze_var", "fit_f_dist", "moderate_gene_fits", "trigamma_inverse"]


@dataclass
class SqueezeResult:
    """Result of :func:`squeeze_var`.

    Attributes
    ----------
    var_post : numpy.ndarray
        Posterior (moderated) variances, one per gene.
    df_prior : float or numpy.ndarray
        Prior degrees of freedom ``d0`` (per gene with ``robust=True``).
    var_prior : float or numpy.ndarray
        Prior variance ``s0^2`` (per gene with a covariate).
    """

    var_post: np.ndarray
    df_prior: float | np.ndarray
    var_prior: float | np.ndarray


def trigamma_inverse(x: np.ndarray) -> np.ndarray:
    """Solve ``trigamma(y) = x`` for y (``limma::trigammaInverse``)."""
    x = np.atleast_1d(np.asarray(x, dtype=float)).copy()
    y = np.full(x.shape, np.nan)
    ok = np.isfinite(x) & (x >= 0)
    big = ok & (x > 1e7)
    small = ok & (x < 1e-6)
    mid = ok & ~big & ~small
    y[big] = 1.0 / np.sqrt(x[big])
    y[small] = 1.0 / x[small]
    if np.any(mid):
        xm = x[mid]
        ym = 0.5 + 1.0 / xm
        for _ in range(50):
            tri = special.polygamma(1, ym)
            dif = tri * (1 - tri / xm) / special.polygamma(2, ym)
            ym = ym + dif
            if np.max(-dif / ym) < 1e-8:
                break
        y[mid] = ym
    return y


def _natural_spline_basis(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """A basis of the natural cubic splines with the given knots.

    Spans the same space as R's ``splines::ns(x, knots = interior,
    Boundary.knots = range, intercept = TRUE)`` (so least-squares fits and
    their residuals are identical), including the linear continuation
    beyond the boundary knots.  Truncated-power form (Hastie, Tibshirani &
    Friedman, eq. 5.4-5.5) on a covariate rescaled to [0, 1] for conditioning.
    """
    lo, hi = knots[0], knots[-1]
    scale = hi - lo if hi > lo else 1.0
    t = (x - lo) / scale
    k = (knots - lo) / scale
    kk = len(k)
    cols = [np.ones_like(t), t]

    def d(j):
        return (np.maximum(t - k[j], 0) ** 3 - np.maximum(t - k[-1], 0) ** 3) / (k[-1] - k[j])

    dlast = d(kk - 2)
    for j in range(kk - 2):
        cols.append(d(j) - dlast)
    return np.column_stack(cols)


def fit_f_dist(
    x: np.ndarray, df1: np.ndarray | float, covariate: np.ndarray | None = None
) -> tuple[float | np.ndarray, float]:
    """Moment estimation of a scaled F distribution (``limma::fitFDist``).

    Parameters
    ----------
    x : numpy.ndarray
        Sample variances.
    df1 : float or numpy.ndarray
        Their degrees of freedom.
    covariate : numpy.ndarray, optional
        If given, the scale depends smoothly on it (natural spline with up to
        4 degrees of freedom, as limma).

    Returns
    -------
    scale : float or numpy.ndarray
        Prior variance ``s0^2`` (per element with a covariate).
    df2 : float
        Prior degrees of freedom ``d0`` (may be ``inf``).
    """
    x = np.asarray(x, dtype=float)
    n = x.size
    if n == 0:
        return np.nan, np.nan
    if n == 1:
        return float(x[0]), 0.0
    scalar_df = np.ndim(df1) == 0
    df1a = np.broadcast_to(np.asarray(df1, dtype=float), x.shape)
    ok = np.isfinite(df1a) & (df1a > 1e-15)
    if scalar_df and not ok[0]:
        return np.nan, np.nan
    cov = None
    if covariate is not None:
        cov = np.asarray(covariate, dtype=float).copy()
        if cov.shape != x.shape:
            raise ValueError("x and covariate must be of same length")
        if np.any(np.isnan(cov)):
            raise ValueError("NA covariate values not allowed")
        isfin = np.isfinite(cov)
        if not np.all(isfin):
            if np.any(isfin):
                lo, hi = cov[isfin].min(), cov[isfin].max()
                cov[cov == -np.inf] = lo - 1
                cov[cov == np.inf] = hi + 1
            else:
                cov = np.sign(cov)
    ok = ok & np.isfinite(x) & (x > -1e-15)
    nok = int(ok.sum())
    if nok == 1:
        return float(x[ok][0]), 0.0
    notallok = nok < n
    cov_notok = None
    if notallok:
        x = x[ok]
        df1a = df1a[ok]
        if cov is not None:
            cov_notok = cov[~ok]
            cov = cov[ok]
    if cov is not None:
        splinedf = 1 + (nok >= 3) + (nok >= 6) + (nok >= 30)
        splinedf = min(splinedf, len(np.unique(cov)))
        if splinedf < 2:
            scale, df2 = fit_f_dist(x, df1a if not scalar_df else float(df1a[0]))
            return np.full(n, scale), df2
    x = np.maximum(x, 0.0)
    m = float(np.median(x))
    if m == 0:
        m = 1.0
    x = np.maximum(x, 1e-5 * m)
    z = np.log(x)
    e = z - special.digamma(df1a / 2) + np.log(df1a / 2)
    if cov is None:
        emean = float(np.mean(e))
        evar = float(np.sum((e - emean) ** 2) / (nok - 1))
    else:
        n_interior = splinedf - 2
        probs = np.linspace(0, 1, n_interior + 2)[1:-1]
        knots = np.concatenate([[cov.min()], np.quantile(cov, probs), [cov.max()]])
        knots = np.unique(knots)
        basis = _natural_spline_basis(cov, knots)
        coef, _, rank, _ = np.linalg.lstsq(basis, e, rcond=None)
        fitted = basis @ coef
        evar = float(np.sum((e - fitted) ** 2) / (nok - rank))
        if notallok:
            emean = np.zeros(n)
            emean[ok] = fitted
            emean[~ok] = _natural_spline_basis(cov_notok, knots) @ coef
        else:
            emean = fitted
    evar = evar - float(np.mean(special.polygamma(1, df1a / 2)))
    if evar > 0:
        df2 = float(2 * trigamma_inverse(evar)[0])
        s20 = np.exp(emean + special.digamma(df2 / 2) - math.log(df2 / 2))
    else:
        df2 = math.inf
        s20 = float(np.mean(x)) if cov is None else np.exp(emean)
    if np.ndim(s20) == 0:
        s20 = float(s20)
    return s20, df2


def _trimmed_mean(x: np.ndarray, trim: float) -> float:
    """R's ``mean(x, trim = trim)`` for 0 <= trim < 0.5."""
    # scipy.stats.trim_mean keeps the same values but sums them in np.partition's order, which changes
    # the last bits (tested on random data: most results differ by an ulp), so R's sorted order is kept
    xs = np.sort(x)
    lo = int(math.floor(len(xs) * trim))
    return float(np.mean(xs[lo : len(xs) - lo]))


def _qf(p, df1, df2, lower):
    from scipy import stats  # the robust fit only: see _fit_f_dist_robustly

    if math.isinf(df2):
        return (stats.chi2.ppf(p, df1) if lower else stats.chi2.isf(p, df1)) / df1
    return stats.f.ppf(p, df1, df2) if lower else stats.f.isf(p, df1, df2)


def _pf_log(f, df1, df2, lower):
    from scipy import stats  # the robust fit only: see _fit_f_dist_robustly

    if math.isinf(df2):
        return stats.chi2.logcdf(f * df1, df1) if lower else stats.chi2.logsf(f * df1, df1)
    return stats.f.logcdf(f, df1, df2) if lower else stats.f.logsf(f, df1, df2)


def _df_density(x, df1, df2):
    from scipy import stats  # the robust fit only: see _fit_f_dist_robustly

    if math.isinf(df2):
        return df1 * stats.chi2.pdf(df1 * x, df1)
    return stats.f.pdf(x, df1, df2)


_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(128)
_GAUSS_NODES = (_GAUSS_NODES + 1) / 2  # statmod::gauss.quad.prob(128, "uniform")
_GAUSS_WEIGHTS = _GAUSS_WEIGHTS / 2


def _winsorized_moments(df1, df2, tail_p):
    fq = np.array([_qf(tail_p[0], df1, df2, True), _qf(1 - tail_p[1], df1, df2, True)])
    zq = np.log(fq)
    q = fq / (1 + fq)
    nodes = q[0] + (q[1] - q[0]) * _GAUSS_NODES
    fnodes = nodes / (1 - nodes)
    znodes = np.log(fnodes)
    f = _df_density(fnodes, df1, df2) / (1 - nodes) ** 2
    q21 = q[1] - q[0]
    tp = np.asarray(tail_p)
    m = q21 * np.sum(_GAUSS_WEIGHTS * f * znodes) + np.sum(zq * tp)
    v = q21 * np.sum(_GAUSS_WEIGHTS * f * (znodes - m) ** 2) + np.sum((zq - m) ** 2 * tp)
    return m, v


def _fit_f_dist_robustly(x, df1, winsor_tail_p=(0.05, 0.1)):
    """``limma::fitFDistRobustly`` without covariate: (scale, df2, df2_shrunk)."""
    # scipy.stats and scipy.optimize are imported here, for the robust fit only: the import of
    # scipy.stats costs every job that moderates variances about 0.5 s, and the default fit needs
    # neither
    from scipy import stats
    from scipy.optimize import brentq

    x = np.asarray(x, dtype=float).copy()
    n = x.size
    if n < 2:
        return np.nan, np.nan, np.full(n, np.nan)
    if n == 2:
        s, d = fit_f_dist(x, df1)
        return s, d, np.full(n, d)
    df1a = np.broadcast_to(np.asarray(df1, dtype=float), x.shape).copy()
    ok = ~np.isnan(x) & np.isfinite(df1a) & (df1a > 1e-6)
    if not np.all(ok):
        scale, df2, shrunk_ok = _fit_f_dist_robustly(x[ok], df1a[ok], winsor_tail_p)
        shrunk = np.empty(n)
        shrunk[ok] = shrunk_ok
        shrunk[~ok] = df2
        return scale, df2, shrunk
    m = float(np.median(x))
    if m <= 0:
        raise ValueError("variances are mostly <= 0")
    x[x < m * 1e-12] = m * 1e-12
    nr_scale, nr_df2 = fit_f_dist(x, df1a if np.ndim(df1) else float(df1))
    tail_p = np.array(winsor_tail_p, dtype=float)
    prob = np.array([tail_p[0], 1 - tail_p[1]])
    if np.all(tail_p < 1 / n):
        return nr_scale, nr_df2, np.full(n, nr_df2)
    if np.ndim(df1) > 0:
        df1max = float(np.max(df1a))
        i = df1a < (df1max - 1e-14)
        if np.any(i):
            f = x[i] / nr_scale
            pupper = _pf_log(f, df1a[i], nr_df2, lower=False)
            plower = _pf_log(f, df1a[i], nr_df2, lower=True)
            up = pupper < plower
            fnew = np.empty_like(f)
            fnew[up] = _qf(np.exp(pupper[up]), df1max, nr_df2, lower=False)
            fnew[~up] = _qf(np.exp(plower[~up]), df1max, nr_df2, lower=True)
            x[i] = fnew * nr_scale
        d1 = df1max
    else:
        d1 = float(df1)
    z = np.log(x)
    ztrend = _trimmed_mean(z, tail_p[1])
    zresid = z - ztrend
    zrq = np.quantile(zresid, prob)
    zwins = np.clip(zresid, zrq[0], zrq[1])
    zwmean = float(np.mean(zwins))
    zwvar = float(np.mean((zwins - zwmean) ** 2) * n / (n - 1))

    mom_m, mom_v = _winsorized_moments(d1, math.inf, tail_p)
    funval_inf = math.log(zwvar / mom_v)
    if funval_inf <= 0:
        s20 = math.exp(ztrend + zwmean - mom_m)
        fstat = np.exp(z - (ztrend + zwmean - mom_m))
        tail = stats.chi2.sf(fstat * d1, d1)
        r = stats.rankdata(fstat)
        emp = (n - r + 0.5) / n
        not_out = np.minimum(tail / emp, 1.0)
        shrunk = np.full(n, math.inf)
        out = not_out < 1
        if np.any(out):
            shrunk[out] = not_out[out] * n * d1
            o = np.argsort(tail, kind="stable")
            shrunk[o] = np.maximum.accumulate(shrunk[o])
        return s20, math.inf, shrunk

    def fun(u):
        d2 = math.inf if u >= 1 else u / (1 - u)
        _, v = _winsorized_moments(d1, d2, tail_p)
        return math.log(zwvar / v)

    if math.isinf(nr_df2):
        return nr_scale, nr_df2, np.full(n, nr_df2)
    rbx = nr_df2 / (1 + nr_df2)
    funval_low = fun(rbx)
    if funval_low >= 0:
        df2 = nr_df2
    else:
        # limma: uniroot on (rbx, 1) with f(1) = the value at df2 = Inf, tol 1e-8;
        # a tighter tolerance here keeps the difference to limma within its own
        root = brentq(fun, rbx, 1.0, xtol=1e-12, rtol=4 * np.finfo(float).eps)
        df2 = root / (1 - root)
    mom_m, _ = _winsorized_moments(d1, df2, tail_p)
    ztc = ztrend + zwmean - mom_m
    s20 = math.exp(ztc)
    fstat = np.exp(z - ztc)
    log_tail = stats.f.logsf(fstat, d1, df2)
    r = stats.rankdata(fstat)
    log_emp = np.log(n - r + 0.5) - math.log(n)
    log_not_out = np.minimum(log_tail - log_emp, 0.0)
    p_not = np.exp(log_not_out)
    p_out = -np.expm1(log_not_out)
    if np.any(log_not_out < 0):
        min_log_tail = float(np.min(log_tail))
        if min_log_tail == -math.inf:
            shrunk = p_not * df2
        else:
            df2_out = math.log(0.5) / min_log_tail * df2
            new_log_tail = float(stats.f.logsf(np.max(fstat), d1, df2_out))
            df2_out = math.log(0.5) / new_log_tail * df2_out
            shrunk = p_not * df2 + p_out * df2_out
        o = np.argsort(log_tail, kind="stable")
        ordered = shrunk[o]
        mm = np.cumsum(ordered) / np.arange(1, n + 1)
        imin = int(np.argmin(mm))
        ordered[: imin + 1] = mm[imin]
        shrunk[o] = np.maximum.accumulate(ordered)
    else:
        shrunk = np.full(n, df2)
    return s20, df2, shrunk


def _posterior_var(var, df, var_prior, df_prior):
    df_prior = np.asarray(df_prior, dtype=float)
    var_prior_b = np.broadcast_to(np.asarray(var_prior, dtype=float), var.shape)
    df_b = np.broadcast_to(np.asarray(df, dtype=float), var.shape)
    dp = np.broadcast_to(df_prior, var.shape)
    fin = np.isfinite(dp)
    out = np.array(var_prior_b, dtype=float, copy=True)
    out[fin] = (df_b[fin] * var[fin] + dp[fin] * var_prior_b[fin]) / (df_b[fin] + dp[fin])
    return out


def squeeze_var(
    var: np.ndarray,
    df: np.ndarray | float,
    covariate: np.ndarray | None = None,
    robust: bool = False,
) -> SqueezeResult:
    """Empirical-Bayes posterior variances, as ``limma::squeezeVar``.

    Parameters
    ----------
    var : numpy.ndarray
        Sample variances of the genes.
    df : float or numpy.ndarray
        Their residual degrees of freedom.
    covariate : numpy.ndarray, optional
        E.g. the mean expression: the prior variance is then a smooth
        function of it (limma's ``trend``).
    robust : bool
        Robust estimation of the prior (``fitFDistRobustly``), giving a
        per-gene prior df that is smaller for outlier variances.  Not
        implemented together with ``covariate``.

    Returns
    -------
    SqueezeResult
    """
    var = np.asarray(var, dtype=float).copy()
    n = var.size
    if n == 0:
        raise ValueError("var is empty")
    if n == 1:
        return SqueezeResult(var_post=var, df_prior=0.0, var_prior=float(var[0]))
    if np.ndim(df) > 0:
        dfa = np.asarray(df, dtype=float)
        if dfa.shape != var.shape:
            raise ValueError("var and df have different lengths")
        var[dfa == 0] = 0.0
        df_arg = dfa
    else:
        df_arg = float(df)
    if robust:
        if covariate is not None:
            raise NotImplementedError("robust=True with a covariate (limma's loessFit trend) is not implemented")
        scale, _, df_prior = _fit_f_dist_robustly(var, df_arg)
    else:
        scale, df_prior = fit_f_dist(var, df_arg, covariate)
    if np.any(np.isnan(np.atleast_1d(df_prior))):
        raise ValueError("could not estimate the prior degrees of freedom")
    var_post = _posterior_var(var, df_arg, scale, df_prior)
    return SqueezeResult(var_post=var_post, df_prior=df_prior, var_prior=scale)


def moderate_gene_fits(
    gene_fits: pd.DataFrame,
    trend: bool = False,
    mean_expression: pd.Series | None = None,
    robust: bool = False,
) -> pd.DataFrame:
    """Add limma-style moderated standard errors, t and p to per-gene fits.

    The residual variances of the per-gene models are squeezed towards a
    common prior (:func:`squeeze_var`); each standard error is rescaled by
    ``sqrt(var_post / var_residual)`` (the unscaled standard deviation of
    the estimate is kept, as in limma's ``eBayes``), and the moderated t is
    referred to a t distribution on ``df_residual + d0`` degrees of freedom,
    capped at the pooled residual df of all moderated genes (limma's
    ``df.total``).  Applied to LMMs this moderates the residual (within-
    gene) variance only; the random-effect variances are left as fitted.

    Parameters
    ----------
    gene_fits : pandas.DataFrame
        One row per gene with ``gene_id``, ``status``, ``var_residual``,
        ``df_residual`` and, for each fixed-effect coefficient ``<name>``,
        ``coef_<name>``, ``se_<name>`` (``df_<name>``, ``p_<name>`` are kept
        untouched).  Rows with status ``ok`` or ``singular`` and finite,
        positive ``var_residual`` and ``df_residual`` take part.
    trend : bool
        Trend the prior variance on ``mean_expression`` (limma-trend).
    mean_expression : pandas.Series, optional
        Mean expression per gene (index = gene_id); required with ``trend``.
    robust : bool
        Robust prior estimation (see :func:`squeeze_var`).

    Returns
    -------
    pandas.DataFrame
        A copy of ``gene_fits`` with the columns ``d0`` (prior df),
        ``s0`` (prior sd, per gene when trended), ``var_residual_post``,
        ``df_total`` and, per coefficient, ``se_mod_<name>``,
        ``t_mod_<name>``, ``p_mod_<name>``.  Rows that did not take part
        hold NaN there.
    """
    required = {"gene_id", "status", "var_residual", "df_residual"}
    missing = required - set(gene_fits.columns)
    if missing:
        raise ValueError(f"gene_fits lacks columns {sorted(missing)}")
    names = [c[len("coef_") :] for c in gene_fits.columns if c.startswith("coef_")]
    out = gene_fits.copy()
    var = pd.to_numeric(out["var_residual"], errors="coerce").to_numpy(dtype=float)
    dfr = pd.to_numeric(out["df_residual"], errors="coerce").to_numpy(dtype=float)
    use = (
        out["status"].isin(["ok", "singular"]).to_numpy() & np.isfinite(var) & np.isfinite(dfr) & (var > 0) & (dfr > 0)
    )
    cov = None
    if trend:
        if mean_expression is None:
            raise ValueError("trend=True needs mean_expression")
        cov_all = mean_expression.reindex(out["gene_id"]).to_numpy(dtype=float)
        use &= np.isfinite(cov_all)
        cov = cov_all[use]
    n = len(out)
    d0 = np.full(n, np.nan)
    s0 = np.full(n, np.nan)
    var_post = np.full(n, np.nan)
    df_total = np.full(n, np.nan)
    if use.sum() >= 2:
        sq = squeeze_var(var[use], dfr[use], covariate=cov, robust=robust)
        d0[use] = sq.df_prior
        s0[use] = np.sqrt(sq.var_prior)
        var_post[use] = sq.var_post
        df_total[use] = np.minimum(dfr[use] + d0[use], np.sum(dfr[use]))
    out["d0"] = d0
    out["s0"] = s0
    out["var_residual_post"] = var_post
    out["df_total"] = df_total
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sqrt(var_post / var)
        for name in names:
            coef = pd.to_numeric(out[f"coef_{name}"], errors="coerce").to_numpy(dtype=float)
            se = pd.to_numeric(out[f"se_{name}"], errors="coerce").to_numpy(dtype=float)
            se_mod = se * ratio
            t_mod = coef / se_mod
            p_mod = 2 * t_sf(np.abs(t_mod), df_total)
            out[f"se_mod_{name}"] = se_mod
            out[f"t_mod_{name}"] = t_mod
            out[f"p_mod_{name}"] = p_mod
    return out
