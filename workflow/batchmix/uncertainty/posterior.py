"""Exact grid posterior of every gene of a one-variance-component LMM.

The exact Bayesian posterior of a model with **one** variance component
(``(1 | batch)``, ``(0 + x | batch)`` or a known covariance ``K``), with a flat prior on the
fixed effects, ``p(σ²) ∝ 1/σ²`` and a proper prior on the variance ratio
``λ = σ_b² / σ²``:

- ``"unif_icc"`` (default): ICC = λ/(1+λ) ~ Uniform(0, 1), i.e. ``p(λ) = (1+λ)⁻²``;
- ``"half_cauchy"``: σ_b/σ ~ half-Cauchy(0, s), i.e.
  ``p(λ) = 1 / (π s √λ (1 + λ/s²))`` (s = ``prior_scale``, default 1; ICC ~ Beta(½, ½) for s = 1).

With ``V_λ = I + λ K`` (``K = Z Zᵀ``), ``A = Xᵀ V_λ⁻¹ X``, ``β̂_λ = A⁻¹ Xᵀ V_λ⁻¹ y``,
``S_λ = (y − Xβ̂_λ)ᵀ V_λ⁻¹ (y − Xβ̂_λ)`` and ``ν = n − p``, the marginal posterior is
``p(λ | y) ∝ p(λ) |V_λ|^(−1/2) |A|^(−1/2) S_λ^(−ν/2)``; given λ, ``σ² ~ Inv-Gamma(ν/2, S_λ/2)``
and ``β ~ t_ν(β̂_λ, (S_λ/ν) A⁻¹)``. The one-dimensional integral over ``t = log λ`` (density
``p(λ | y)·λ``, the change of variable) is done on a per-gene grid for all genes at once, with
the EMMA / FaST-LMM rotation: with ``K = U D Uᵀ`` every gene's ``V_λ⁻¹`` quadratic forms are
weighted sums over the rank of ``K`` (the number of batches for ``(1 | batch)``).
Means and SDs are mixtures over the grid; quantiles of β, σ and σ_b solve the mixture's
(smooth) CDF, and quantiles of the ICC come from a spline-refined CDF of ``log λ``.
"""

from __future__ import annotations

import functools
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import special

from ..defaults import DEFAULT_SEED
from ..design import fixed_design, parse_formula, random_design
from ..lmm import missing
from ..lmm.core import crossproduct_eigen
from .multicomp import DIAGNOSTIC_COLUMNS, design_for, importance_posterior
from .priors import BRMS_DEFAULT, PRIORS, log_prior_lambda

__all__ = [
    "PRIORS",
    "SUMMARY_COLUMNS",
    "PosteriorGrid",
    "PosteriorResult",
    "log_prior_lambda",
    "posterior",
    "posterior_arrays",
    "posterior_draws",
    "quantile_columns",
    "single_component",
]

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["gene_id", "param", "status", "mean", "sd", "q2.5", "q50", "q97.5"]

# Coarse grid over t = log λ that locates each gene's posterior mass. It is wide enough for
# the half-Cauchy prior, whose density in t decays only as exp(t/2) when λ → 0.
_T_COARSE = np.arange(-50.0, 25.0 + 1e-9, 0.5)
# Per gene, the fine grid spans where the coarse log density (in t) is within this of its max.
_LOG_DENSITY_DROP = 32.0
# Refinement factor of the spline-interpolated log density used for the ICC quantiles.
_REFINE = 16


# ----------------------------------------------------------------------------------------------
# Standard distributions tabulated for fast, smooth mixture CDFs
# ----------------------------------------------------------------------------------------------


class _Base:
    """A standard distribution on the real line with cdf, pdf and ppf.

    When its central range (probabilities 1e-15 … 1 − 1e-15) is short enough, the CDF is a
    cubic Hermite interpolant of exact values and densities on a uniform table (error < 1e-12),
    which is many times faster than the special functions and exactly as smooth.
    """

    def __init__(self, cdf, pdf, ppf, n_table: int = 16001, max_width: float = 400.0):
        self._cdf, self._pdf, self._ppf = cdf, pdf, ppf
        lo, hi = float(ppf(1e-15)), float(ppf(1.0 - 1e-15))
        self.tabulated = np.isfinite(lo) and np.isfinite(hi) and (hi - lo) < max_width
        if self.tabulated:
            self.h = (hi - lo) / (n_table - 1)
            grid = np.linspace(lo, hi, n_table)
            F, f = cdf(grid), pdf(grid) * self.h
            # cubic Hermite interpolant of F on each cell, in the local coordinate s ∈ [0, 1];
            # outside [lo, hi] the CDF is 0 or 1 to within 1e-15 (the end cells are padded flat)
            F0, F1, f0, f1 = F[:-1], F[1:], f[:-1], f[1:]

            def pad(a, v):
                return np.concatenate([[v], a, [v]])

            self._c0 = pad(F0, 0.0)
            self._c0[-1] = 1.0
            self._c1 = pad(f0, 0.0)
            self._c2 = pad(3 * (F1 - F0) - 2 * f0 - f1, 0.0)
            self._c3 = pad(2 * (F0 - F1) + f0 + f1, 0.0)
            self._last = len(self._c0) - 1
            self.lo = lo - self.h
            self.hi = hi + self.h

    def cdf_pdf(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.tabulated:
            return self._cdf(u), self._pdf(u)
        pos = np.clip(u, self.lo, self.hi)
        pos -= self.lo
        pos *= 1.0 / self.h
        i = pos.astype(np.intp)
        np.minimum(i, self._last, out=i)
        s = pos
        s -= i
        c0, c1, c2, c3 = self._c0[i], self._c1[i], self._c2[i], self._c3[i]
        # Horner: cdf = c0 + s (c1 + s (c2 + s c3)); pdf = (c1 + s (2 c2 + 3 s c3)) / h
        dens = c3 * (3.0 / self.h)
        dens *= s
        dens += c2 * (2.0 / self.h)
        dens *= s
        dens += c1 * (1.0 / self.h)
        c3 *= s
        c3 += c2
        c3 *= s
        c3 += c1
        c3 *= s
        c3 += c0
        return c3, np.maximum(dens, 0.0, out=dens)

    def ppf(self, p):
        return self._ppf(p)


def _student_t(nu: float) -> _Base:
    return _Base(
        lambda u: special.stdtr(nu, u),
        lambda u: np.exp(
            special.gammaln((nu + 1) / 2)
            - special.gammaln(nu / 2)
            - 0.5 * np.log(nu * np.pi)
            - (nu + 1) / 2 * np.log1p(u * u / nu)
        ),
        lambda p: special.stdtrit(nu, p),
    )


def _log_gamma(a: float) -> _Base:
    """Distribution of ``v = log g`` for ``g ~ Gamma(a, 1)``."""
    return _Base(
        lambda v: special.gammainc(a, np.exp(v)),
        lambda v: np.exp(a * v - np.exp(v) - special.gammaln(a)),
        lambda p: np.log(special.gammaincinv(a, p)),
    )


def _solve_increasing(
    cdf_pdf, p: float, lo: np.ndarray, hi: np.ndarray, x0: np.ndarray, max_iter: int = 60
) -> np.ndarray:
    """Solve ``F_g(x) = p`` for every row g of an increasing function, all rows at once.

    Safeguarded Newton: steps that leave the bracket ``[lo, hi]`` (which must contain the root)
    are replaced by bisection. A row stops when ``|F − p| < 1e-12`` or its Newton step is below
    ``1e-10`` of the initial bracket.

    Parameters
    ----------
    cdf_pdf : callable
        ``cdf_pdf(rows, x) -> (F, dF/dx)`` for the rows ``rows`` (integer indices) at ``x``.
    """
    lo, hi, x = lo.copy(), hi.copy(), x0.copy()
    xtol = 1e-10 * np.maximum(hi - lo, 1e-300)
    active = np.isfinite(x) & np.isfinite(lo) & np.isfinite(hi)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        xa = x[idx]
        F, f = cdf_pdf(idx, xa)
        err = F - p
        below = err < 0
        lo[idx] = np.where(below, np.maximum(lo[idx], xa), lo[idx])
        hi[idx] = np.where(below, hi[idx], np.minimum(hi[idx], xa))
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = err / f
        step = xa - delta
        bad = ~np.isfinite(step) | (step <= lo[idx]) | (step >= hi[idx])
        step = np.where(bad, 0.5 * (lo[idx] + hi[idx]), step)
        done = (np.abs(err) < 1e-12) | (~bad & (np.abs(delta) < xtol[idx])) | (hi[idx] - lo[idx] < xtol[idx])
        x[idx] = np.where(np.abs(err) < 1e-12, xa, step)
        active[idx[done]] = False
    return x


def _mixture_quantiles(
    base: _Base, w: np.ndarray, loc: np.ndarray, scale: np.ndarray | None, probs: np.ndarray
) -> np.ndarray:
    """Quantiles of per-row mixtures ``Σ_k w_k · base((x − loc_k)/scale_k)``, all rows at once.

    The mixture's quantile lies between its components' quantiles (the bracket); Newton starts
    at their weighted mean.

    Parameters
    ----------
    w, loc, scale : (G, K) arrays; ``w`` rows sum to 1; ``scale=None`` means 1.
    probs : (P,) probabilities.

    Returns
    -------
    (G, P) array.
    """

    def cdf_pdf(idx, x):
        if scale is None:
            F, f = base.cdf_pdf(x[:, None] - loc[idx])
            return np.einsum("gk,gk->g", w[idx], F), np.einsum("gk,gk->g", w[idx], f)
        sc = scale[idx]
        F, f = base.cdf_pdf((x[:, None] - loc[idx]) / sc)
        return np.einsum("gk,gk->g", w[idx], F), np.einsum("gk,gk->g", w[idx] / sc, f)

    out = np.empty((w.shape[0], len(probs)))
    for j, p in enumerate(probs):
        zq = float(base.ppf(p))
        comp = loc + (zq if scale is None else scale * zq)
        out[:, j] = _solve_increasing(cdf_pdf, p, comp.min(axis=1), comp.max(axis=1), np.einsum("gk,gk->g", w, comp))
    return out


# ----------------------------------------------------------------------------------------------
# The grid posterior on arrays
# ----------------------------------------------------------------------------------------------


@dataclass
class PosteriorGrid:
    """The per-gene grid over ``t = log λ`` behind a posterior summary (for figures and checks).

    Attributes
    ----------
    t : numpy.ndarray
        ``(G, K)`` grid points ``log λ`` (uniform per gene).
    weight : numpy.ndarray
        ``(G, K)`` normalised trapezoid weights of the posterior density of ``t``.
    log_density : numpy.ndarray
        ``(G, K)`` unnormalised log posterior density of ``t`` (prior × likelihood × λ).
    beta : numpy.ndarray
        ``(G, K, p)`` conditional posterior locations ``β̂_λ``.
    beta_scale : numpy.ndarray
        ``(G, K, p)`` conditional scales ``sqrt(S_λ/ν · [A⁻¹]_jj)`` of the t distributions.
    S : numpy.ndarray
        ``(G, K)`` ``S_λ``.
    nu : numpy.ndarray
        ``(G,)`` degrees of freedom ``n − p``.
    """

    t: np.ndarray
    weight: np.ndarray
    log_density: np.ndarray
    beta: np.ndarray
    beta_scale: np.ndarray
    S: np.ndarray
    nu: np.ndarray


def _rotation(Z: np.ndarray | None, K: np.ndarray | None, n: int, rtol: float = 1e-10):
    """Eigenvectors ``U_r`` and eigenvalues ``d`` (> 0) of ``K = Z Zᵀ`` (or the given K)."""
    if (Z is None) == (K is None):
        raise ValueError("give exactly one of Z (random-effect design) or K (known covariance)")
    if Z is not None:
        Z = np.asarray(Z, dtype=float)
        if Z.shape[0] != n:
            raise ValueError(f"Z has {Z.shape[0]} rows for {n} samples")
        # the engine's rotation: Z'Z = Qz diag(d) Qz', so K = Z Z' = U diag(d) U' with U = Z Qz / √d
        d, Qz = crossproduct_eigen(Z.T @ Z)
        keep = d > rtol * max(d.max(initial=0.0), 1e-300)
        if not keep.any():
            raise ValueError("the random-effect covariance is zero")
        return Z @ Qz[:, keep] / np.sqrt(d[keep]), d[keep]
    else:
        K = np.asarray(K, dtype=float)
        if K.shape != (n, n):
            raise ValueError(f"K must be {n}×{n}, got {K.shape}")
        if not np.allclose(K, K.T, atol=1e-10 * max(1.0, np.abs(K).max())):
            raise ValueError("K must be symmetric")
        d, U = np.linalg.eigh(K)
        if d.min() < -1e-8 * max(1.0, d.max()):
            raise ValueError("K must be positive semi-definite")
    keep = d > rtol * max(d.max(initial=0.0), 1e-300)
    if not keep.any():
        raise ValueError("the random-effect covariance is zero")
    return U[:, keep], d[keep]


class _Rotated:
    """Sufficient quantities of every gene for ``V_λ⁻¹`` forms: ``O(r)`` work per gene and λ."""

    def __init__(self, Y: np.ndarray, X: np.ndarray, U: np.ndarray, d: np.ndarray):
        n, p = X.shape
        self.n, self.p, self.d = n, p, d
        self.nu = n - p
        # Fit OLS first and work with its residuals: GLS is equivariant, so β̂_λ(y) = β_ols +
        # β̂_λ(r) and S_λ(y) = S_λ(r), and no large mean cancels in S_λ.
        Q, R = np.linalg.qr(X)
        self.yy = np.maximum(np.einsum("ij,ij->j", Y, Y), 1e-300)
        self.beta_ols = np.linalg.solve(R, Q.T @ Y).T  # (G, p)
        res = Y - Q @ (Q.T @ Y)
        self.Xt = U.T @ X  # (r, p)
        Xperp = X - U @ self.Xt
        self.Cxx = Xperp.T @ Xperp
        self.Rt = U.T @ res  # (r, G)
        Rperp = res - U @ self.Rt
        self.Cxy = (Xperp.T @ Rperp).T  # (G, p)
        self.Cyy = np.einsum("ij,ij->j", Rperp, Rperp)
        self.XX = np.einsum("ip,iq->ipq", self.Xt, self.Xt).reshape(len(d), p * p)
        self.Rt2 = self.Rt**2

    def at(self, t: np.ndarray):
        """Per-gene conditional quantities at ``log λ = t`` (shape (G,)).

        Returns ``log|V|, log|A|, β̂ (G,p) (of the residuals), diag A⁻¹ (G,p), S (G,)``.
        """
        lam = np.exp(t)
        W = 1.0 / (1.0 + self.d[:, None] * lam[None, :])  # (r, G)
        logdetV = np.log1p(self.d[:, None] * lam[None, :]).sum(axis=0)
        G = W.shape[1]
        p = self.p
        A = self.Cxx[None] + (W.T @ self.XX).reshape(G, p, p)
        b = self.Cxy + (W * self.Rt).T @ self.Xt
        q = self.Cyy + np.einsum("ig,ig->g", W, self.Rt2)
        if p == 1:
            logdetA = np.log(A[:, 0, 0])
            Ainv = 1.0 / A
        elif p == 2:  # closed form: faster than batched LAPACK calls for 2 × 2
            det = A[:, 0, 0] * A[:, 1, 1] - A[:, 0, 1] * A[:, 1, 0]
            logdetA = np.log(det)
            Ainv = np.empty_like(A)
            Ainv[:, 0, 0] = A[:, 1, 1] / det
            Ainv[:, 1, 1] = A[:, 0, 0] / det
            Ainv[:, 0, 1] = -A[:, 0, 1] / det
            Ainv[:, 1, 0] = -A[:, 1, 0] / det
        else:
            L = np.linalg.cholesky(A)
            logdetA = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
            Ainv = np.linalg.inv(A)
        beta = np.einsum("gpq,gq->gp", Ainv, b)
        S = q - np.einsum("gp,gp->g", b, beta)
        return logdetV, logdetA, beta, np.diagonal(Ainv, axis1=1, axis2=2).copy(), S

    def at_shared(self, t: np.ndarray):
        """Log posterior terms on a grid shared by all genes: ``(len(t), G)`` arrays."""
        lam = np.exp(t)
        W = 1.0 / (1.0 + self.d[None, :] * lam[:, None])  # (K, r)
        logdetV = np.log1p(self.d[None, :] * lam[:, None]).sum(axis=1)  # (K,)
        p = self.p
        A = self.Cxx[None] + (W @ self.XX).reshape(len(t), p, p)
        sign, logdetA = np.linalg.slogdet(A)
        Ainv = np.linalg.inv(A)
        q = self.Cyy[None, :] + W @ self.Rt2  # (K, G)
        # b_k = Cxy + Xtᵀ diag(w_k) Rt  → (K, G, p)
        b = self.Cxy[None] + np.einsum("ki,ip,ig->kgp", W, self.Xt, self.Rt, optimize=True)
        S = q - np.einsum("kgp,kpq,kgq->kg", b, Ainv, b, optimize=True)
        return logdetV, logdetA, S


def _log_density_t(t, logdetV, logdetA, S, nu, prior, scale):
    """Unnormalised log posterior density of ``t = log λ`` (includes the Jacobian λ)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = log_prior_lambda(t, prior, scale) + t - 0.5 * logdetV - 0.5 * logdetA - 0.5 * nu * np.log(S)
    return np.where(S > 0, out, -np.inf)


@functools.lru_cache(maxsize=8)
def _spline_matrix(K: int, refine: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cubic-spline interpolation matrices from K uniform nodes on [0,1] to a refined grid.

    Returns the refined points ``zf``, the value matrix ``M`` (``Kf × K``) and the derivative
    matrix ``Md`` (d/dz) of the not-a-knot cubic spline through the nodes.
    """
    from scipy.interpolate import CubicSpline

    z = np.linspace(0.0, 1.0, K)
    zf = np.linspace(0.0, 1.0, (K - 1) * refine + 1)
    spline = CubicSpline(z, np.eye(K), axis=0)
    return zf, spline(zf), spline.derivative()(zf)


def posterior_arrays(
    Y: np.ndarray,
    X: np.ndarray,
    Z: np.ndarray | None = None,
    K: np.ndarray | None = None,
    prior: str = "unif_icc",
    prior_scale: float = 1.0,
    n_grid: int = 64,
    probs: tuple[float, ...] = (0.025, 0.5, 0.975),
    keep_grid: bool = False,
    chunk_size: int = 2000,
    n_threads: int = 1,
) -> dict:
    """Exact grid posterior for a single-variance-component LMM, every column of ``Y`` at once.

    The model is ``y = Xβ + u + e`` with ``u ~ N(0, σ_b² K)`` (``K = Z Zᵀ`` when ``Z`` is given)
    and ``e ~ N(0, σ² I)``; priors: ``p(β) ∝ 1``, ``p(σ²) ∝ 1/σ²``, ``p(λ)`` as ``prior``
    (see :func:`log_prior_lambda`). All columns share X and K (complete data).

    Parameters
    ----------
    Y : numpy.ndarray
        ``n × G`` responses (no missing values).
    X : numpy.ndarray
        ``n × p`` full-rank fixed-effect design.
    Z, K : numpy.ndarray, optional
        Exactly one: the ``n × q`` random-effect design of the single component, or the known
        ``n × n`` covariance (e.g. a kinship matrix).
    prior : {"unif_icc", "half_cauchy"}
        Prior on λ = σ_b²/σ².
    prior_scale : float
        Scale of the half-Cauchy prior on σ_b/σ.
    n_grid : int
        Points of each gene's grid over ``log λ`` (it spans where the posterior density of
        ``log λ`` is above ``exp(−32)`` times its maximum). With 64, means, SDs and quantiles agree
        with a dense 8,000-point brute force to ≤ 0.002 posterior SD (β and σ to ~1e-6; the tests).
    probs : tuple of float
        Quantile probabilities.
    keep_grid : bool
        Also return the :class:`PosteriorGrid` (memory ``G × n_grid × p``).
    chunk_size : int
        Genes per block (bounds memory: about ``chunk_size × 1.2`` MB).
    n_threads : int
        Blocks run in this many threads (numpy releases the GIL). Results do not depend on it.

    Returns
    -------
    dict
        ``"params"``: parameter keys ``"beta:<j>"``, ``"sigma"``, ``"sd_b"``, ``"ICC"``, each a dict
        of ``mean``, ``sd`` ``(G,)`` and ``quantiles`` ``(G, len(probs))``; ``"ok"``: ``(G,)`` bool
        (False where ``S_λ`` is not positive, e.g. a constant gene; those genes are NaN);
        ``"nu"``: degrees of freedom; ``"grid"``: a :class:`PosteriorGrid` or None.
    """
    Y = np.asarray(Y, dtype=float)
    X = np.asarray(X, dtype=float)
    if Y.ndim == 1:
        Y = Y[:, None]
    n, G = Y.shape
    if X.shape[0] != n:
        raise ValueError(f"X has {X.shape[0]} rows for {n} samples")
    p = X.shape[1]
    if np.linalg.matrix_rank(X) < p:
        raise ValueError("X is rank deficient")
    nu = n - p
    if nu < 3:
        raise ValueError(f"need n − p ≥ 3 for posterior SDs, got {nu}")
    if not np.isfinite(Y).all():
        raise ValueError("Y has missing or infinite values; use posterior() for genes with missing values")
    log_prior_lambda(np.zeros(1), prior, prior_scale)  # validates the prior
    probs = np.asarray(probs, dtype=float)
    U, d = _rotation(Z, K, n)
    tbase = _student_t(nu)
    gbase = _log_gamma(nu / 2.0)
    zf, M, Md = _spline_matrix(n_grid, _REFINE)
    keys = [f"beta:{j}" for j in range(p)] + ["sigma", "sd_b", "ICC"]
    res = {
        k: {"mean": np.full(G, np.nan), "sd": np.full(G, np.nan), "quantiles": np.full((G, len(probs)), np.nan)}
        for k in keys
    }
    ok = np.zeros(G, dtype=bool)
    grids = []
    slices = [slice(start, min(G, start + chunk_size)) for start in range(0, G, chunk_size)]

    def run(sl):
        return _posterior_chunk(
            np.ascontiguousarray(Y[:, sl]),
            X,
            U,
            d,
            prior,
            prior_scale,
            n_grid,
            probs,
            tbase,
            gbase,
            (M, Md),
            zf,
            keep_grid,
        )

    if n_threads > 1 and len(slices) > 1:
        # numpy and BLAS release the GIL: gene blocks run in parallel threads
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            chunks = list(pool.map(run, slices))
    else:
        chunks = [run(sl) for sl in slices]
    for sl, chunk in zip(slices, chunks):
        ok[sl] = chunk["ok"]
        for k in keys:
            for field_ in ("mean", "sd", "quantiles"):
                res[k][field_][sl] = chunk["params"][k][field_]
        if keep_grid:
            grids.append(chunk["grid"])
    grid = None
    if keep_grid:
        grid = PosteriorGrid(
            *(
                np.concatenate([getattr(g, f) for g in grids])
                for f in ("t", "weight", "log_density", "beta", "beta_scale", "S", "nu")
            )
        )
    return {"params": res, "ok": ok, "nu": nu, "grid": grid, "probs": probs}


def _posterior_chunk(Y, X, U, d, prior, scale, n_grid, probs, tbase, gbase, splines, zf, keep_grid):
    M, Md = splines
    n, G = Y.shape
    p = X.shape[1]
    nu = n - p
    rot = _Rotated(Y, X, U, d)
    # 1. coarse pass on a grid shared by all genes: where is each gene's mass?
    tc = _T_COARSE
    logdetV, logdetA, S = rot.at_shared(tc)
    rss = rot.Cyy + rot.Rt2.sum(axis=0)
    # a gene fitted exactly by X (e.g. constant) has no posterior
    ok = (rss > 1e-20 * rot.yy) & (S > 1e-12 * rss[None, :]).all(axis=0)
    lpc = _log_density_t(
        tc[:, None], logdetV[:, None], logdetA[:, None], np.where(ok, S, 1.0), nu, prior, scale
    )  # (Kc, G)
    lpmax = lpc.max(axis=0)
    inside = lpc >= (lpmax - _LOG_DENSITY_DROP)[None, :]
    first = np.argmax(inside, axis=0)
    last = len(tc) - 1 - np.argmax(inside[::-1], axis=0)
    lo = np.where(ok, tc[np.maximum(first - 1, 0)], -1.0)
    hi = np.where(ok, tc[np.minimum(last + 1, len(tc) - 1)], 1.0)
    # 2. fine pass: n_grid uniform points per gene over [lo, hi]
    z = np.linspace(0.0, 1.0, n_grid)
    T = lo[:, None] + (hi - lo)[:, None] * z[None, :]  # (G, K)
    LP = np.empty((G, n_grid))
    B = np.empty((G, n_grid, p))
    AD = np.empty((G, n_grid, p))
    SS = np.empty((G, n_grid))
    for k in range(n_grid):
        lv, la, beta, adiag, s = rot.at(T[:, k])
        s = np.where(ok, s, 1.0)
        LP[:, k] = _log_density_t(T[:, k], lv, la, s, nu, prior, scale)
        B[:, k] = beta
        AD[:, k] = adiag
        SS[:, k] = s
    ok &= np.isfinite(LP).all(axis=1) & (SS > 0).all(axis=1)
    LP = np.where(ok[:, None], LP, 0.0)
    SS = np.where(ok[:, None], SS, 1.0)
    AD = np.where(ok[:, None, None], AD, 1.0)
    # trapezoid weights on the uniform grid (the ends carry < exp(−drop) of the peak density)
    trap = np.ones(n_grid)
    trap[[0, -1]] = 0.5
    Wt = np.exp(LP - LP.max(axis=1, keepdims=True)) * trap
    Wt /= Wt.sum(axis=1, keepdims=True)
    lam = np.exp(T)
    loc = B + rot.beta_ols[:, None, :]
    bscale = np.sqrt(SS[:, :, None] / nu * AD)
    out: dict = {}
    # fixed effects: mixtures over the grid of t_ν(β̂_λ, (S_λ/ν) [A⁻¹]_jj)
    for j in range(p):
        m = (Wt * loc[:, :, j]).sum(axis=1)
        ex2 = (Wt * (bscale[:, :, j] ** 2 * nu / (nu - 2) + loc[:, :, j] ** 2)).sum(axis=1)
        q = _mixture_quantiles(tbase, Wt, loc[:, :, j], bscale[:, :, j], probs)
        out[f"beta:{j}"] = {"mean": m, "sd": np.sqrt(np.maximum(ex2 - m * m, 0.0)), "quantiles": q}
    # the posterior CDF of t on a spline-refined grid (the log density is smooth in t)
    LPf = LP @ M.T  # (G, Kf)
    dens = np.exp(LPf - LPf.max(axis=1, keepdims=True))
    cdf = np.concatenate([np.zeros((G, 1)), np.cumsum(0.5 * (dens[:, 1:] + dens[:, :-1]), axis=1)], axis=1)
    total = cdf[:, -1:].copy()
    cdf /= total
    dens /= total  # now dΦ/dk, the density per refined-grid step
    # σ² | λ ~ Inv-Gamma(ν/2, S_λ/2), i.e. σ² = S_λ / (2g) with g ~ Gamma(ν/2) independent of λ
    c_sig = math.exp(special.gammaln((nu - 1) / 2) - special.gammaln(nu / 2))
    m = (Wt * np.sqrt(SS / 2.0) * c_sig).sum(axis=1)
    ex2 = (Wt * SS / (nu - 2)).sum(axis=1)
    # log σ = (log(S/2) − v)/2 with v = log g: quantile p of σ ↔ quantile 1 − p of v − log(S/2),
    # a mixture over the grid of shifted log-gamma laws
    logc = np.log(SS / 2.0)
    qv = _mixture_quantiles(gbase, Wt, -logc, None, 1.0 - probs)
    out["sigma"] = {"mean": m, "sd": np.sqrt(np.maximum(ex2 - m * m, 0.0)), "quantiles": np.exp(-qv / 2.0)}
    # σ_b² = λ σ² = exp(v(t)) / g with v(t) = log(λ S_λ / 2), increasing in t. Its CDF is
    # P(σ_b ≤ x) = E_g[Φ(v⁻¹(log g + 2 log x))], Φ the posterior CDF of t: the expectation of a
    # smooth function over the fixed log-gamma law. (A mixture over the t grid would be a comb of
    # narrow components where the posterior of t is wide.)
    m = (Wt * np.sqrt(lam * SS / 2.0) * c_sig).sum(axis=1)
    ex2 = (Wt * lam * SS / (nu - 2)).sum(axis=1)
    out["sd_b"] = {
        "mean": m,
        "sd": np.sqrt(np.maximum(ex2 - m * m, 0.0)),
        "quantiles": _sd_b_quantiles(T + logc, M, Md, cdf, dens, Wt, gbase, probs),
    }
    # ICC = λ/(1+λ), a function of t only: quantiles of t from its refined CDF
    icc = special.expit(T)
    m = (Wt * icc).sum(axis=1)
    ex2 = (Wt * icc * icc).sum(axis=1)
    tq = np.empty((G, len(probs)))
    for j, pr in enumerate(probs):  # invert the refined CDF (increasing rows) by linear interpolation
        idx = np.clip((cdf < pr).sum(axis=1) - 1, 0, len(zf) - 2)
        c0 = np.take_along_axis(cdf, idx[:, None], 1)[:, 0]
        c1 = np.take_along_axis(cdf, idx[:, None] + 1, 1)[:, 0]
        frac = np.clip((pr - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.0, 1.0)
        tq[:, j] = lo + (hi - lo) * (zf[idx] + frac * (zf[idx + 1] - zf[idx]))
    out["ICC"] = {"mean": m, "sd": np.sqrt(np.maximum(ex2 - m * m, 0.0)), "quantiles": special.expit(tq)}
    for k in out:
        for f in ("mean", "sd", "quantiles"):
            out[k][f][~ok] = np.nan
    grid = None
    if keep_grid:
        grid = PosteriorGrid(T, Wt, LP, loc, bscale, SS, np.full(G, float(nu)))
    return {"params": out, "ok": ok, "grid": grid}


def _hermite(f0, f1, d0, d1, s):
    """Cubic Hermite interpolant on [0, 1] (values f, slopes d in the local coordinate) and its slope."""
    s2 = s * s
    s3 = s2 * s
    val = (2 * s3 - 3 * s2 + 1) * f0 + (s3 - 2 * s2 + s) * d0 + (3 * s2 - 2 * s3) * f1 + (s3 - s2) * d1
    slope = (6 * s2 - 6 * s) * (f0 - f1) + (3 * s2 - 4 * s + 1) * d0 + (3 * s2 - 2 * s) * d1
    return val, slope


def _sd_b_quantiles(
    v: np.ndarray,
    M: np.ndarray,
    Md: np.ndarray,
    cdf: np.ndarray,
    dcdf: np.ndarray,
    Wt: np.ndarray,
    gbase: _Base,
    probs: np.ndarray,
    n_nodes: int = 32,
    Ku: int = 129,
) -> np.ndarray:
    """Quantiles of σ_b from ``P(σ_b ≤ e^y) = E_V[ψ(V + 2y)]``, ``ψ = Φ ∘ v⁻¹``, ``V = log g``.

    ``v`` (G, K) is ``log(λ S_λ / 2)`` on the grid; ``M``/``Md`` the spline value/derivative
    matrices to the refined grid where ``cdf`` (G, Kf) is the posterior CDF Φ of t and ``dcdf`` its
    slope per refined step. ψ and ψ' are tabulated on a uniform grid of ``Ku`` points in u per gene
    (cubic Hermite); the expectation over V uses ``n_nodes`` trapezoid nodes over its central range.
    """
    G, Kf = cdf.shape
    vf = np.maximum.accumulate(v @ M.T, axis=1)  # smooth and increasing (guard spline wiggles)
    dv = np.maximum((v @ Md.T) / (Kf - 1), 1e-300)  # dv per refined step
    u0 = vf[:, 0]
    hu = (vf[:, -1] - u0) / (Ku - 1)
    hu = np.where(hu > 0, hu, 1.0)
    ugrid = u0[:, None] + hu[:, None] * np.arange(Ku)[None, :]
    ar = np.arange(Kf, dtype=float)
    pos = np.empty((G, Ku))
    for g in range(G):  # v⁻¹ on the refined grid, as a fractional index (rows are short: cheap)
        pos[g] = np.interp(ugrid[g], vf[g], ar)
    i = np.minimum(pos.astype(np.intp), Kf - 2)
    s = pos - i

    def take(a, j):
        return np.take_along_axis(a, j, axis=1)

    psi, dpsi_dk = _hermite(take(cdf, i), take(cdf, i + 1), take(dcdf, i), take(dcdf, i + 1), s)
    dv_at = take(dv, i) * (1 - s) + take(dv, i + 1) * s
    dpsi = np.maximum(dpsi_dk, 0.0) / dv_at * hu[:, None]  # dψ per u step
    vlo, vhi = float(gbase.ppf(1e-14)), float(gbase.ppf(1.0 - 1e-14))
    V = np.linspace(vlo, vhi, n_nodes)
    omega = gbase._pdf(V) * np.where((np.arange(n_nodes) == 0) | (np.arange(n_nodes) == n_nodes - 1), 0.5, 1.0)
    omega /= omega.sum()
    psi_flat, dpsi_flat = psi.ravel(), dpsi.ravel()

    def cdf_pdf(idx, y):
        pos_u = (V[None, :] + 2.0 * y[:, None] - u0[idx, None]) / hu[idx, None]
        below, above = pos_u < 0, pos_u >= Ku - 1
        pos_u = np.clip(pos_u, 0.0, Ku - 1.0)
        j = np.minimum(pos_u.astype(np.intp), Ku - 2)
        s_u = pos_u - j
        flat = j + (idx * Ku)[:, None]
        val, slope = _hermite(psi_flat[flat], psi_flat[flat + 1], dpsi_flat[flat], dpsi_flat[flat + 1], s_u)
        val = np.where(below, 0.0, np.where(above, 1.0, val))
        slope = np.where(below | above, 0.0, slope) / hu[idx, None]
        return val @ omega, 2.0 * (slope @ omega)

    out = np.empty((G, len(probs)))
    # the bracket is where ψ is 0 (resp. 1) at every node; component quantiles give the start
    lo = (u0 - vhi) / 2.0 - 1e-9
    hi = (vf[:, -1] - vlo) / 2.0 + 1e-9
    for j, p in enumerate(probs):
        comp = (v - float(gbase.ppf(1.0 - p))) / 2.0
        x0 = np.clip(np.einsum("gk,gk->g", Wt, comp), lo, hi)
        out[:, j] = np.exp(_solve_increasing(cdf_pdf, p, lo, hi, x0))
    return out


# ----------------------------------------------------------------------------------------------
# The grid posterior on tables and formulas
# ----------------------------------------------------------------------------------------------


@dataclass
class PosteriorResult:
    """Grid posterior of every gene.

    Attributes
    ----------
    summary : pandas.DataFrame
        Tidy: ``gene_id, param, status, mean, sd, q2.5, q50, q97.5`` (one column per requested
        probability, named ``q<100·p>``). Params: ``b_<coef>`` (fixed effects), ``sigma``,
        ``sd_<group>__<term>`` and ``ICC``. ``status`` is ``ok``, ``failed:<reason>``,
        ``filtered:<...>`` (from ``gene_status``) or ``not_available:multiple_components``
        from the exact grid; with several variance components or ``prior="brms_default"`` the
        importance-sampling engine (:mod:`.multicomp`) adds ``cor_<group>__<t1>__<t2>`` and the
        variance fractions ``frac_<...>`` (the ``gene_fits`` names), and its statuses
        ``failed:importance_khat`` / ``failed:importance_ess``.
    prior : str
        The prior on λ.
    prior_scale : float
    formula : str
    grids : dict
        ``gene_id → (PosteriorGrid of that gene, coefficient names)`` for the genes asked for in
        ``keep_grid_for`` (figures).
    diagnostics : pandas.DataFrame or None
        Importance-sampling engine only: per gene ``gene_id, status, khat, ess, n_draws,
        prior_location, prior_scale``.
    """

    summary: pd.DataFrame
    prior: str
    prior_scale: float
    formula: str
    grids: dict = field(default_factory=dict)
    diagnostics: pd.DataFrame | None = None


def quantile_columns(probs) -> list[str]:
    """Column names of the quantiles: ``q2.5``, ``q50``, ``q97.5`` for 0.025, 0.5, 0.975."""
    return [f"q{100 * p:g}" for p in probs]


def single_component(formula: str, samples: pd.DataFrame):
    """The random-effect design of a one-component formula, or None when it has more.

    Returns
    -------
    (Z, group, term) or None
        ``Z`` is ``n × q``; a model qualifies when it has one bar term with one column
        (``(1 | g)`` or ``(0 + x | g)``).
    """
    rd = random_design(formula, samples)
    if len(rd.blocks) != 1 or rd.blocks[0].n_terms != 1:
        return None
    block = rd.blocks[0]
    return block.Z, block.group, block.terms[0]


def posterior(
    expression: pd.DataFrame,
    samples: pd.DataFrame,
    formula: str,
    prior: str = "unif_icc",
    prior_scale: float = 1.0,
    gene_status: pd.Series | None = None,
    probs: tuple[float, ...] = (0.025, 0.5, 0.975),
    n_grid: int = 64,
    keep_grid_for: list | None = None,
    K: np.ndarray | None = None,
    group_name: str = "K",
    n_draws: int = 4096,
    seed: int = DEFAULT_SEED,
) -> PosteriorResult:
    """Exact grid posterior of every gene of a one-variance-component model.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes × samples. A gene with missing values is fitted on its observed samples (genes
        sharing a missingness pattern are done together).
    samples : pandas.DataFrame
        Sample sheet indexed by sample id (the expression columns are looked up in it).
    formula : str
        lme4-style formula with one variance component, e.g. ``"~ Days + (1 | Subject)"``; with
        ``K`` given, only its fixed part is used.
    prior : {"unif_icc", "half_cauchy", "brms_default"}
        Prior on λ = σ_b²/σ² (see :func:`log_prior_lambda`), or brms 2.18's default priors
        for the formula (importance sampling, :mod:`.multicomp`). Models with several variance
        components (random slopes, several or crossed factors) always use importance sampling,
        with the λ prior on each SD ratio.
    prior_scale : float
        Scale of the half-Cauchy prior on σ_b/σ.
    gene_status : pandas.Series, optional
        Status per gene id; genes not ``"ok"`` get that status and NaNs.
    probs : tuple of float
        Quantile probabilities.
    n_grid : int
        Grid points per gene over ``log λ``.
    keep_grid_for : list, optional
        Gene ids whose grids are kept for figures (:func:`plot_posterior`).
    K : numpy.ndarray, optional
        A known ``n × n`` covariance of the random effect instead of the formula's bar term.
    group_name : str
        Name of the component when ``K`` is given (params ``sd_<group_name>__K``).
    n_draws : int
        Importance-sampling engine: Sobol points per gene (a power of 2).
    seed : int
        Importance-sampling engine: seed of the scrambled Sobol points.

    Returns
    -------
    PosteriorResult
    """
    expression = expression.astype(float)
    genes = [str(g) for g in expression.index]
    samples = samples.loc[list(expression.columns)]
    # an aliased column dropped from X is the design's UserWarning: it reaches the caller's log
    X, names = fixed_design(formula, samples)
    qcols = quantile_columns(probs)
    has_random = bool(parse_formula(formula).random)
    if K is None and has_random and (prior == BRMS_DEFAULT or single_component(formula, samples) is None):
        return _importance_posterior(
            expression, samples, formula, prior, prior_scale, gene_status, probs, n_draws, seed
        )
    if prior == BRMS_DEFAULT:
        raise ValueError("prior brms_default needs a formula with a random term (not a known K)")
    if K is not None:
        Zfull, group, term = None, group_name, "K"
    else:
        single = single_component(formula, samples)
        if single is None:
            n_terms = len(parse_formula(formula).random)
            reason = "not_available:multiple_components" if n_terms else "not_available:no_random_effect"
            params = [f"b_{c}" for c in names] + ["sigma"]
            summary = _summary_frame(genes, params, reason, qcols)
            return PosteriorResult(summary, prior, prior_scale, formula)
        Zfull, group, term = single
    params = [f"b_{c}" for c in names] + ["sigma", f"sd_{group}__{term}", "ICC"]
    keys = [f"beta:{j}" for j in range(len(names))] + ["sigma", "sd_b", "ICC"]
    status = np.array(["ok"] * len(genes), dtype=object)
    if gene_status is not None:
        gs = gene_status.reindex(expression.index).fillna(missing.NO_STATUS).astype(str).to_numpy()
        status = np.where(gs != "ok", gs, status)
    values = {k: np.full((len(genes), 2 + len(probs)), np.nan) for k in keys}
    grids: dict = {}
    keep = {str(g) for g in (keep_grid_for or [])}
    Yall = expression.to_numpy()
    for rows, cols in _fittable_patterns(Yall, X, status):
        try:
            if K is not None:
                kw = {"K": np.asarray(K, dtype=float)[np.ix_(cols, cols)]}
            else:
                kw = {"Z": Zfull[cols]}
            want = np.array([genes[r] in keep for r in rows])
            res = posterior_arrays(
                Yall[np.ix_(rows, cols)].T,
                X[cols],
                prior=prior,
                prior_scale=prior_scale,
                n_grid=n_grid,
                probs=probs,
                keep_grid=bool(want.any()),
                **kw,
            )
        except (ValueError, np.linalg.LinAlgError) as err:
            status[rows] = f"failed:{type(err).__name__}"
            continue
        for k in keys:
            r = res["params"][k]
            values[k][rows] = np.column_stack([r["mean"], r["sd"], r["quantiles"]])
        status[rows[~res["ok"]]] = missing.DEGENERATE
        if want.any():
            gr = res["grid"]
            for i in np.flatnonzero(want):
                grids[genes[rows[i]]] = (
                    PosteriorGrid(
                        gr.t[i], gr.weight[i], gr.log_density[i], gr.beta[i], gr.beta_scale[i], gr.S[i], gr.nu[i]
                    ),
                    list(names),
                )
    summary = _long_summary(genes, {param: values[k] for param, k in zip(params, keys)}, status, qcols)
    return PosteriorResult(summary, prior, prior_scale, formula, grids)


def _importance_posterior(expression, samples, formula, prior, prior_scale, gene_status, probs, n_draws, seed):
    """:func:`posterior` through :func:`.multicomp.importance_posterior`, pattern by pattern."""
    genes = [str(g) for g in expression.index]
    X, names, blocks, metadata = design_for(formula, samples)
    qcols = quantile_columns(probs)
    status = np.array(["ok"] * len(genes), dtype=object)
    if gene_status is not None:
        gs = gene_status.reindex(expression.index).fillna(missing.NO_STATUS).astype(str).to_numpy()
        status = np.where(gs != "ok", gs, status)
    Yall = expression.to_numpy()
    params: dict[str, np.ndarray] = {}
    diag = {k: np.full(len(genes), np.nan) for k in ("khat", "ess", "n_draws", "prior_location", "prior_scale")}
    for rows, cols in _fittable_patterns(Yall, X, status):
        sub = samples.iloc[cols]
        Xp, names_p, blocks_p, meta_p = (X[cols], names, [_subset_block(b, cols) for b in blocks], metadata)
        if len(cols) < len(samples):
            Xp, names_p, blocks_p, meta_p = design_for(formula, sub)
            if names_p != names:
                status[rows] = missing.TOO_FEW_OBSERVATIONS
                continue
        res = importance_posterior(
            Yall[np.ix_(rows, cols)].T,
            Xp,
            names_p,
            blocks_p,
            meta_p,
            prior=prior,
            prior_scale=prior_scale,
            probs=probs,
            n_draws=n_draws,
            seed=seed,
        )
        for k, v in res.params.items():
            params.setdefault(k, np.full((len(genes), 2 + len(probs)), np.nan))[rows] = v
        status[rows] = res.status
        diag["khat"][rows], diag["ess"][rows], diag["n_draws"][rows] = res.khat, res.ess, res.n_draws
        diag["prior_location"][rows], diag["prior_scale"][rows] = res.location, res.scale
    if not params:  # no gene fitted: the parameter names from the full design
        res = importance_posterior(np.zeros((len(samples), 0)), X, names, blocks, metadata, prior=prior, probs=probs)
        params = {k: np.full((len(genes), 2 + len(probs)), np.nan) for k in res.params}
    summary = _long_summary(genes, params, status, qcols)
    diagnostics = pd.DataFrame({"gene_id": genes, "status": status, **diag})[DIAGNOSTIC_COLUMNS]
    return PosteriorResult(summary, prior, prior_scale, formula, {}, diagnostics)


def _subset_block(block, cols):
    return type(block)(group=block.group, terms=block.terms, levels=block.levels, Z=block.Z[cols])


def _fittable_patterns(Y: np.ndarray, X: np.ndarray, status: np.ndarray):
    """The genes still ``ok`` grouped by their observed samples, as ``(rows, cols)``, for every group
    that can be fitted; ``status`` marks the others (all missing, or too few observations for X).

    Genes are grouped so that each group shares one design (:func:`batchmix.lmm.missing.group_by_missingness`).
    """
    patterns, all_missing = missing.group_by_missingness(Y, np.flatnonzero(status == missing.OK))
    status[all_missing] = missing.ALL_MISSING
    for pattern in patterns:
        rows, cols = pattern.rows, np.flatnonzero(pattern.observed)
        if len(cols) - X.shape[1] < 3 or np.linalg.matrix_rank(X[cols]) < X.shape[1]:
            status[rows] = missing.TOO_FEW_OBSERVATIONS
            continue
        yield rows, cols


def _long_summary(genes: list[str], values: dict[str, np.ndarray], status, qcols: list[str]) -> pd.DataFrame:
    """The posterior summary in long form, one row per gene and parameter, in gene then parameter order.

    ``values[param]`` is genes × (mean, sd, quantiles...).
    """
    frames = []
    for param, v in values.items():
        frame = pd.DataFrame({"gene_id": genes, "param": param, "status": status, "mean": v[:, 0], "sd": v[:, 1]})
        for j, c in enumerate(qcols):
            frame[c] = v[:, 2 + j]
        frames.append(frame)
    summary = pd.concat(frames, ignore_index=True)
    order = {g: i for i, g in enumerate(genes)}
    summary["_o"] = summary["gene_id"].map(order)
    summary["_p"] = summary["param"].map({p: i for i, p in enumerate(values)})
    return summary.sort_values(["_o", "_p"], kind="stable").drop(columns=["_o", "_p"]).reset_index(drop=True)


def _summary_frame(genes, params, status, qcols) -> pd.DataFrame:
    rows = [(g, p, status) for g in genes for p in params]
    frame = pd.DataFrame(rows, columns=["gene_id", "param", "status"])
    for c in ["mean", "sd"] + qcols:
        frame[c] = np.nan
    return frame


def posterior_draws(grid: PosteriorGrid, coef_names: list[str], n: int = 20000, seed: int = 1) -> pd.DataFrame:
    """Independent draws from one gene's grid posterior (for figures).

    ``t = log λ`` is drawn from the CDF of the spline-refined grid density, then σ² | λ ~ Inv-Gamma(ν/2, S_λ/2)
    and β | λ, σ² ~ N(β̂_λ, σ² [A⁻¹]) (equivalently β | λ ~ t_ν), with ``S_λ``, ``β̂_λ`` and the scales
    interpolated linearly between grid points.

    Parameters
    ----------
    grid : PosteriorGrid
        One gene's grid (1-D arrays), e.g. ``PosteriorResult.grids[gene][0]``.
    coef_names : list of str
        Fixed-effect names (columns ``b_<name>``).
    n : int
        Number of draws.
    seed : int
        Random seed.

    Returns
    -------
    pandas.DataFrame
        Columns ``b_<coef>...``, ``sigma``, ``sd``, ``ICC``.
    """
    rng = np.random.default_rng(seed)
    t = np.asarray(grid.t)
    # the log density is smooth in t: refine it with the cubic spline before drawing
    zf, M, _ = _spline_matrix(len(t), _REFINE)
    tf = t[0] + (t[-1] - t[0]) * zf
    lf = M @ np.asarray(grid.log_density)
    dens = np.exp(lf - lf.max())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]))])
    cdf /= cdf[-1]
    td = np.interp(rng.random(n), cdf, tf)
    nu = float(np.ravel(grid.nu)[0])
    S = np.interp(td, t, grid.S)
    sigma2 = S / (2.0 * rng.gamma(nu / 2.0, size=n))
    out = {}
    for j, name in enumerate(coef_names):
        loc = np.interp(td, t, grid.beta[:, j])
        sc = np.interp(td, t, grid.beta_scale[:, j])
        # β | λ, σ² ~ N(β̂, σ² A⁻¹_jj) with σ² A⁻¹_jj = sc² ν σ² / S
        out[f"b_{name}"] = loc + sc * np.sqrt(nu * sigma2 / S) * rng.standard_normal(n)
    out["sigma"] = np.sqrt(sigma2)
    lam = np.exp(td)
    out["sd"] = np.sqrt(lam * sigma2)
    out["ICC"] = lam / (1.0 + lam)
    return pd.DataFrame(out)
