"""One variance component: the EMMA / FaST-LMM rotation, all genes at once.

For a model with a single random term holding one θ (``(1|batch)``, ``(0 + x|g)``),
Var(y) = σ² (I + λ Z Z') with λ = θ². Rotating once by the eigenvectors of the
REML-projected S Z Z' S (S = I - X (X'X)⁻¹ X') turns every gene's REML criterion
into a function of λ built from k ≤ (number of levels) numbers per gene:

    r²(λ) = rss₀ - Σᵢ ηᵢ² λξᵢ / (1 + λξᵢ)              (ηᵢ: projections of y)
    REML:  f(λ) = Σᵢ log(1 + λξᵢ) + log|X'X|           (ξᵢ: non-zero eigenvalues of S Z Z' S)
    ML:    f(λ) = Σⱼ log(1 + λdⱼ)                       (dⱼ: eigenvalues of Z'Z)
    deviance(λ) = f(λ) + k (1 + log(2π r²(λ) / k)),    k = n - p (REML) or n (ML)

which is lme4's profiled deviance exactly. Each evaluation for all genes is one
(genes × k) @ (k × grid) product; the minimum is bracketed on a log grid and then
located by safeguarded Newton steps on the analytic derivative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._lmm_core import PreparedDesign


@dataclass
class OneComponent:
    """Rotations shared by all genes for a single-variance-component model."""

    QX: np.ndarray      # n × p orthonormal basis of X's columns
    U: np.ndarray       # n × k, eigenvectors of S Z Z' S with non-zero eigenvalue
    xi: np.ndarray      # k, those eigenvalues
    Qz: np.ndarray      # q × q eigenvectors of Z'Z
    d: np.ndarray       # q eigenvalues of Z'Z
    W: np.ndarray       # q × p, Qz' Z'X


def prepare_onecomp(prepared: PreparedDesign) -> OneComponent | None:
    """The rotation for a single-θ model, or None if the model has more parameters."""
    if prepared.m != 1:
        return None
    X, Z = prepared.X, prepared.Z
    QX, _ = np.linalg.qr(X)
    SZ = Z - QX @ (QX.T @ Z)
    xi_all, R = np.linalg.eigh(SZ.T @ SZ)
    keep = xi_all > 1e-10 * max(xi_all.max(initial=0.0), 1.0)
    xi = xi_all[keep]
    U = SZ @ R[:, keep] / np.sqrt(xi)
    d, Qz = np.linalg.eigh(prepared.ZtZ)
    d = np.clip(d, 0.0, None)
    return OneComponent(QX=QX, U=U, xi=xi, Qz=Qz, d=d, W=Qz.T @ prepared.ZtX)


@dataclass
class OneComponentState:
    """Per-gene quantities entering the one-component criterion."""

    rss0: np.ndarray    # G, OLS residual sum of squares
    eta2: np.ndarray    # G × k, squared projections on U
    wy: np.ndarray      # G × q, Qz' Z'y
    Xty: np.ndarray     # G × p


def gene_state(Y: np.ndarray, oc: OneComponent, prepared: PreparedDesign) -> OneComponentState:
    """Project every gene once, with a single pass of BLAS over Y."""
    p, k = oc.QX.shape[1], oc.U.shape[1]
    proj = Y @ np.column_stack([oc.QX, oc.U, prepared.Z @ oc.Qz, prepared.X])
    qx, eta = proj[:, :p], proj[:, p:p + k]
    wy, Xty = proj[:, p + k:-p], proj[:, -p:]
    yty = np.einsum("gi,gi->g", Y, Y)
    rss0 = yty - np.einsum("gp,gp->g", qx, qx)
    # ||y||² − ||Q'y||² cancels when the residual is tiny next to the mean: redo those
    # genes from explicit residuals
    inexact = rss0 < 1e-6 * yty
    if inexact.any():
        resid = Y[inexact] - (Y[inexact] @ oc.QX) @ oc.QX.T
        rss0[inexact] = np.einsum("gi,gi->g", resid, resid)
    return OneComponentState(rss0=rss0, eta2=eta * eta, wy=wy, Xty=Xty)


def _criterion_parts(lam: np.ndarray, st: OneComponentState, oc: OneComponent,
                     prepared: PreparedDesign, reml: bool):
    """f, f', f'', r², r²', r²'' at per-gene λ (shape G)."""
    lx = 1.0 + lam[:, None] * oc.xi[None, :]
    r2 = st.rss0 - np.einsum("gk,gk->g", st.eta2, lam[:, None] * oc.xi[None, :] / lx)
    r2_1 = -np.einsum("gk,gk->g", st.eta2, oc.xi[None, :] / lx ** 2)
    r2_2 = 2.0 * np.einsum("gk,gk->g", st.eta2, oc.xi[None, :] ** 2 / lx ** 3)
    ev = oc.xi if reml else oc.d
    le = 1.0 + lam[:, None] * ev[None, :]
    f = np.log(le).sum(1) + (prepared.logdet_XtX if reml else 0.0)
    f_1 = (ev[None, :] / le).sum(1)
    f_2 = -(ev[None, :] ** 2 / le ** 2).sum(1)
    return f, f_1, f_2, r2, r2_1, r2_2


def _k(prepared: PreparedDesign, reml: bool) -> int:
    return prepared.n - prepared.p if reml else prepared.n


def deviance_at(lam: np.ndarray, st: OneComponentState, oc: OneComponent,
                prepared: PreparedDesign, reml: bool) -> np.ndarray:
    """Profiled deviance (lme4 scale) at per-gene λ."""
    f, _, _, r2, _, _ = _criterion_parts(lam, st, oc, prepared, reml)
    k = _k(prepared, reml)
    r2 = np.where(r2 > 0, r2, np.nan)
    return f + k * (1.0 + np.log(2.0 * np.pi * r2 / k))


def optimise_lambda(st: OneComponentState, oc: OneComponent, prepared: PreparedDesign,
                    reml: bool, grid_size: int = 40, max_iter: int = 100) -> np.ndarray:
    """Per-gene λ ≥ 0 minimising the profiled deviance (G)."""
    G = st.rss0.shape[0]
    k = _k(prepared, reml)
    if oc.xi.size == 0:
        # Z lies in X's column space: REML carries no information on λ, ML prefers 0
        return np.zeros(G)
    lo_scale = 1e-6 / oc.xi.max()
    hi_scale = 1e8 / oc.xi.min()
    grid = np.concatenate([[0.0], np.geomspace(lo_scale, hi_scale, grid_size)])
    frac = grid[:, None] * oc.xi[None, :] / (1.0 + grid[:, None] * oc.xi[None, :])   # T × k
    r2 = st.rss0[:, None] - st.eta2 @ frac.T                                         # G × T
    ev = oc.xi if reml else oc.d
    f = np.log1p(grid[:, None] * ev[None, :]).sum(1) + (prepared.logdet_XtX if reml else 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dev = f[None, :] + k * np.log(np.where(r2 > 0, r2, np.nan))
    dev = np.where(np.isfinite(dev), dev, np.inf)
    best = np.argmin(dev, axis=1)
    lo = grid[np.maximum(best - 1, 0)]
    hi = grid[np.minimum(best + 1, grid.size - 1)]

    eta2_sum = st.eta2.sum(axis=1)
    eta2_xi = st.eta2 * oc.xi[None, :]
    eta2_xi2 = eta2_xi * oc.xi[None, :]
    dvals = oc.xi if reml else oc.d

    def slope_curvature(lam: np.ndarray, idx=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        # first and second derivative of the deviance in λ for genes idx, written lean
        inv = 1.0 / (1.0 + lam[:, None] * oc.xi[None, :])
        inv2 = inv * inv
        r2_ = st.rss0[idx] - eta2_sum[idx] + np.einsum("gk,gk->g", st.eta2[idx], inv)
        r2_1 = -np.einsum("gk,gk->g", eta2_xi[idx], inv2)
        r2_2 = 2.0 * np.einsum("gk,gk->g", eta2_xi2[idx], inv2 * inv)
        if reml:
            f_1, f_2 = inv @ oc.xi, -(inv2 @ (oc.xi ** 2))
        else:
            invd = 1.0 / (1.0 + lam[:, None] * dvals[None, :])
            f_1, f_2 = invd @ dvals, -((invd * invd) @ (dvals ** 2))
        ratio = r2_1 / r2_
        return f_1 + k * ratio, f_2 + k * (r2_2 / r2_ - ratio * ratio)

    s_lo, _ = slope_curvature(lo)
    s_hi, _ = slope_curvature(hi)
    # safeguarded Newton on the derivative inside the bracket [left, right], which
    # holds a sign change (slope(left) < 0 < slope(right)); a step leaving the bracket
    # or failing to shrink it is replaced by a bisection (geometric when both ends > 0)
    left, right = lo.copy(), hi.copy()
    lam = np.where(lo > 0, np.sqrt(lo * hi), 0.5 * (lo + hi))
    active = (s_lo < 0) & (s_hi > 0)
    for _ in range(max_iter):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        slope, curv = slope_curvature(lam[idx], idx)
        neg = slope < 0
        left[idx] = np.where(neg, lam[idx], left[idx])
        right[idx] = np.where(neg, right[idx], lam[idx])
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = lam[idx] - slope / curv
        a, b = left[idx], right[idx]
        inside = (curv > 0) & (newton > a) & (newton < b)
        bisect = np.where(a > 0, np.sqrt(a * b), 0.5 * (a + b))
        new = np.where(inside, newton, bisect)
        step = np.abs(new - lam[idx])
        lam[idx] = new
        done = (step <= 1e-13 * np.maximum(new, 1e-300)) | (b - a <= 1e-13 * b)
        active[idx[done]] = False
    lam = np.where(s_lo >= 0, lo, np.where(s_hi <= 0, hi, lam))
    # keep whichever of the refined point, the best grid point and the boundary is lowest
    candidates = np.stack([lam, grid[best], np.zeros(G)], axis=1)
    devs = np.stack([deviance_at(c, st, oc, prepared, reml) for c in candidates.T], axis=1)
    devs = np.where(np.isfinite(devs), devs, np.inf)
    return candidates[np.arange(G), np.argmin(devs, axis=1)]


@dataclass
class OneComponentFit:
    """Per-gene results of the one-component path, in the core's parameterisation."""

    theta: np.ndarray      # G × 1
    deviance: np.ndarray   # G
    r2: np.ndarray         # G
    beta: np.ndarray       # G × p
    Minv: np.ndarray       # G × p × p, (X'V⁻¹X)⁻¹
    b: np.ndarray          # G × q conditional modes (random effects, data scale)
    hess_varpar: np.ndarray  # G × 2 × 2, Hessian of the deviance in (θ, σ)
    jac_vcov: np.ndarray     # G × 2 × p × p, ∂vcov(β)/∂(θ, σ)
    rss0: np.ndarray         # G, OLS residual sum of squares


def fit_onecomp(Y: np.ndarray, oc: OneComponent, prepared: PreparedDesign,
                reml: bool) -> OneComponentFit:
    """Fit all genes (rows of Y, no missing values) with the rotation."""
    st = gene_state(Y, oc, prepared)
    lam = optimise_lambda(st, oc, prepared, reml)
    k = _k(prepared, reml)
    f, f_1, f_2, r2, r2_1, r2_2 = _criterion_parts(lam, st, oc, prepared, reml)
    r2 = np.where(r2 > 0, r2, np.nan)
    deviance = f + k * (1.0 + np.log(2.0 * np.pi * r2 / k))
    c = lam[:, None] / (1.0 + lam[:, None] * oc.d[None, :])          # G × q
    M = prepared.XtX[None] - np.einsum("jp,gj,jr->gpr", oc.W, c, oc.W)
    XVy = st.Xty - np.einsum("jp,gj->gp", oc.W, c * st.wy)
    Minv = np.linalg.inv(M)
    beta = np.einsum("gpr,gr->gp", Minv, XVy)
    b = np.einsum("ij,gj->gi", oc.Qz, c * (st.wy - np.einsum("jp,gp->gj", oc.W, beta)))
    theta = np.sqrt(lam)
    sigma2 = r2 / k
    sigma = np.sqrt(sigma2)
    # deviance in lmerTest's (θ, σ): f(θ²) + k log(2πσ²) + r²(θ²)/σ²
    fg, fh = 2.0 * theta * f_1, 2.0 * f_1 + 4.0 * lam * f_2
    rg, rh = 2.0 * theta * r2_1, 2.0 * r2_1 + 4.0 * lam * r2_2
    hess = np.empty((lam.size, 2, 2))
    hess[:, 0, 0] = fh + rh / sigma2
    hess[:, 0, 1] = hess[:, 1, 0] = -2.0 * rg / sigma ** 3
    hess[:, 1, 1] = -2.0 * k / sigma2 + 6.0 * r2 / sigma2 ** 2
    dM_dlam = -np.einsum("jp,gj,jr->gpr", oc.W, 1.0 / (1.0 + lam[:, None] * oc.d[None, :]) ** 2, oc.W)
    jac = np.empty((lam.size, 2) + M.shape[1:])
    jac[:, 0] = -sigma2[:, None, None] * (Minv @ (2.0 * theta[:, None, None] * dM_dlam) @ Minv)
    jac[:, 1] = 2.0 * sigma[:, None, None] * Minv
    return OneComponentFit(theta=theta[:, None], deviance=deviance, r2=r2, beta=beta, Minv=Minv,
                           b=b, hess_varpar=hess, jac_vcov=jac, rss0=st.rss0)
