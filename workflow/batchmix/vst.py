"""DESeq2-compatible size factors and variance-stabilising transformation.

Count data are heteroscedastic: the variance of a gene grows with its mean,
so models fitted on raw or naively logged counts are dominated by noisy low
counts.  This module reproduces DESeq2's answer (Love, Huber & Anders 2014;
Anders & Huber 2010), step by step, vectorised across genes:

1. :func:`size_factors` -- median-of-ratios normalisation
   (``estimateSizeFactors``, ``type = "ratio"`` or ``"poscounts"``).
2. Gene-wise dispersions (``estimateDispersionsGeneEst``): the Cox-Reid
   adjusted profile likelihood of log(alpha), maximised by DESeq2's Armijo
   line search (kappa_0 = 1, tolerance 1e-6, at most 100 steps), with the
   grid search for genes whose line search did not converge.
3. The dispersion trend (``estimateDispersionsFit``): ``parametric``
   alpha(mu) = a0 + a1 / mu by an iterated Gamma-family GLM with identity
   link, ``local`` (a port of the locfit fit DESeq2 uses, see
   :class:`_LocalFit`) or ``mean``; parametric falls
   back to local and local to mean, and the branch that ran is recorded.
4. The transformation (``getVarianceStabilizedData``): closed forms for
   ``parametric`` and ``mean``, DESeq2's numerical integral for ``local``.

:func:`vst` with ``nsub`` set is DESeq2's fast ``vst()``: the trend is fitted
on ``nsub`` genes with mean normalised count > 5, spread evenly over the
ranks of the mean.  That subset rule involves no random numbers, so it is
reproduced exactly.

Performance: integer counts are never copied to a float64 matrix; the size
factors, row means and the closed-form VST run over blocks of samples; the
line search keeps its genes in a compact workspace and evaluates the
likelihood in cache-sized blocks.  It is not replaced by a Newton solver:
DESeq2 stops when the objective rises by less than 1e-6, not at the optimum,
so only the same iterates give the same estimates.  ``benchmarks/bench_vst.py``
times this against DESeq2.
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import linalg, special

__all__ = [
    "VSTResult",
    "size_factors",
    "low_count_filter",
    "vst",
    "mean_sd",
    "running_median",
    "estimate_dispersions",
    "fit_dispersion_trend",
    "DispersionTrend",
    "vst_subset",
    "transform_normalised",
]

logger = logging.getLogger(__name__)

# DESeq2 constants (estimateDispersionsGeneEst / estimateDispersionsFit defaults).
MIN_DISP = 1e-8
KAPPA_0 = 1.0
DISP_TOL = 1e-6
MAXIT = 100
MIN_MU = 0.5

_FIT_TYPES = ("parametric", "local", "mean")


# --------------------------------------------------------------------------
# size factors and filtering
# --------------------------------------------------------------------------


def _as_count_matrix(counts: pd.DataFrame) -> np.ndarray:
    """The counts as an array, genes x samples, validated.

    Integer columns stay integers (no float64 copy of the whole matrix);
    anything else is converted to float64.  The checks use whole-array
    reductions (min / max), which propagate NaN, so no boolean temporaries
    of the matrix size are made.
    """
    if not isinstance(counts, pd.DataFrame):
        raise TypeError("counts must be a pandas DataFrame (genes x samples)")
    y = counts.to_numpy()
    if y.dtype.kind not in "iu":
        y = counts.to_numpy(dtype=float)
    if y.ndim != 2 or y.shape[1] == 0:
        raise ValueError("counts must have at least one sample column")
    if y.size == 0:
        return y
    lo = y.min()
    if y.dtype.kind == "f":
        hi = y.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError("counts contain missing or infinite values")
    if lo < 0:
        raise ValueError("counts must be non-negative")
    return y


def _samples_major(y: np.ndarray) -> np.ndarray:
    """``y.T`` (samples x genes), C-contiguous: a view for DataFrame input."""
    return np.ascontiguousarray(y.T)


def size_factors(counts: pd.DataFrame, method: str = "ratio") -> pd.Series:
    """Median-of-ratios size factors, as DESeq2's ``estimateSizeFactors``.

    Parameters
    ----------
    counts : pandas.DataFrame
        Raw counts, genes in rows, samples in columns.
    method : {"ratio", "poscounts"}
        ``"ratio"`` (DESeq2's default): the reference of each gene is the
        geometric mean over all samples, so genes with a zero in any sample
        drop out.  ``"poscounts"``: the geometric mean uses the positive
        counts only (divided by the number of all samples), and the factors
        are then scaled to geometric mean 1, as
        ``estimateSizeFactors(dds, type = "poscounts")``.

    Returns
    -------
    pandas.Series
        One factor per sample, indexed by the column names of ``counts``.

    Raises
    ------
    ValueError
        With ``method="ratio"`` when no gene is non-zero in every sample.
    """
    y = _as_count_matrix(counts)
    sf = _size_factors_array(y, method, list(counts.columns))
    return pd.Series(sf, index=counts.columns, name="size_factor")


def _size_factors_array(y: np.ndarray, method: str, columns: list) -> np.ndarray:
    n = y.shape[1]
    if method == "ratio":
        # work on samples x genes (contiguous for DataFrame input): the
        # median of each sample then runs over a contiguous row
        yt = _samples_major(y)
        # only genes positive in every sample have a finite log geometric mean
        allpos = yt.min(axis=0) > 0 if yt.shape[1] else np.zeros(0, dtype=bool)
        if not np.any(allpos):
            raise ValueError(
                "every gene contains at least one zero, so the median-of-ratios size factors "
                "cannot be computed; use the positive-counts geometric means instead: "
                "config `vst: {size_factors: poscounts}` (size_factors(counts, method='poscounts'))"
            )
        sub = np.take(yt, np.flatnonzero(allpos), axis=1)
        logy = np.log(sub, out=np.empty(sub.shape)) if sub.dtype != np.float64 else np.log(sub, out=sub)
        logy -= logy.mean(axis=0)
        return np.exp(_row_medians(logy))
    if method == "poscounts":
        pos = y > 0
        anypos = pos.any(axis=1)
        if not np.any(anypos):
            raise ValueError("all genes have zero counts in every sample")
        yp, posp = y[anypos], pos[anypos]
        with np.errstate(divide="ignore"):
            logy = np.where(posp, np.log(yp), 0.0)
        loggeomeans = logy.sum(axis=1) / n
        ratios = np.where(posp, logy - loggeomeans[:, None], np.nan)
        empty = ~posp.any(axis=0)
        if np.any(empty):
            raise ValueError(f"sample {columns[int(np.argmax(empty))]!r} has only zero counts")
        sf = np.exp(np.nanmedian(ratios, axis=0))
        return sf / math.exp(np.mean(np.log(sf)))
    raise ValueError(f"unknown size factor method {method!r}; use 'ratio' or 'poscounts'")


def _row_medians(v: np.ndarray) -> np.ndarray:
    """``np.median(v, axis=1)``, overwriting ``v``, with a single partition.

    For an even row length the lower middle value is the largest element
    left of the upper one after partitioning, so one selection suffices
    (numpy's median partitions for both); the result is the same number,
    ``(lower + upper) / 2``.
    """
    k = v.shape[1]
    half = k // 2
    v.partition(half, axis=1)
    upper = v[:, half]
    if k % 2:
        return upper.copy()
    lower = v[:, :half].max(axis=1)
    return (lower + upper) / 2.0


def low_count_filter(counts: pd.DataFrame, min_count: int = 10, min_samples: int | None = None) -> pd.Series:
    """Which genes have enough reads to be analysed.

    The rule is the one of the DESeq2 vignette: keep a gene when its **raw**
    count is at least ``min_count`` in at least ``min_samples`` samples.
    Raw counts are used (not normalised ones) so that the filter never
    depends on the size factors, which may not be computable yet.

    Parameters
    ----------
    counts : pandas.DataFrame
        Raw counts, genes x samples.
    min_count : int
        Minimum count (default 10).
    min_samples : int, optional
        Minimum number of samples reaching ``min_count``.  Default:
        ``min(3, number of samples)`` (the vignette's smallest group size).

    Returns
    -------
    pandas.Series
        Boolean, indexed by gene; ``True`` = keep.
    """
    y = _as_count_matrix(counts)
    if min_samples is None:
        min_samples = min(3, y.shape[1])
    if min_samples < 1 or min_count < 0:
        raise ValueError("min_samples must be >= 1 and min_count >= 0")
    keep = (y >= min_count).sum(axis=1) >= min_samples
    return pd.Series(keep, index=counts.index, name="keep")


# --------------------------------------------------------------------------
# gene-wise dispersion estimation (estimateDispersionsGeneEst)
# --------------------------------------------------------------------------


def _xtwx(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """X' diag(w_g) X for every gene row g of w, as one BLAS product."""
    n, p = x.shape
    outer = (x[:, :, None] * x[:, None, :]).reshape(n, p * p)
    return (w @ outer).reshape(w.shape[0], p, p)


class _CoxReid:
    """log det(X' W X) and its derivative for all genes at once.

    When the design has as many distinct rows as columns (one-way layouts
    such as ``~1`` or ``~batch``), X = G T with G the n x p group indicator
    and T invertible, so X'WX = T' diag(G'w) T: the determinant is a product
    of group sums (taken as plain row sums over each group's columns, no
    BLAS call).  Otherwise the p x p matrices are formed explicitly.
    """

    def __init__(self, x: np.ndarray):
        self.x = x
        rows, inverse = np.unique(x, axis=0, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
        self.grouped = rows.shape[0] == x.shape[1]
        if self.grouped:
            self.logdet_tt = 2.0 * np.linalg.slogdet(rows)[1]
            self.cols = [np.flatnonzero(inverse == k) for k in range(rows.shape[0])]
            if len(self.cols) == 1:
                self.cols = [slice(None)]

    def _group_sums(self, w: np.ndarray) -> np.ndarray:
        """w @ G: genes x groups."""
        return np.column_stack([w[:, c].sum(axis=1) for c in self.cols])

    def logdet(self, w: np.ndarray) -> np.ndarray:
        if self.grouped:
            return np.log(self._group_sums(w)).sum(axis=1) + self.logdet_tt
        return np.log(np.linalg.det(_xtwx(self.x, w)))

    def dlogdet(self, w: np.ndarray, dw: np.ndarray) -> np.ndarray:
        """trace((X'WX)^-1 X' dW X)."""
        if self.grouped:
            return (self._group_sums(dw) / self._group_sums(w)).sum(axis=1)
        return np.trace(np.linalg.solve(_xtwx(self.x, w), _xtwx(self.x, dw)), axis1=1, axis2=2)


def _log_posterior(log_alpha, y, mu, cr: _CoxReid, scratch=None):
    """Cox-Reid adjusted NB log likelihood of log(alpha), one value per gene row.

    Written term by term as DESeq2's C++ ``log_posterior`` (including
    ``log(1 + mu alpha)`` rather than ``log1p``) so that the line search
    takes the same decisions near alpha -> 0, where the terms cancel and
    their rounding decides.  The element-wise terms are combined in place,
    in the same order as
    ``lgamma(y + 1/a) - lgamma(1/a) - y log(mu + 1/a) - 1/a log(1 + mu a)``
    (regrouping them, e.g. through log(mu + 1/a) = log(1 + mu a) - log(a),
    changes such decisions).  The weights w = 1 / (1/mu + a) of the Cox-Reid
    term are taken as mu / (1 + mu a).  ``scratch``: optionally three arrays
    of ``y``'s shape to work in.
    """
    alpha = np.exp(log_alpha)[:, None]
    inv_alpha = 1.0 / alpha
    if scratch is None:
        scratch = tuple(np.empty(y.shape) for _ in range(3))
    buf, tmp, t2 = scratch
    # Cox-Reid term first, while tmp holds 1 + mu a
    np.multiply(mu, alpha, out=tmp)
    tmp += 1.0
    logdet = cr.logdet(np.divide(mu, tmp, out=buf))
    np.log(tmp, out=tmp)
    tmp *= inv_alpha  # 1/a log(1 + mu a)
    np.add(y, inv_alpha, out=buf)
    special.gammaln(buf, out=buf)
    buf -= special.gammaln(inv_alpha)
    # - y log(mu + 1/a), then - 1/a log(1 + mu a): tmp is needed for both
    np.add(mu, inv_alpha, out=t2)
    np.log(t2, out=t2)
    t2 *= y
    buf -= t2
    buf -= tmp
    return buf.sum(axis=1) - 0.5 * logdet


def _dlog_posterior(log_alpha, y, mu, cr: _CoxReid, scratch=None):
    """Derivative of :func:`_log_posterior` with respect to log(alpha).

    Term by term as DESeq2's ``dlog_posterior``; ``scratch``: optionally
    three arrays of ``y``'s shape to work in.
    """
    alpha = np.exp(log_alpha)[:, None]
    inv_alpha = 1.0 / alpha
    if scratch is None:
        scratch = tuple(np.empty(y.shape) for _ in range(3))
    buf, ma, opm = scratch
    # digamma(1/a) + log(1 + ma) - ma / (1 + ma) - digamma(y + 1/a) + y / (mu + 1/a)
    np.multiply(mu, alpha, out=ma)
    np.add(ma, 1.0, out=opm)
    np.log(opm, out=buf)
    buf += special.digamma(inv_alpha)
    ma /= opm
    buf -= ma
    np.add(y, inv_alpha, out=ma)
    special.digamma(ma, out=ma)
    buf -= ma
    np.add(mu, inv_alpha, out=ma)
    np.divide(y, ma, out=ma)
    buf += ma
    ll = (inv_alpha[:, 0] ** 2) * buf.sum(axis=1)
    # Cox-Reid term: w = mu / (1 + mu a), dw/da = -w^2; its derivative is linear in dw
    w = np.divide(mu, opm, out=opm)
    dlogdet = -cr.dlogdet(w, np.square(w, out=buf))
    return (ll - 0.5 * dlogdet) * alpha[:, 0]


# genes x samples values per block of the dispersion line search (bounds its workspace)
_LINE_SEARCH_BLOCK = 1_000_000
# genes per evaluation block of the likelihood: its temporaries stay in the L2 cache
_EVAL_ROWS = 128


def _eval_blocked(f, log_alpha, y, mu, cr: _CoxReid, scratch) -> np.ndarray:
    """``f(log_alpha, y, mu, cr)`` (a per-gene function) over blocks of rows.

    ``scratch``: three arrays of ``_EVAL_ROWS`` rows that ``f`` works in.
    Rows are independent, so the result is the same as one call on all rows.
    """
    g = y.shape[0]
    b = scratch[0].shape[0]
    if g <= b:
        return f(log_alpha, y, mu, cr, tuple(s[:g] for s in scratch))
    out = np.empty(g)
    for s0 in range(0, g, b):
        s1 = min(g, s0 + b)
        out[s0:s1] = f(log_alpha[s0:s1], y[s0:s1], mu[s0:s1], cr, tuple(s[: s1 - s0] for s in scratch))
    return out


def _fit_disp_line_search(y, mu, x, log_alpha0, min_log_alpha):
    """DESeq2's ``fitDisp`` (no prior), vectorised over genes, in blocks of genes.

    Genes are independent, so the blocks change nothing but the memory used.
    """
    g, n = y.shape
    step = max(1, _LINE_SEARCH_BLOCK // max(1, n))
    if g <= step:
        return _fit_disp_line_search_block(y, mu, x, log_alpha0, min_log_alpha)
    parts = [
        _fit_disp_line_search_block(y[s : s + step], mu[s : s + step], x, log_alpha0[s : s + step], min_log_alpha)
        for s in range(0, g, step)
    ]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def _fit_disp_line_search_block(y, mu, x, log_alpha0, min_log_alpha):
    """DESeq2's ``fitDisp`` (no prior), vectorised over genes.

    Armijo line search on log(alpha) along the gradient; every gene follows
    exactly the step rules of the C++ code, so the iterates are the same
    (a Newton solver would reach the exact optimum, which DESeq2's stopping
    rule -- increase of the objective below 1e-6 -- does not: its estimates
    differ from the optimum by ~1e-3 relative on small data sets).

    The genes still searching are kept in compact copies of ``y`` and
    ``mu``, shrunk whenever genes finish, so each step touches only the rows
    it needs.  The gene x sample arrays live in one workspace allocated up
    front (large enough for huge pages; temporaries of a few MB would
    otherwise be mapped and unmapped at every step), and the likelihood is
    evaluated in blocks of genes whose temporaries stay in cache.
    """
    g, n = y.shape
    x = _CoxReid(x)
    ws = np.empty((4, g, n))
    sets = (tuple(ws[0:2]), tuple(ws[2:4]))  # ping-pong targets of the compaction
    scratch = tuple(np.empty((min(g, _EVAL_ROWS), n)) for _ in range(3))
    a = log_alpha0.astype(float).copy()
    lp = _eval_blocked(_log_posterior, a, y, mu, x, scratch)
    dlp = _eval_blocked(_dlog_posterior, a, y, mu, x, scratch)
    initial_lp = lp.copy()
    kappa = np.full(g, KAPPA_0)
    iters = np.zeros(g, dtype=int)
    accepts = np.zeros(g, dtype=int)
    active = np.ones(g, dtype=bool)
    eps = 1e-4
    # compact working set: rows `idx` of y and mu
    idx = np.arange(g)
    yw, muw = y, mu
    target = 0
    for _ in range(MAXIT):
        if idx.size == 0:
            break
        iters[idx] += 1
        ai, di, ki = a[idx], dlp[idx], kappa[idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            a_prop = ai + ki * di
            ki = np.where(a_prop < -30.0, (-30.0 - ai) / di, ki)
            a_prop = ai + ki * di
            ki = np.where(a_prop > 10.0, (10.0 - ai) / di, ki)
        a_new = ai + ki * di
        k = idx.size
        lp_new = _eval_blocked(_log_posterior, a_new, yw, muw, x, scratch)
        theta_kappa = -lp_new
        theta_hat = -lp[idx] - ki * eps * di**2
        accept = theta_kappa <= theta_hat
        # rejected: halve kappa
        rej = idx[~accept]
        kappa[rej] = ki[~accept] / 2.0
        acc = idx[accept]
        if acc.size:
            accepts[acc] += 1
            a[acc] = a_new[accept]
            change = lp_new[accept] - lp[acc]
            small = change < DISP_TOL
            # As in DESeq2's C++: a gene leaving because log(alpha) fell below
            # min_log_alpha keeps its previous lp, which then counts as "no
            # increase" and sends it back to its start value (and the grid).
            escaped = ~small & (a[acc] < min_log_alpha)
            keep_lp = ~escaped
            lp[acc[keep_lp]] = lp_new[accept][keep_lp]
            done = small | escaped
            active[acc[done]] = False
            pos_acc = np.flatnonzero(accept)  # positions of acc within idx
            cont_pos = pos_acc[~done]
            cont = idx[cont_pos]
            if cont.size:
                c = cont.size
                if c == k:
                    yc, muc = yw, muw
                else:
                    # the two spare slots of the ping-pong pair serve as gather buffers;
                    # mode="clip": an unbuffered take (indices are valid)
                    yc, muc = (
                        np.take(src, cont_pos, axis=0, out=dst[:c], mode="clip")
                        for src, dst in zip((yw, muw), sets[target])
                    )
                dlp[cont] = _eval_blocked(_dlog_posterior, a[cont], yc, muc, x, scratch)
                kc = np.minimum(ki[accept][~done] * 1.1, KAPPA_0)
                kc = np.where(accepts[cont] % 5 == 0, kc / 2.0, kc)
                kappa[cont] = kc
            if np.any(done):
                keep = np.flatnonzero(active[idx])
                idx = idx[keep]
                yw, muw = (
                    np.take(src, keep, axis=0, out=dst[: idx.size], mode="clip")
                    for src, dst in zip((yw, muw), sets[target])
                )
                target = 1 - target
    return a, iters, initial_lp, lp


def _fit_disp_grid(y, mu, x, max_disp):
    """DESeq2's ``fitDispGridWrapper``: coarse 20-point grid, then a fine one."""
    x = _CoxReid(x)
    grid = np.linspace(math.log(1e-8), math.log(max_disp), 20)
    delta = grid[1] - grid[0]
    g = y.shape[0]

    def best(grids):  # grids: genes x 20
        lps = np.column_stack([_log_posterior(grids[:, t], y, mu, x) for t in range(grids.shape[1])])
        return grids[np.arange(g), np.argmax(lps, axis=1)]

    a_hat = best(np.tile(grid, (g, 1)))
    fine = np.linspace(a_hat - delta, a_hat + delta, 20).T
    return np.exp(best(fine))


def _model_matrix_groups(x: np.ndarray) -> int:
    return len({tuple(row) for row in np.asarray(x).tolist()})


def _nb_deviance(y, mu, alpha):
    size = 1.0 / alpha[:, None]
    # -2 * log dnbinom(y; size, mu)
    ll = (
        special.gammaln(y + size)
        - special.gammaln(size)
        - special.gammaln(y + 1.0)
        + size * np.log(size / (size + mu))
        + special.xlogy(y, mu / (size + mu))
    )
    return -2.0 * ll.sum(axis=1)


def _fit_nbinom_glm_mu(y, nf, x, alpha, tol=1e-8, maxit=100, minmu=MIN_MU):
    """Fitted means of DESeq2's negative-binomial GLM (``fitNbinomGLMs``).

    IRLS with the ridge lambda = 1e-6 (natural-log scale 1e-6 / log(2)^2),
    started from the least-squares fit of log(normalised count + 0.1), as
    ``fitBeta``.  Genes that do not converge are refined by a direct
    maximisation of the likelihood (DESeq2 uses ``optim`` L-BFGS-B there).
    """
    g, n = y.shape
    p = x.shape[1]
    lam = np.full(p, 1e-6) / math.log(2) ** 2
    normcounts = y / nf
    beta = np.linalg.lstsq(x, np.log(normcounts + 0.1).T, rcond=None)[0].T  # g x p
    mu = np.maximum(nf * np.exp(beta @ x.T), minmu)
    dev_old = np.zeros(g)
    active = np.ones(g, dtype=bool)
    converged = np.zeros(g, dtype=bool)
    large = 30.0
    for t in range(maxit):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        mu_i = mu[idx]
        w = mu_i / (1.0 + alpha[idx, None] * mu_i)
        z = np.log(mu_i / nf[idx]) + (y[idx] - mu_i) / mu_i
        xtwx = _xtwx(x, w) + np.diag(lam)[None]
        xtwz = np.einsum("np,gn->gp", x, w * z)
        b = np.linalg.solve(xtwx, xtwz[:, :, None])[:, :, 0]
        blown = np.any(np.abs(b) > large, axis=1)
        beta[idx] = b
        mu_new = np.maximum(nf[idx] * np.exp(b @ x.T), minmu)
        mu[idx] = mu_new
        dev = _nb_deviance(y[idx], mu_new, alpha[idx])
        with np.errstate(invalid="ignore"):
            conv_test = np.abs(dev - dev_old[idx]) / (np.abs(dev) + 0.1)
        failed = blown | np.isnan(conv_test)
        done = (t > 0) & (conv_test < tol) & ~failed
        converged[idx[done]] = True
        active[idx[done | failed]] = False
        dev_old[idx] = dev
    not_conv = np.flatnonzero(~converged)
    if not_conv.size:
        from scipy.optimize import minimize

        for i in not_conv:
            start = (
                beta[i]
                if np.all(np.isfinite(beta[i])) and np.all(np.abs(beta[i]) < large)
                else (np.linalg.lstsq(x, np.log(normcounts[i] + 0.1), rcond=None)[0])
            )
            size = 1.0 / alpha[i]

            def negll(bb, i=i, size=size):
                m = nf[i] * np.exp(x @ bb)
                ll = (
                    special.gammaln(y[i] + size)
                    - special.gammaln(size)
                    + size * np.log(size / (size + m))
                    + special.xlogy(y[i], m / (size + m))
                ).sum()
                pen = 0.5 * np.sum(lam * bb**2)
                val = -(ll - pen)
                return val if np.isfinite(val) else 1e300

            res = minimize(negll, start, method="L-BFGS-B", bounds=[(-large, large)] * p)
            beta[i] = res.x
    return nf * np.exp(beta @ x.T)


def estimate_dispersions(
    counts: np.ndarray,
    sf: np.ndarray,
    design: np.ndarray | None = None,
) -> pd.DataFrame:
    """Gene-wise dispersion estimates, as DESeq2's ``estimateDispersionsGeneEst``.

    Parameters
    ----------
    counts : numpy.ndarray
        Raw counts, genes x samples.
    sf : numpy.ndarray
        Size factors, one per sample.
    design : numpy.ndarray, optional
        Model matrix (samples x coefficients); default the intercept only
        (design ``~1``).

    Returns
    -------
    pandas.DataFrame
        Columns ``base_mean``, ``base_var``, ``all_zero``, ``disp_gene_est``
        (NaN for all-zero genes), ``disp_gene_iter`` (line-search steps) and
        ``disp_grid`` (True where the grid search replaced the line search).
    """
    y = np.ascontiguousarray(counts, dtype=float)
    sf = np.asarray(sf, dtype=float)
    g, n = y.shape
    x = np.ones((n, 1)) if design is None else np.asarray(design, dtype=float)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError("design must have one row per sample")
    if np.linalg.matrix_rank(x) < x.shape[1]:
        raise ValueError("the design matrix is not of full rank")
    if x.shape[0] == x.shape[1]:
        raise ValueError("as many samples as coefficients: no replicates to estimate the dispersion")
    normcounts = y / sf
    base_mean = normcounts.mean(axis=1)
    base_var = normcounts.var(axis=1, ddof=1) if n > 1 else np.full(g, np.nan)
    all_zero = y.sum(axis=1) == 0
    nz = ~all_zero
    if np.all(nz):
        yz, ncz = y, normcounts
    else:
        yz, ncz = y[nz], normcounts[nz]
    m, p = x.shape

    # DESeq2's linearModelMu: (y Q) (X R^-1)', the least-squares fit of each row
    qx, rx = np.linalg.qr(x)
    lin = (ncz @ qx) @ (x @ np.linalg.inv(rx)).T
    # starting values: min of the rough (moments on the linear-model fit) and moments estimates
    mu_lin = np.maximum(1.0, lin)
    t = np.subtract(ncz, mu_lin)
    t *= t
    t -= mu_lin
    np.square(mu_lin, out=mu_lin)
    t /= mu_lin
    rough = np.maximum(t.sum(axis=1) / (m - p), 0.0)
    del t, mu_lin
    xim = np.mean(1.0 / sf)
    moments = (base_var[nz] - xim * base_mean[nz]) / base_mean[nz] ** 2
    alpha_hat = np.minimum(rough, moments)
    max_disp = max(10.0, float(n))
    alpha_init = np.minimum(np.maximum(MIN_DISP, alpha_hat), max_disp)

    linear_mu = _model_matrix_groups(x) == x.shape[1]
    if linear_mu:
        fit_mu = lin
        fit_mu *= sf
    else:
        fit_mu = _fit_nbinom_glm_mu(yz, np.broadcast_to(sf, yz.shape), x, alpha_init)
    fit_mu[fit_mu < MIN_MU] = MIN_MU

    log_alpha, iters, initial_lp, last_lp = _fit_disp_line_search(
        yz, fit_mu, x, np.log(alpha_init), math.log(MIN_DISP / 10.0)
    )
    disp = np.minimum(np.exp(log_alpha), max_disp)
    no_increase = last_lp < initial_lp + np.abs(initial_lp) / 1e6
    disp[no_increase] = alpha_init[no_increase]
    conv = (iters < MAXIT) & (iters != 1)
    refit = ~conv & (disp > MIN_DISP * 10)
    grid_used = np.zeros(disp.shape, dtype=bool)
    if np.any(refit):
        disp[refit] = _fit_disp_grid(yz[refit], fit_mu[refit], x, max_disp)
        grid_used[refit] = True
    disp = np.minimum(np.maximum(disp, MIN_DISP), max_disp)

    out_disp = np.full(g, np.nan)
    out_disp[nz] = disp
    out_iter = np.full(g, np.nan)
    out_iter[nz] = iters
    out_grid = np.zeros(g, dtype=bool)
    out_grid[nz] = grid_used
    return pd.DataFrame(
        {
            "base_mean": base_mean,
            "base_var": base_var,
            "all_zero": all_zero,
            "disp_gene_est": out_disp,
            "disp_gene_iter": out_iter,
            "disp_grid": out_grid,
        }
    )


# --------------------------------------------------------------------------
# dispersion trend (estimateDispersionsFit)
# --------------------------------------------------------------------------


class DispersionFitError(RuntimeError):
    """A dispersion trend could not be fitted (triggers DESeq2's fallback)."""


@dataclass
class DispersionTrend:
    """A fitted dispersion-mean trend.

    Attributes
    ----------
    fit_type : str
        ``"parametric"``, ``"local"`` or ``"mean"``: the branch that ran.
    coefficients : dict
        ``{"a0", "a1"}`` (asymptotic dispersion and extra-Poisson term) for
        parametric, ``{"mean": ...}`` for mean, ``{}`` for local.
    local_fit : object, optional
        Internal evaluator for the local fit.
    notes : list of str
        Fallbacks that happened.
    """

    fit_type: str
    coefficients: dict
    local_fit: object | None = None
    notes: list = field(default_factory=list)

    def __call__(self, means: np.ndarray) -> np.ndarray:
        means = np.asarray(means, dtype=float)
        if self.fit_type == "parametric":
            with np.errstate(divide="ignore"):
                return self.coefficients["a0"] + self.coefficients["a1"] / means
        if self.fit_type == "mean":
            return np.full(means.shape, self.coefficients["mean"])
        return self.local_fit(means)


def _gamma_identity_glm(yv: np.ndarray, xm: np.ndarray, start: np.ndarray, epsilon=1e-8, maxit=25):
    """R's ``glm.fit`` for ``family = Gamma(link = "identity")`` with ``start``.

    Reproduces the IRLS iterations, the convergence rule
    ``|dev - devold| / (|dev| + 0.1) < epsilon`` and the step halving for
    invalid (non-positive) means, so the coefficients equal R's.
    """

    def dev_fn(mu):
        return float(np.sum(-2.0 * (np.log(np.where(yv == 0, 1.0, yv / mu)) - (yv - mu) / mu)))

    coef = np.asarray(start, dtype=float).copy()
    eta = xm @ coef
    mu = eta
    devold = dev_fn(mu)
    coefold = None
    converged = False
    for _ in range(maxit):
        # identity link: mu.eta = 1, z = y, weights = 1 / variance = 1 / mu^2
        w = 1.0 / np.abs(mu)
        coef_new, *_ = np.linalg.lstsq(xm * w[:, None], yv * w, rcond=None)
        eta = xm @ coef_new
        mu = eta
        dev = dev_fn(mu) if np.all(mu > 0) else np.inf
        if not np.isfinite(dev) or not np.all(mu > 0):
            if coefold is None:
                raise DispersionFitError("no valid set of coefficients: please supply starting values")
            ii = 1
            while not (np.all(mu > 0) and np.isfinite(dev)):
                if ii > maxit:
                    raise DispersionFitError("inner loop; cannot correct step size")
                ii += 1
                coef_new = (coef_new + coefold) / 2.0
                eta = xm @ coef_new
                mu = eta
                dev = dev_fn(mu) if np.all(mu > 0) else np.inf
        coef = coef_new
        if abs(dev - devold) / (abs(dev) + 0.1) < epsilon:
            converged = True
            break
        devold = dev
        coefold = coef
    return coef, converged


def _parametric_dispersion_fit(means: np.ndarray, disps: np.ndarray) -> dict:
    """DESeq2's ``parametricDispersionFit``: alpha = a0 + a1 / mean."""
    coefs = np.array([0.1, 1.0])
    it = 0
    while True:
        resid = disps / (coefs[0] + coefs[1] / means)
        good = (resid > 1e-4) & (resid < 15)
        if good.sum() < 2:
            raise DispersionFitError("too few genes for the parametric dispersion fit")
        xm = np.column_stack([np.ones(good.sum()), 1.0 / means[good]])
        old = coefs
        coefs, conv = _gamma_identity_glm(disps[good], xm, coefs)
        if not np.all(coefs > 0):
            raise DispersionFitError("parametric dispersion fit failed")
        if np.sum(np.log(coefs / old) ** 2) < 1e-6 and conv:
            break
        it += 1
        if it > 10:
            raise DispersionFitError("dispersion fit did not converge")
    return {"a0": float(coefs[0]), "a1": float(coefs[1])}


class _LocalFit:
    """locfit's default local regression, as DESeq2 uses it for ``fitType="local"``.

    DESeq2 calls ``locfit(log(disp) ~ log(mean), weights = mean)`` with
    locfit's defaults, reproduced here:

    * local quadratic weighted least squares (family ``qgaussian``), tricube
      kernel times the prior weights, nearest-neighbour bandwidth: the
      distance to the ``floor(0.7 n)``-th nearest observation;
    * evaluation structure ``rbox(cut = 0.8)``, the adaptive tree: the data
      range is bisected while a cell is longer than 0.8 times the smaller
      bandwidth at its two ends; the local fit (value and slope) is computed
      only at the cell vertices;
    * a global weighted quadratic ("parametric component") is subtracted
      before and added back after the cubic Hermite interpolation between
      vertices; beyond the data range the residual is extrapolated linearly.
    """

    CUT = 0.8
    ALPHA = 0.7

    def __init__(self, log_means: np.ndarray, log_disps: np.ndarray, weights: np.ndarray):
        order = np.argsort(log_means, kind="stable")
        self.x = np.asarray(log_means, dtype=float)[order]
        self.y = np.asarray(log_disps, dtype=float)[order]
        self.w = np.asarray(weights, dtype=float)[order]
        n = len(self.x)
        if n < 3:
            raise DispersionFitError("too few genes for the local dispersion fit")
        self.k = int(math.floor(n * self.ALPHA + 1e-12))
        if self.k < 3:
            raise DispersionFitError("too few genes for the local dispersion fit")
        # parametric component: global weighted quadratic
        xm = np.column_stack([np.ones(n), self.x, self.x**2])
        sw = np.sqrt(self.w)
        self.pc, *_ = np.linalg.lstsq(xm * sw[:, None], self.y * sw, rcond=None)
        lo, hi = float(self.x[0]), float(self.x[-1])
        if not hi > lo:
            raise DispersionFitError("all genes have the same mean: no local trend")
        verts = {lo: self._vertex(lo), hi: self._vertex(hi)}
        self._grow(lo, hi, verts, depth=0)
        self.vx = np.array(sorted(verts))
        vals = np.array([verts[v] for v in self.vx])  # columns: value, slope, h
        self.g = vals[:, 0] - self._pc_value(self.vx)
        self.dg = vals[:, 1] - self._pc_slope(self.vx)
        self.h = vals[:, 2]

    def _pc_value(self, x):
        c = self.pc
        return c[0] + c[1] * x + c[2] * x**2

    def _pc_slope(self, x):
        c = self.pc
        return c[1] + 2 * c[2] * x

    def _vertex(self, v: float):
        d = np.abs(self.x - v)
        h = float(np.partition(d, self.k - 1)[self.k - 1])
        if h <= 0:
            raise DispersionFitError("zero bandwidth in the local dispersion fit")
        u = d / h
        kern = np.where(u < 1, (1 - u**3) ** 3, 0.0) * self.w
        use = kern > 0
        dx = self.x[use] - v
        xm = np.column_stack([np.ones(use.sum()), dx, dx**2])
        sw = np.sqrt(kern[use])
        coef, *_ = np.linalg.lstsq(xm * sw[:, None], self.y[use] * sw, rcond=None)
        return (float(coef[0]), float(coef[1]), h)

    def _grow(self, lo: float, hi: float, verts: dict, depth: int):
        hmin = min(verts[lo][2], verts[hi][2])
        if (hi - lo) / hmin <= self.CUT or depth > 30:
            return
        mid = (lo + hi) / 2
        verts[mid] = self._vertex(mid)
        self._grow(lo, mid, verts, depth + 1)
        self._grow(mid, hi, verts, depth + 1)

    def __call__(self, means: np.ndarray) -> np.ndarray:
        means = np.asarray(means, dtype=float)
        with np.errstate(divide="ignore"):
            lm = np.log(means)
        vx, g, dg = self.vx, self.g, self.dg
        j = np.clip(np.searchsorted(vx, lm, side="right") - 1, 0, len(vx) - 2)
        v0, v1 = vx[j], vx[j + 1]
        width = v1 - v0
        t = (lm - v0) / width
        # cubic Hermite inside a cell (locfit's hermite2); linear beyond the ends
        tt = np.clip(t, 0.0, 1.0)
        phi1 = tt * tt * (3 - 2 * tt)
        phi0 = 1 - phi1
        phi2 = tt * (1 - tt) ** 2
        phi3 = tt * tt * (tt - 1)
        phi2 = np.where(t < 0, t, phi2)
        phi3 = np.where(t > 1, t - 1, phi3)
        resid = phi0 * g[j] + phi1 * g[j + 1] + (phi2 * dg[j] + phi3 * dg[j + 1]) * width
        return np.exp(resid + self._pc_value(lm))


def fit_dispersion_trend(
    base_mean: np.ndarray, disp_gene_est: np.ndarray, fit_type: str = "parametric"
) -> DispersionTrend:
    """Fit the dispersion-mean trend as DESeq2's ``estimateDispersionsFit``.

    Only genes with ``disp_gene_est > 100 * minDisp`` take part.  If the
    parametric fit fails, the local fit is used (as DESeq2); if the local
    fit fails, the mean (batchmix's last resort; DESeq2 would stop).

    Parameters
    ----------
    base_mean, disp_gene_est : numpy.ndarray
        Mean of normalised counts and gene-wise dispersion (NaN = not
        estimated, e.g. all-zero genes).
    fit_type : {"parametric", "local", "mean"}

    Returns
    -------
    DispersionTrend
    """
    if fit_type not in _FIT_TYPES:
        raise ValueError(f"unknown fit_type {fit_type!r}; use one of {_FIT_TYPES}")
    bm = np.asarray(base_mean, dtype=float)
    dg = np.asarray(disp_gene_est, dtype=float)
    ok = np.isfinite(dg)
    bm, dg = bm[ok], dg[ok]
    use = dg > 100 * MIN_DISP
    if not np.any(use):
        raise ValueError(
            "all gene-wise dispersion estimates are within 2 orders of magnitude from the "
            "minimum value, so no dispersion trend can be fitted"
        )
    notes = []
    if fit_type == "parametric":
        try:
            coefs = _parametric_dispersion_fit(bm[use], dg[use])
            return DispersionTrend("parametric", coefs, notes=notes)
        except (DispersionFitError, np.linalg.LinAlgError) as exc:
            notes.append(f"parametric fit failed ({exc}); local fit substituted")
            logger.warning(notes[-1])
            fit_type = "local"
    if fit_type == "local":
        try:
            m, d = bm[use], dg[use]
            if np.all(d < MIN_DISP * 10):
                return DispersionTrend("mean", {"mean": MIN_DISP}, notes=notes)
            keep = d >= MIN_DISP * 10
            lf = _LocalFit(np.log(m[keep]), np.log(d[keep]), m[keep])
            return DispersionTrend("local", {}, local_fit=lf, notes=notes)
        except (DispersionFitError, np.linalg.LinAlgError, ValueError) as exc:
            notes.append(f"local fit failed ({exc}); mean substituted")
            logger.warning(notes[-1])
            fit_type = "mean"
    use_mean = dg > 10 * MIN_DISP
    return DispersionTrend("mean", {"mean": _trimmed_mean(dg[use_mean], 0.001)}, notes=notes)


def _trimmed_mean(x: np.ndarray, trim: float) -> float:
    """R's ``mean(x, trim = trim)``."""
    # scipy.stats.trim_mean keeps the same values but sums them in np.partition's order, which changes
    # the last bits (tested on random data: most results differ by an ulp), so R's sorted order is kept
    x = np.sort(x[np.isfinite(x)])
    n = len(x)
    if trim > 0 and n:
        lo = int(math.floor(n * trim))
        x = x[lo : n - lo]
    return float(np.mean(x))


# --------------------------------------------------------------------------
# the transformation (getVarianceStabilizedData)
# --------------------------------------------------------------------------


def _fmm_spline(x: np.ndarray, y: np.ndarray):
    """Cubic interpolating spline with Forsythe-Malcolm-Moler end conditions.

    The same interpolant as R's ``splinefun(method = "fmm")``: at each end the
    third derivative equals that of the cubic through the four end points.
    Returned as a :class:`scipy.interpolate.PPoly` that extrapolates with
    the end cubics, as R does.
    """
    from scipy.interpolate import PPoly

    n = len(x)
    h = np.diff(x)
    d = np.diff(y) / h
    if n < 4:
        raise ValueError("need at least 4 points")
    # third divided differences at the ends
    d2l = (d[1] - d[0]) / (x[2] - x[0])
    d2l2 = (d[2] - d[1]) / (x[3] - x[1])
    d3l = (d2l2 - d2l) / (x[3] - x[0])
    d2r = (d[-1] - d[-2]) / (x[-1] - x[-3])
    d2r2 = (d[-2] - d[-3]) / (x[-2] - x[-4])
    d3r = (d2r - d2r2) / (x[-1] - x[-4])
    # unknowns: second derivatives M_0..M_{n-1}
    ab = np.zeros((3, n))  # banded: upper, diag, lower
    rhs = np.zeros(n)
    # left: (M1 - M0) / h0 = 6 * d3l
    ab[1, 0] = -h[0]
    ab[0, 1] = h[0]
    rhs[0] = 6.0 * d3l * h[0] ** 2
    # interior
    ab[2, 0 : n - 2] = h[:-1]  # lower diagonal entries (row i, col i-1)
    ab[1, 1 : n - 1] = 2.0 * (h[:-1] + h[1:])
    ab[0, 2:n] = h[1:]  # upper (row i, col i+1)
    rhs[1 : n - 1] = 6.0 * (d[1:] - d[:-1])
    # right: (M_{n-1} - M_{n-2}) / h_{n-2} = 6 * d3r
    ab[2, n - 2] = -h[-1]
    ab[1, n - 1] = h[-1]
    rhs[n - 1] = 6.0 * d3r * h[-1] ** 2
    msec = linalg.solve_banded((1, 1), ab, rhs)
    c = np.empty((4, n - 1))
    c[0] = (msec[1:] - msec[:-1]) / (6.0 * h)
    c[1] = msec[:-1] / 2.0
    c[2] = d - h * (2.0 * msec[:-1] + msec[1:]) / 6.0
    c[3] = y[:-1]
    return PPoly(c, x, extrapolate=True)


# samples per block of the sample-major passes: ~64k values, cache-resident
def _block_rows(g: int) -> int:
    return max(1, 65536 // max(1, g))


def _normalised_row_means(yt: np.ndarray, sf: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean over samples of y / sf per gene, and the largest normalised count.

    ``yt`` is samples x genes; the normalised counts are formed a block of
    samples at a time and never stored whole.
    """
    n, g = yt.shape
    acc = np.zeros(g)
    buf = np.empty((min(n, _block_rows(g)), g))
    top = 0.0
    for s0 in range(0, n, buf.shape[0]):
        s1 = min(n, s0 + buf.shape[0])
        q = np.divide(yt[s0:s1], sf[s0:s1, None], out=buf[: s1 - s0])
        acc += q.sum(axis=0)
        if g:
            top = max(top, float(q.max()))
    return acc / n, top


def _vst_values(
    yt: np.ndarray, sf: np.ndarray, trend: DispersionTrend, base_mean: np.ndarray, top: float
) -> np.ndarray:
    """Transformed values, samples x genes (C order), from raw counts ``yt`` (samples x genes).

    The normalised counts y / sf are formed block by block straight into the
    output, which is then transformed in place.
    """
    n, g = yt.shape
    out = np.empty((n, g))
    step = _block_rows(g)
    if trend.fit_type == "parametric":
        a0, a1 = trend.coefficients["a0"], trend.coefficients["a1"]
        # DESeq2: log2((1 + a1 + 2 a0 q + 2 sqrt(a0 q (1 + a1 + a0 q))) / (4 a0)),
        # q = y / sf.  With c = 1 + a1 and t = 2 a0 q this is
        # log2(c + t + sqrt(t (t + 2 c))) - log2(4 a0): eight passes per block.
        c = 1.0 + a1
        scale = (2.0 * a0) / sf
        shift = math.log2(4.0 * a0)
        tmp = np.empty((min(n, step), g))
        for s0 in range(0, n, step):
            s1 = min(n, s0 + step)
            t = np.multiply(yt[s0:s1], scale[s0:s1, None], out=tmp[: s1 - s0])
            u = np.add(t, 2.0 * c, out=out[s0:s1])
            u *= t
            np.sqrt(u, out=u)
            u += t
            u += c
            np.log2(u, out=u)
            u -= shift
        return out
    if trend.fit_type == "mean":
        alpha = trend.coefficients["mean"]
        for s0 in range(0, n, step):
            s1 = min(n, s0 + step)
            u = np.divide(yt[s0:s1], sf[s0:s1, None], out=out[s0:s1])
            u *= alpha
            np.sqrt(u, out=u)
            np.arcsinh(u, out=u)
            u *= 2
            u -= math.log(alpha)
            u -= math.log(4)
            u /= math.log(2)
        return out
    # local: numerical integral of 1 / sqrt(variance), pinned to log2 at the
    # 95% and 99.9% quantiles of the mean (getVarianceStabilizedData)
    xg = np.sinh(np.linspace(np.arcsinh(0.0), np.arcsinh(top), 1000))[1:]
    xim = np.mean(1.0 / sf)
    base_vars = trend(xg) * xg**2 + xim * xg
    integrand = 1.0 / np.sqrt(base_vars)
    knots = np.arcsinh((xg[1:] + xg[:-1]) / 2)
    cum = np.cumsum((xg[1:] - xg[:-1]) * (integrand[1:] + integrand[:-1]) / 2)
    splf = _fmm_spline(knots, cum)
    h1 = np.quantile(base_mean, 0.95)
    h2 = np.quantile(base_mean, 0.999)
    eta = (math.log2(h2) - math.log2(h1)) / (splf(np.arcsinh(h2)) - splf(np.arcsinh(h1)))
    xi = math.log2(h1) - eta * splf(np.arcsinh(h1))
    for s0 in range(0, n, step):
        s1 = min(n, s0 + step)
        u = np.divide(yt[s0:s1], sf[s0:s1, None], out=out[s0:s1])
        np.arcsinh(u, out=u)
        out[s0:s1] = eta * splf(u) + xi
    return out


def transform_normalised(normalised, *, fit_type: str, coefficients: dict) -> np.ndarray:
    """The stabilised value of normalised counts (count / size factor) under a recorded trend.

    The formulas are those of :func:`vst` (DESeq2's ``getVarianceStabilizedData``), from the trend's
    coefficients alone, as ``results/vst/info.json`` records them (``vst_fit_type_used``,
    ``vst_coefficients``).  ``transform_normalised(0.0, ...)`` is the value of a zero count, the same
    in every sample.

    Parameters
    ----------
    normalised : float or array_like
        Normalised counts, >= 0.
    fit_type : {"parametric", "mean"}
        The trend used.  The ``local`` trend is a spline of the data that the coefficients do not
        describe: it raises ``ValueError``.
    coefficients : dict
        ``{"a0", "a1"}`` (parametric) or ``{"mean"}``.

    Returns
    -------
    numpy.ndarray
        Stabilised values, the shape of ``normalised``.
    """
    q = np.asarray(normalised, dtype=np.float64)
    if fit_type == "parametric":
        a0, a1 = float(coefficients["a0"]), float(coefficients["a1"])
        return np.log2((1.0 + a1 + 2.0 * a0 * q + 2.0 * np.sqrt(a0 * q * (1.0 + a1 + a0 * q))) / (4.0 * a0))
    if fit_type == "mean":
        alpha = float(coefficients["mean"])
        return (2.0 * np.arcsinh(np.sqrt(alpha * q)) - math.log(alpha) - math.log(4.0)) / math.log(2.0)
    raise ValueError(f"the stabilised value of a count needs a parametric or mean trend, not {fit_type!r}")


# --------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------


@dataclass
class VSTResult:
    """Result of :func:`vst`.

    Attributes
    ----------
    values : pandas.DataFrame
        Genes x samples on the stabilised (log2-like) scale, all input genes.
    size_factors : pandas.Series
        Size factors used, indexed by sample.
    fit_type : str
        Trend branch that actually ran (after fallback): ``"parametric"``,
        ``"local"`` or ``"mean"``.
    fit_type_requested : str
        Trend branch asked for.
    blind : bool
        True: dispersions estimated with design ``~1``.
    nsub : int or None
        None: ``varianceStabilizingTransformation`` on all genes; an integer:
        DESeq2's ``vst()`` with the trend fitted on that many genes.
    coefficients : dict
        Trend coefficients (``a0``, ``a1`` for parametric; ``mean`` for mean).
    dispersions : pandas.DataFrame
        Per gene (index = gene): ``base_mean``, ``disp_gene_est`` (NaN where
        not estimated, e.g. genes outside the ``nsub`` subset),
        ``disp_fit`` (trend at ``base_mean``), ``in_trend_subset``.
    notes : list of str
        Fallbacks and other remarks.
    trend : DispersionTrend, optional
        The fitted dispersion function (callable on means), e.g. for plots.
    """

    values: pd.DataFrame
    size_factors: pd.Series
    fit_type: str
    fit_type_requested: str
    blind: bool
    nsub: int | None
    coefficients: dict
    dispersions: pd.DataFrame
    notes: list = field(default_factory=list)
    trend: DispersionTrend | None = None


def vst_subset(base_mean: np.ndarray, nsub: int) -> np.ndarray:
    """Row indices of the genes DESeq2's ``vst()`` fits the trend on.

    Among genes with ``base_mean > 5``, ordered by ``base_mean`` (ties by
    position), take ranks ``round(seq(1, n, length.out = nsub))``.
    Deterministic; identical to DESeq2's choice.
    """
    bm = np.asarray(base_mean, dtype=float)
    cand = np.flatnonzero(bm > 5)
    if cand.size < nsub:
        raise ValueError(
            f"only {cand.size} genes have mean normalised count > 5, fewer than nsub={nsub}; "
            "use nsub: null (varianceStabilizingTransformation on all genes)"
        )
    order = cand[np.argsort(bm[cand], kind="stable")]
    L = order.size
    if nsub == 1:
        pos = np.array([1.0])
    else:
        n1 = nsub - 1
        by = (L - 1) / n1
        pos = np.concatenate([[1.0], 1.0 + np.arange(1, n1) * by, [float(L)]])
    ranks = np.round(pos).astype(int) - 1  # R rounds half to even, as numpy
    return order[ranks]


def vst(
    counts: pd.DataFrame,
    fit_type: str = "parametric",
    blind: bool = True,
    design: np.ndarray | None = None,
    nsub: int | None = 1000,
    size_factor_method: str = "ratio",
) -> VSTResult:
    """Variance-stabilising transformation, DESeq2-compatible.

    Parameters
    ----------
    counts : pandas.DataFrame
        Raw counts, genes x samples.
    fit_type : {"parametric", "local", "mean"}
        Dispersion trend (DESeq2 ``fitType``).
    blind : bool
        True (default): dispersions estimated with design ``~1``, blind to
        the sample groups.  False: with ``design``.
    design : numpy.ndarray, optional
        Fixed-effects model matrix (samples x coefficients), used when
        ``blind`` is False.
    nsub : int or None
        Number of genes for the trend fit (DESeq2 ``vst()``; default 1000).
        None: all genes (``varianceStabilizingTransformation``).  When fewer
        than ``nsub`` genes have mean normalised count > 5 the full
        computation is used instead (recorded in ``notes``).
    size_factor_method : {"ratio", "poscounts"}

    Returns
    -------
    VSTResult
    """
    if fit_type not in _FIT_TYPES:
        raise ValueError(f"unknown fit_type {fit_type!r}; use one of {_FIT_TYPES}")
    y = _as_count_matrix(counts)
    n = y.shape[1]
    sf = _size_factors_array(y, size_factor_method, list(counts.columns))
    sf_s = pd.Series(sf, index=counts.columns, name="size_factor")
    if blind or design is None:
        if not blind:
            raise ValueError("blind=False needs the design matrix")
        x = np.ones((n, 1))
    else:
        x = np.asarray(design, dtype=float)
        if x.shape[0] != n:
            raise ValueError(f"design has {x.shape[0]} rows, counts have {n} samples")
    yt = _samples_major(y)  # a view for DataFrame input
    base_mean, top = _normalised_row_means(yt, sf)
    notes: list[str] = []
    rows = np.arange(y.shape[0])
    used_nsub = nsub
    if nsub is not None:
        if y.shape[0] < nsub or np.sum(base_mean > 5) < nsub:
            notes.append(
                f"fewer than nsub={nsub} genes with mean normalised count > 5: "
                "trend fitted on all genes (varianceStabilizingTransformation)"
            )
            logger.info(notes[-1])
            used_nsub = None
        else:
            rows = vst_subset(base_mean, nsub)
    disp = estimate_dispersions(y[rows], sf, x)
    trend = fit_dispersion_trend(disp["base_mean"].to_numpy(), disp["disp_gene_est"].to_numpy(), fit_type)
    notes.extend(trend.notes)
    values = _vst_values(yt, sf, trend, base_mean, top).T  # genes x samples, F order

    disp_gene = np.full(y.shape[0], np.nan)
    disp_gene[rows] = disp["disp_gene_est"].to_numpy()
    in_subset = np.zeros(y.shape[0], dtype=bool)
    in_subset[rows] = True
    with np.errstate(divide="ignore", invalid="ignore"):
        disp_fit = trend(base_mean)
    disp_fit = np.where(base_mean > 0, disp_fit, np.nan)
    dispersions = pd.DataFrame(
        {
            "base_mean": base_mean,
            "disp_gene_est": disp_gene,
            "disp_fit": disp_fit,
            "in_trend_subset": in_subset,
        },
        index=counts.index,
    )
    return VSTResult(
        # the array is fresh: no need for pandas' defensive copy
        values=pd.DataFrame(values, index=counts.index, columns=counts.columns, copy=False),
        size_factors=sf_s,
        fit_type=trend.fit_type,
        fit_type_requested=fit_type,
        blind=bool(blind),
        nsub=used_nsub,
        coefficients=dict(trend.coefficients),
        dispersions=dispersions,
        notes=notes,
        trend=trend,
    )


# --------------------------------------------------------------------------
# diagnostics
# --------------------------------------------------------------------------


def running_median(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running median of ``values``, the window truncated at the ends.

    Position i takes the median of ``values[i - window // 2 : i - window // 2 + window]`` (cut at
    both ends of the array): the numbers of ``numpy.nanmedian`` over the NaN-padded sliding windows,
    which this replaces. The window's values are kept sorted as it slides (one insertion and one
    removal per position, by bisection), so each median is a lookup: O(n w) memory moves in place
    of a partition of every window. A median is a selection, or the mean of the two middle values,
    ``(a + b) / 2`` as :func:`numpy.median` computes it, so the doubles are the same.

    Parameters
    ----------
    values : numpy.ndarray
        1-D, finite (non-finite input takes the padded ``nanmedian``).
    window : int
        Window width, at least 1.

    Returns
    -------
    numpy.ndarray
        The running median, one per value.
    """
    x = np.asarray(values, dtype=float)
    n = x.size
    if window < 1:
        raise ValueError("window must be >= 1")
    half = window // 2
    if n == 0:
        return np.empty(0)
    if not np.isfinite(x).all():
        padded = np.lib.stride_tricks.sliding_window_view(
            np.pad(x, (half, window - 1 - half), constant_values=np.nan), window
        )
        return np.nanmedian(padded, axis=1)
    items = x.tolist()
    out = np.empty(n)
    ordered: list[float] = []
    lo = hi = 0  # ordered holds items[lo:hi], sorted
    for i in range(n):
        # both ends of the window only move right
        stop = min(n, i - half + window)
        while hi < stop:
            bisect.insort(ordered, items[hi])
            hi += 1
        begin = max(0, i - half)
        while lo < begin:
            del ordered[bisect.bisect_left(ordered, items[lo])]
            lo += 1
        size = hi - lo
        middle = size // 2
        out[i] = ordered[middle] if size % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return out


def mean_sd(values: pd.DataFrame, window: int | None = None) -> pd.DataFrame:
    """Data of a mean-sd plot (the ``vsn::meanSdPlot`` convention).

    Genes are ordered by the mean of their values; the running median of the
    per-gene standard deviation is taken over windows of consecutive ranks.
    A flat running median means the variance no longer depends on the mean.

    Parameters
    ----------
    values : pandas.DataFrame
        Genes x samples (raw, normalised or stabilised values).
    window : int, optional
        Width, in genes, of the centred running window; default
        ``max(1, n_genes // 50)``, i.e. 2% of the genes, the resolution of
        ``vsn::meanSdPlot`` (which takes medians in 50 bins of ranks).
        At the ends the window is truncated.

    Returns
    -------
    pandas.DataFrame
        One row per gene with finite mean and sd, sorted by mean:
        ``gene_id``, ``rank_of_mean`` (1-based), ``mean``, ``sd``
        (sample standard deviation), ``running_median_sd``.
    """
    v = values.to_numpy(dtype=float)
    mean = np.nanmean(v, axis=1) if v.size else np.array([])
    sd = np.nanstd(v, axis=1, ddof=1) if v.shape[1] > 1 else np.full(v.shape[0], np.nan)
    ok = np.isfinite(mean) & np.isfinite(sd)
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(mean[idx], kind="stable")]
    n = order.size
    if window is None:
        window = max(1, n // 50)
    if window < 1:
        raise ValueError("window must be >= 1")
    sd_sorted = sd[order]
    run = running_median(sd_sorted, window)
    return pd.DataFrame(
        {
            "gene_id": values.index.to_numpy()[order],
            "rank_of_mean": np.arange(1, n + 1),
            "mean": mean[order],
            "sd": sd_sorted,
            "running_median_sd": run,
        }
    )
