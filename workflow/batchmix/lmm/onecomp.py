"""One variance component: the EMMA / FaST-LMM rotation, all genes at once.

For a model with a single random term holding one θ (``(1|batch)``, ``(0 + x|g)``),
Var(y) = σ² (I + λ Z Z') with λ = θ². Rotating once by the eigenvectors of the
REML-projected S Z Z' S (S = I - X (X'X)⁻¹ X') turns every gene's REML criterion
into a function of λ built from k ≤ (number of levels) numbers per gene:

    r²(λ) = rss₀ - Σᵢ ηᵢ² λξᵢ / (1 + λξᵢ)              (ηᵢ: projections of y)
    REML:  f(λ) = Σᵢ log(1 + λξᵢ) + log|X'X|           (ξᵢ: non-zero eigenvalues of S Z Z' S)
    ML:    f(λ) = Σⱼ log(1 + λdⱼ)                       (dⱼ: eigenvalues of Z'Z)
    deviance(λ) = f(λ) + k (1 + log(2π r²(λ) / k)),    k = n - p (REML) or n (ML)

which is lme4's profiled deviance exactly. Equal eigenvalues (balanced designs give
many) are merged, their ηᵢ² summed, so each gene carries as many numbers as there are
distinct ξᵢ. The data enter once: one (genes × n) @ (n × (p + q)) product gives the
projections, and Z'y and X'y follow from them exactly (the columns of X and Z lie in
the span of the projection basis). Everything after that is O(genes × distinct ξ).

The minimum is bracketed on a log grid of λ (one small matrix product for all genes),
started at the parabola through the best grid point and its neighbours (in log λ), and
located by safeguarded Newton steps on the closed-form derivative; the result is kept
only if it beats the best grid point and λ = 0. Fixed effects, their covariance, the
conditional modes and the (θ, σ) Hessian lmerTest's Satterthwaite method needs are
closed-form functions of λ per gene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .core import PreparedDesign, Rotation, build_rotation, inverse_small

CHUNK = 8192  # genes per block in the λ search: keeps the G × grid temporaries in cache


@dataclass
class OneComponentState:
    """Per-gene quantities entering the one-component criterion."""

    rss0: np.ndarray  # G, OLS residual sum of squares
    eta2: np.ndarray  # G × (distinct ξ), squared projections on U summed over equal ξ
    wy: np.ndarray  # G × q, Qz' Z'y
    Xty: np.ndarray  # G × p


def gene_state(
    Y: np.ndarray, oc: Rotation, prepared: PreparedDesign, yty: np.ndarray | None = None
) -> OneComponentState:
    """Project every gene once, with a single pass of BLAS over Y (``yty``: Σ y² if known)."""
    p, k = oc.QX.shape[1], oc.U.shape[1]
    proj = Y @ oc.P
    qx, eta = proj[:, :p], proj[:, p : p + k]
    wy = proj @ oc.to_wy
    Xty = qx @ oc.RX
    if yty is None:
        yty = np.einsum("gi,gi->g", Y, Y)
    rss0 = yty - np.einsum("gp,gp->g", qx, qx)
    # ||y||² − ||Q'y||² cancels when the residual is tiny next to the mean: redo those
    # genes from explicit residuals
    inexact = rss0 < 1e-6 * yty
    if inexact.any():
        resid = Y[inexact] - (Y[inexact] @ oc.QX) @ oc.QX.T
        rss0[inexact] = np.einsum("gi,gi->g", resid, resid)
    eta2 = eta * eta
    if oc.xi_u.size < k:
        eta2 = eta2 @ oc.xi_onehot
    return OneComponentState(rss0=rss0, eta2=eta2, wy=wy, Xty=Xty)


def _k(prepared: PreparedDesign, reml: bool) -> int:
    return prepared.n - prepared.p if reml else prepared.n


def _f_values(oc: Rotation, reml: bool) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (distinct) and multiplicities in the log-determinant part f(λ)."""
    return (oc.xi_u, oc.xi_n) if reml else (oc.d_u, oc.d_n)


def _criterion_parts(lam: np.ndarray, st: OneComponentState, oc: Rotation, prepared: PreparedDesign, reml: bool):
    """f, f', f'', r², r²', r²'' at per-gene λ (shape G)."""
    xi = oc.xi_u
    inv = 1.0 / (1.0 + lam[:, None] * xi[None, :])
    e2inv = st.eta2 * inv
    r2 = st.rss0 - st.eta2.sum(axis=1) + e2inv.sum(axis=1)
    e2xinv2 = e2inv * inv * xi
    r2_1 = -e2xinv2.sum(axis=1)
    r2_2 = 2.0 * (e2xinv2 * inv) @ xi
    fv, fn = _f_values(oc, reml)
    le = 1.0 + lam[:, None] * fv[None, :]
    f = np.log(le) @ fn + (prepared.logdet_XtX if reml else 0.0)
    g = fv[None, :] / le
    f_1 = g @ fn
    f_2 = -((g * g) @ fn)
    return f, f_1, f_2, r2, r2_1, r2_2


def search_lambda(
    rss0: np.ndarray,
    eta2: np.ndarray,
    xi: np.ndarray,
    fv: np.ndarray,
    fn: np.ndarray,
    k: int,
    grid: np.ndarray,
    max_iter: int,
) -> np.ndarray:
    """λ ≥ 0 minimising f(λ) + k log r²(λ) = Σ fnᵢ log(1 + λ fvᵢ) + k log(rss₀ − Σ ηᵢ² λξᵢ/(1 + λξᵢ)) per gene.

    The one λ search of batchmix (the engine, its start values and the bootstrap's refits).
    The minimum is bracketed on ``grid`` (one matrix product for all genes, ``grid[0] = 0``),
    started at the parabola through the best grid point and its neighbours (in log λ) and
    located by safeguarded Newton steps on the closed-form derivative.

    Returns λ, the index of the best grid point, the criterion there and at λ = 0 (each per gene).
    """
    G, T = rss0.shape[0], grid.size
    frac = grid[:, None] * xi[None, :] / (1.0 + grid[:, None] * xi[None, :])  # T × k
    r2g = rss0[:, None] - eta2 @ frac.T  # G × T
    fg = np.log1p(grid[:, None] * fv[None, :]) @ fn
    with np.errstate(invalid="ignore", divide="ignore"):
        devg = fg[None, :] + k * np.log(r2g)
    devg[~(r2g > 0)] = np.inf
    best = np.argmin(devg, axis=1)
    rows = np.arange(G)
    dev_best = devg[rows, best]
    eta2_sum = eta2.sum(axis=1)
    eta2_xi = eta2 * xi
    eta2_xi2 = eta2_xi * xi

    def slope_curvature(lam: np.ndarray, idx) -> tuple[np.ndarray, np.ndarray]:
        # first and second derivative of f + k log r² in λ for genes idx
        inv = 1.0 / (1.0 + lam[:, None] * xi[None, :])
        inv2 = inv * inv
        r2_ = rss0[idx] - eta2_sum[idx] + np.einsum("gk,gk->g", eta2[idx], inv)
        r2_1 = -np.einsum("gk,gk->g", eta2_xi[idx], inv2)
        r2_2 = 2.0 * np.einsum("gk,gk->g", eta2_xi2[idx], inv2 * inv)
        if fv is xi:
            f_1, f_2 = inv @ (fn * xi), -(inv2 @ (fn * xi * xi))
        else:
            invd = 1.0 / (1.0 + lam[:, None] * fv[None, :])
            f_1, f_2 = invd @ (fn * fv), -((invd * invd) @ (fn * fv * fv))
        ratio = r2_1 / r2_
        return f_1 + k * ratio, f_2 + k * (r2_2 / r2_ - ratio * ratio)

    lam = grid[best].copy()
    left = grid[np.maximum(best - 1, 0)]
    right = grid[np.minimum(best + 1, T - 1)]
    # at λ = 0 the slope is closed form: Σ f-eigenvalues − k Σ η²ξ / rss₀
    at0 = best == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        slope0 = (fn @ fv) - k * eta2_xi[at0].sum(axis=1) / rss0[at0]
    at0_idx = np.flatnonzero(at0)
    active = np.zeros(G, dtype=bool)
    active[at0_idx[slope0 < 0]] = True
    lam[active] = 0.5 * right[active]
    # interior: start at the vertex of the parabola through the three grid points (log λ)
    inner = (best > 0) & (best < T - 1) & (left > 0)
    idx = np.flatnonzero(inner)
    if idx.size:
        b = best[idx]
        dm, d0, dp = devg[idx, b - 1], devg[idx, b], devg[idx, b + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = 0.5 * (dm - dp) / (dm - 2.0 * d0 + dp)
        shift = np.where(np.isfinite(shift), np.clip(shift, -0.9, 0.9), 0.0)
        lam[idx] = np.exp(np.log(grid[b]) + shift * (np.log(grid[b + 1]) - np.log(grid[b])))
        active[idx] = True
    # λ at the bracket (1, grid[1]) with grid[0] = 0 < grid[1]: interior as well
    edge = best == 1
    active |= edge
    # safeguarded Newton on the derivative inside [left, right], which holds a sign change;
    # a step leaving the bracket or failing to shrink it is replaced by a bisection
    # (geometric when both ends > 0). Stop after a Newton step of relative size 1e-10.
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if not idx.size:
            break
        la = lam[idx]
        slope, curv = slope_curvature(la, idx)
        neg = slope < 0
        a = np.where(neg, la, left[idx])
        b = np.where(neg, right[idx], la)
        left[idx], right[idx] = a, b
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = la - slope / curv
        inside = (curv > 0) & (newton > a) & (newton < b)
        new = np.where(inside, newton, np.where(a > 0, np.sqrt(a * b), 0.5 * (a + b)))
        new = np.where(slope == 0, la, new)
        lam[idx] = new
        done = (inside & (np.abs(new - la) <= 1e-10 * new)) | (b - a <= 1e-13 * b) | (slope == 0) | ~np.isfinite(slope)
        active[idx[done]] = False
    return lam, best, dev_best, devg[:, 0]


def optimise(
    st: OneComponentState, oc: Rotation, prepared: PreparedDesign, reml: bool, grid_size: int = 40, max_iter: int = 100
):
    """λ (G) and the criterion parts at λ (:func:`_criterion_parts`)."""
    G = st.rss0.shape[0]
    k = _k(prepared, reml)
    if oc.xi.size == 0:
        # Z lies in X's column space: REML carries no information on λ, ML prefers 0
        lam = np.zeros(G)
        return lam, _criterion_parts(lam, st, oc, prepared, reml)
    xi = oc.xi_u
    fv, fn = _f_values(oc, reml)
    lo_scale = 1e-6 / xi.max()
    hi_scale = 1e8 / xi.min()
    grid = np.concatenate([[0.0], np.geomspace(lo_scale, hi_scale, grid_size)])
    lam = np.empty(G)
    grid_dev = np.empty(G)
    zero_dev = np.empty(G)
    best = np.empty(G, dtype=int)
    for start in range(0, G, CHUNK):
        sl = slice(start, min(G, start + CHUNK))
        lam[sl], best[sl], grid_dev[sl], zero_dev[sl] = search_lambda(
            st.rss0[sl], st.eta2[sl], xi, xi if reml else fv, fn, k, grid, max_iter
        )
    # keep whichever of the refined point, the best grid point and the boundary is lowest
    parts = _criterion_parts(lam, st, oc, prepared, reml)
    f, r2 = parts[0], parts[3]
    const = prepared.logdet_XtX if reml else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        dev = np.where(r2 > 0, f - const + k * np.log(r2), np.inf)
    dev = np.where(np.isfinite(dev), dev, np.inf)
    use_grid = grid_dev < dev
    use_zero = zero_dev < np.minimum(dev, grid_dev)
    swap = use_grid | use_zero
    if swap.any():
        lam = np.where(use_zero, 0.0, np.where(use_grid, grid[best], lam))
        idx = np.flatnonzero(swap)
        sub = OneComponentState(st.rss0[idx], st.eta2[idx], st.wy[idx], st.Xty[idx])
        new = _criterion_parts(lam[idx], sub, oc, prepared, reml)
        parts = tuple(np.asarray(a).copy() for a in parts)
        for a, b in zip(parts, new):
            a[idx] = b
    return lam, parts


@dataclass
class OneComponentFit:
    """Per-gene results of the one-component path, in the core's parameterisation."""

    theta: np.ndarray  # G × 1
    deviance: np.ndarray  # G
    r2: np.ndarray  # G
    beta: np.ndarray  # G × p
    Minv: np.ndarray  # G × p × p, (X'V⁻¹X)⁻¹
    b: np.ndarray  # G × q conditional modes (random effects, data scale)
    hess_varpar: np.ndarray | None  # G × 2 × 2, Hessian of the deviance in (θ, σ)
    jac_vcov: np.ndarray | None  # G × 2 × p × p, ∂vcov(β)/∂(θ, σ)
    rss0: np.ndarray  # G, OLS residual sum of squares


def fit_onecomp(
    Y: np.ndarray, oc: Rotation, prepared: PreparedDesign, reml: bool, yty: np.ndarray | None = None
) -> OneComponentFit:
    """Fit all genes (rows of Y, no missing values) with the rotation."""
    return fit_state(gene_state(Y, oc, prepared, yty), oc, prepared, reml)


def state_from_statistics(
    Xty: np.ndarray, Zty: np.ndarray, yty: np.ndarray, oc: Rotation, *, residual_ss: np.ndarray | None = None
) -> OneComponentState:
    """:class:`OneComponentState` from the sufficient statistics X'y, Z'y, y'y (G rows each).

    ``residual_ss`` is the OLS residual sum of squares when the caller has it more accurately
    than y'y − ‖Q_X'y‖² (which cancels when the mean dominates).
    """
    qx = np.linalg.solve(oc.RX.T, Xty.T).T  # QX'y
    eta = ((Zty - qx @ oc.ZQ) @ oc.R_keep) / np.sqrt(oc.xi)  # U'y
    rss0 = yty - np.einsum("gp,gp->g", qx, qx) if residual_ss is None else residual_ss
    eta2 = eta * eta
    if oc.xi_u.size < oc.xi.size:
        eta2 = eta2 @ oc.xi_onehot
    return OneComponentState(rss0=rss0, eta2=eta2, wy=Zty @ oc.Qz, Xty=Xty)


def fit_state(
    st: OneComponentState, oc: Rotation, prepared: PreparedDesign, reml: bool, *, derivatives: bool = True
) -> OneComponentFit:
    """Fit genes given their :class:`OneComponentState`; ``derivatives=False`` skips what Satterthwaite needs."""
    lam, (f, f_1, f_2, r2, r2_1, r2_2) = optimise(st, oc, prepared, reml)
    G, p = lam.size, prepared.p
    k = _k(prepared, reml)
    r2 = np.where(r2 > 0, r2, np.nan)
    deviance = f + k * (1.0 + np.log(2.0 * np.pi * r2 / k))
    inv_d = 1.0 / (1.0 + lam[:, None] * oc.d[None, :])
    c = lam[:, None] * inv_d  # G × q
    M = prepared.XtX[None] - (c @ oc.WW).reshape(G, p, p)
    XVy = st.Xty - (c * st.wy) @ oc.W
    Minv = inverse_small(M)
    beta = np.matmul(Minv, XVy[:, :, None])[:, :, 0]
    b = (c * (st.wy - beta @ oc.W.T)) @ oc.Qz.T
    theta = np.sqrt(lam)
    sigma2 = r2 / k
    if not derivatives:
        return OneComponentFit(
            theta=theta[:, None],
            deviance=deviance,
            r2=r2,
            beta=beta,
            Minv=Minv,
            b=b,
            hess_varpar=None,
            jac_vcov=None,
            rss0=st.rss0,
        )
    sigma = np.sqrt(sigma2)
    # deviance in lmerTest's (θ, σ): f(θ²) + k log(2πσ²) + r²(θ²)/σ²
    fh = 2.0 * f_1 + 4.0 * lam * f_2
    rg, rh = 2.0 * theta * r2_1, 2.0 * r2_1 + 4.0 * lam * r2_2
    hess = np.empty((G, 2, 2))
    hess[:, 0, 0] = fh + rh / sigma2
    hess[:, 0, 1] = hess[:, 1, 0] = -2.0 * rg / sigma**3
    hess[:, 1, 1] = -2.0 * k / sigma2 + 6.0 * r2 / sigma2**2
    dM_dlam = -((inv_d * inv_d) @ oc.WW).reshape(G, p, p)
    jac = np.empty((G, 2, p, p))
    jac[:, 0] = (-2.0 * sigma2 * theta)[:, None, None] * np.matmul(np.matmul(Minv, dM_dlam), Minv)
    jac[:, 1] = 2.0 * sigma[:, None, None] * Minv
    return OneComponentFit(
        theta=theta[:, None],
        deviance=deviance,
        r2=r2,
        beta=beta,
        Minv=Minv,
        b=b,
        hess_varpar=hess,
        jac_vcov=jac,
        rss0=st.rss0,
    )


def lambda_from_stats(
    Zty: np.ndarray,
    Xty: np.ndarray,
    yty: np.ndarray,
    X: np.ndarray,
    Z: np.ndarray,
    reml: bool,
    grid_size: int = 24,
    max_iter: int = 30,
) -> np.ndarray:
    """λ of the one-component model with design (X, Z) from the sufficient statistics alone.

    ``Zty`` (G × columns of Z), ``Xty`` and ``yty`` as in :class:`batchmix.lmm.core.GeneData`.
    Used for starting values of the θ-Newton engine (each random column fitted on its own),
    so a coarser grid and fewer Newton steps than :func:`fit_onecomp` are enough; genes
    whose residual sum of squares cannot be formed accurately from the statistics get λ = 1.
    """
    G = yty.shape[0]
    n, p = X.shape
    rotation = build_rotation(X, Z, Z.T @ Z, Z.T @ X, 1)
    if rotation.xi.size == 0:
        return np.zeros(G)
    state = state_from_statistics(Xty, Zty, yty, rotation)
    rss0, eta2, xi_u = state.rss0, state.eta2, rotation.xi_u
    fv, fn = _f_values(rotation, reml)
    k = n - p if reml else n
    grid = np.concatenate([[0.0], np.geomspace(1e-4 / xi_u.max(), 1e4 / xi_u.min(), grid_size)])
    lam = np.ones(G)
    ok = np.flatnonzero(rss0 > 1e-10 * yty)
    for start in range(0, ok.size, CHUNK):
        sl = ok[start : start + CHUNK]
        lam[sl] = search_lambda(rss0[sl], eta2[sl], xi_u, fv, fn, k, grid, max_iter)[0]
    return lam
