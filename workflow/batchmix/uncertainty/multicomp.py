"""Posterior of any LMM of the engine by importance sampling over its variance parameters.

The model is ``y = Xβ + Zb + e``, ``b ~ N(0, σ² Λ Λᵀ)``, ``e ~ N(0, σ² I)``; every random block
(one bar term, ``s`` columns) has its SDs ``sd_1 … sd_s`` and a correlation matrix ``C = L Lᵀ``,
so its relative factor is ``T = diag(sd/σ) L`` (lower triangular: lme4's θ layout).

**Fixed effects are integrated analytically.** Given the variance parameters φ and a flat prior
on β, ``β | φ, y ~ N(β̂_φ, σ² A_φ⁻¹)`` and ``p(y | φ) ∝ σ^{−(n−p)} |I + Λᵀ ZᵀZ Λ|^{−1/2}
|A_φ|^{−1/2} exp(−S_φ / 2σ²)`` (the penalised least squares of lme4, from the shared cross-
products ZᵀZ, ZᵀX, XᵀX and each gene's Zᵀy: O(levels) work per gene and φ for one grouping
factor, a q × q Cholesky otherwise).

**brms's centred-intercept prior is handled exactly**: ``u = cᵀβ`` (``c`` = 1 on the intercept
and the column means of X elsewhere, brms's ``Intercept``) is sampled jointly with φ from its
flat-prior conditional ``N(cᵀβ̂_φ, σ² cᵀA_φ⁻¹c)`` and the Student-t density of ``u`` enters the
importance weight; given (φ, u), β is exactly Gaussian (the flat prior on the other
coefficients), so fixed-effect summaries are Rao-Blackwellised Gaussian mixtures.

**Variance parameters** are sampled in the unconstrained coordinates ``log σ``, ``log sd`` and
Stan's canonical partial correlations (``tanh``; LKJ(1) with Stan's Jacobian) by importance
sampling from a multivariate Student-t (ν = 5): per gene, a Newton search for the posterior
mode (finite-difference derivatives, all genes at once) gives a Laplace proposal, a first
importance pass adapts its mean and covariance, and the final pass uses scrambled Sobol points
(fixed seed). Per gene the Pareto k̂ of the final weights (Zhang & Stephens' generalised-Pareto
fit of the largest weights, as PSIS) and the effective sample size are reported; a gene with
k̂ > 0.7 or an ESS below :data:`MIN_ESS` gets the status ``failed:importance_khat`` /
``failed:importance_ess`` and no numbers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import special, stats
from scipy.stats import qmc

from ..defaults import DEFAULT_SEED
from ..design import KINSHIP, RandomBlock, fixed_design, random_design
from ..lmm import missing
from ..lmm.results import model_metadata
from .priors import (
    BRMS_DEFAULT,
    PRIORS,
    brms_default_location_scale,
    log_half_student_t,
    log_prior_lambda,
    log_student_t,
)

__all__ = [
    "DIAGNOSTIC_COLUMNS",
    "MAX_KHAT",
    "MIN_ESS",
    "ImportanceResult",
    "design_for",
    "importance_posterior",
    "pareto_khat",
]

logger = logging.getLogger(__name__)

#: Pareto k̂ above which the importance weights are not trusted (Vehtari et al., PSIS).
MAX_KHAT = 0.7
#: Minimum effective sample size of the final weights.
MIN_ESS = 200.0
DIAGNOSTIC_COLUMNS = ["gene_id", "status", "khat", "ess", "n_draws", "prior_location", "prior_scale"]

_NU_PROPOSAL = 5.0
_FD_STEP = 1e-2
_NEWTON_ITER = 14
_INFLATE = 1.2
_SHARES = (0.6, 0.2, 0.2)
_WIDE = 3.0
_ADAPT_ROUNDS = 2
_PHI_MAX = 40.0
_CPC_MAX = 12.0
# cross-products of different levels below this (relative) are rounding: the level-wise path applies
_ORTHO_TOL = 1e-12


# ----------------------------------------------------------------------------------------------
# Small dense algebra on stacks, written with loops over the (tiny) matrix indices
# ----------------------------------------------------------------------------------------------


def _small_cholesky(A: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of stacked PSD ``A`` (..., p, p); pivots floored at 0 (never raises)."""
    p = A.shape[-1]
    L = np.zeros(A.shape)
    for i in range(p):
        for j in range(i + 1):
            acc = A[..., i, j] - (L[..., i, :j] * L[..., j, :j]).sum(axis=-1)
            if i == j:
                L[..., i, i] = np.sqrt(np.maximum(acc, 0.0))
            else:
                d = L[..., j, j]
                L[..., i, j] = np.where(d > 0, acc / np.where(d > 0, d, 1.0), 0.0)
    return L


def _small_chol_solve(A: np.ndarray, rhs: list[np.ndarray]):
    """Cholesky of stacked SPD ``A`` (..., p, p) and ``A⁻¹`` applied to vectors in ``rhs``.

    Returns ``logdet A``, ``A⁻¹`` (..., p, p) and the solutions, each ``(..., p)``.
    """
    p = A.shape[-1]
    L = [[None] * p for _ in range(p)]
    logdet = 0.0
    for i in range(p):
        for j in range(i + 1):
            acc = A[..., i, j].copy()
            for k in range(j):
                acc -= L[i][k] * L[j][k]
            if i == j:
                acc = np.sqrt(np.maximum(acc, 1e-300))
                logdet = logdet + 2.0 * np.log(acc)
                L[i][i] = acc
            else:
                L[i][j] = acc / L[j][j]
    # inverse of L (lower triangular), then A⁻¹ = L⁻ᵀ L⁻¹
    Li = [[None] * p for _ in range(p)]
    for i in range(p):
        Li[i][i] = 1.0 / L[i][i]
        for j in range(i):
            acc = 0.0
            for k in range(j, i):
                acc = acc + L[i][k] * Li[k][j]
            Li[i][j] = -acc / L[i][i]
    Ainv = np.empty(A.shape)
    for i in range(p):
        for j in range(i + 1):
            acc = 0.0
            for k in range(i, p):
                acc = acc + Li[k][i] * Li[k][j]
            Ainv[..., i, j] = acc
            Ainv[..., j, i] = acc
    sols = [np.stack([sum(Ainv[..., i, j] * v[..., j] for j in range(p)) for i in range(p)], axis=-1) for v in rhs]
    return logdet, Ainv, sols


# ----------------------------------------------------------------------------------------------
# The shared design and the parameterisation
# ----------------------------------------------------------------------------------------------


@dataclass
class _Design:
    X: np.ndarray
    names: list[str]
    blocks: list[RandomBlock]
    Z: np.ndarray
    ZtZ: np.ndarray
    ZtX: np.ndarray
    XtX: np.ndarray
    c: np.ndarray | None  # brms's centred intercept cᵀβ (None without an intercept column)
    # one grouping factor: level-wise cross-products
    B: np.ndarray | None = None  # (types, s, s)
    ZX: np.ndarray | None = None  # (types, s, p)
    level_type: np.ndarray | None = None  # (m,) the type of each level (types share B and ZX)
    type_count: np.ndarray | None = None
    type_indicator: np.ndarray | None = None  # (m, types)
    dim: int = 0
    offsets: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def p(self) -> int:
        return self.X.shape[1]


def _make_design(X: np.ndarray, names: list[str], blocks: list[RandomBlock]) -> _Design:
    if len(blocks) == 1 and blocks[0].n_terms == 1:
        Zb = blocks[0].Z
        ZtZ = Zb.T @ Zb
        if np.abs(ZtZ - np.diag(np.diag(ZtZ))).max(initial=0.0) > _ORTHO_TOL * np.abs(ZtZ).max(initial=0.0):
            # one scalar component whose levels overlap (a known covariance, Z = a factor of K):
            # b ~ N(0, σ_b² I) is rotation invariant, so Z Q (Q the eigenvectors of ZᵀZ) has
            # orthogonal columns and the level-wise path applies (the EMMA / FaST-LMM rotation)
            d_, Q = np.linalg.eigh(ZtZ)
            keep = d_ > 1e-10 * max(float(d_.max(initial=0.0)), 1e-300)
            Zr_ = Zb @ Q[:, keep]
            levels = [f"r{j + 1}" for j in range(Zr_.shape[1])]
            blocks = [RandomBlock(group=blocks[0].group, terms=blocks[0].terms, levels=levels, Z=Zr_)]
    Z = np.column_stack([b.Z for b in blocks])
    c = None
    if "Intercept" in names:
        c = X.mean(axis=0)
        c[names.index("Intercept")] = 1.0
    d = _Design(X, list(names), blocks, Z, Z.T @ Z, Z.T @ X, X.T @ X, c)
    off_block = d.ZtZ.copy()
    if len(blocks) == 1:
        s_, m_ = blocks[0].n_terms, blocks[0].n_levels
        for j in range(m_):
            off_block[j * s_ : (j + 1) * s_, j * s_ : (j + 1) * s_] = 0.0
    if len(blocks) == 1 and np.abs(off_block).max(initial=0.0) <= _ORTHO_TOL * np.abs(d.ZtZ).max(initial=0.0):
        s, m = blocks[0].n_terms, blocks[0].n_levels
        B = np.stack([d.ZtZ[j * s : (j + 1) * s, j * s : (j + 1) * s] for j in range(m)])
        ZX = np.stack([d.ZtX[j * s : (j + 1) * s] for j in range(m)])
        key = np.concatenate([B.reshape(m, -1), ZX.reshape(m, -1)], axis=1)
        _, first, inverse = np.unique(np.round(key, 12), axis=0, return_index=True, return_inverse=True)
        d.B, d.ZX = B[first], ZX[first]
        d.level_type = np.asarray(inverse).reshape(-1)
        d.type_count = np.bincount(d.level_type, minlength=len(first)).astype(float)
        d.type_indicator = np.eye(len(first))[d.level_type]
    off = 1
    for b in blocks:
        d.offsets.append(off)
        off += b.n_terms + b.n_terms * (b.n_terms - 1) // 2
    d.dim = off
    return d


def _unpack(phi: np.ndarray, design: _Design, prior: str, prior_scale: float, brms_scale: np.ndarray | None):
    """σ, the relative factors T per block, correlations, and the log prior density in φ coordinates.

    ``phi`` is ``(G, P, dim)``; ``brms_scale`` (G,) the per-gene scale of brms's priors.
    """
    # far tails of a proposal: keep every quantity finite (such draws get negligible weight)
    phi = np.clip(phi, -_PHI_MAX, _PHI_MAX)
    log_sigma = phi[..., 0]
    sigma = np.exp(log_sigma)
    lp = np.zeros(phi.shape[:-1])
    if prior == BRMS_DEFAULT:
        sc = brms_scale[:, None]
        lp += log_half_student_t(sigma, 3.0, sc) + log_sigma
    Ts, sds, cors = [], [], []
    for b, off in zip(design.blocks, design.offsets):
        s = b.n_terms
        log_sd = phi[..., off : off + s]
        sd = np.exp(log_sd)
        if prior == BRMS_DEFAULT:
            lp += (log_half_student_t(sd, 3.0, sc[..., None]) + log_sd).sum(axis=-1)
        else:
            t = 2.0 * (log_sd - log_sigma[..., None])
            lp += (log_prior_lambda(t, prior, prior_scale) + t + math.log(2.0)).sum(axis=-1)
        # Stan's cholesky_corr_constrain: canonical partial correlations z = tanh(y), row by row
        L = [[np.zeros(phi.shape[:-1]) for _ in range(s)] for _ in range(s)]
        L[0][0] = np.ones(phi.shape[:-1])
        k = off + s
        for i in range(1, s):
            sumsq = np.zeros(phi.shape[:-1])
            for j in range(i):
                z = np.tanh(np.clip(phi[..., k], -_CPC_MAX, _CPC_MAX))
                k += 1
                lp += np.log1p(-z * z) + 0.5 * np.log1p(-sumsq)
                L[i][j] = z * np.sqrt(1.0 - sumsq)
                sumsq = sumsq + L[i][j] ** 2
            L[i][i] = np.sqrt(np.maximum(1.0 - sumsq, 0.0))
            # LKJ(1) on the Cholesky factor: Σ_k (s − 2 − k) log L_{k+1,k+1}
            lp += (s - 1 - i) * np.log(np.maximum(L[i][i], 1e-300))
        T = np.zeros(phi.shape[:-1] + (s, s))
        for i in range(s):
            for j in range(i + 1):
                T[..., i, j] = sd[..., i] / sigma * L[i][j]
        C = np.zeros(phi.shape[:-1] + (s, s))
        for i in range(s):
            for j in range(s):
                C[..., i, j] = sum(L[i][k2] * L[j][k2] for k2 in range(min(i, j) + 1))
        Ts.append(T)
        sds.append(sd)
        cors.append(C)
    return sigma, Ts, sds, cors, lp


def _penalised(design: _Design, Ts: list[np.ndarray], Zr: np.ndarray, rr: np.ndarray):
    """``log|L_θ|``, ``A`` (G, P, p, p), ``b`` and ``r'Wr`` for residual vectors (OLS residuals ``r``).

    ``Zr`` (G, q) is Zᵀr and ``rr`` (G,) rᵀr per gene; ``Ts`` the relative factors (G, P, s, s).
    """
    p = design.p
    if design.B is not None:
        T = Ts[0]
        s = T.shape[-1]
        m = design.level_type.shape[0]
        Gc, P = T.shape[:2]
        Zr3 = Zr.reshape(Gc, m, s)
        t = [[T[..., a, b][..., None] for b in range(s)] for a in range(s)]  # (G, P, 1)
        # levels with the same cross-products (a balanced design has one type) share M, L and
        # L⁻¹TᵀZ_jᵀX: only the response part is done level by level
        B, ZX = design.B, design.ZX  # (types, s, s), (types, s, p)
        TtB = [[sum(t[cc][a] * B[:, cc, e] for cc in range(a, s)) for e in range(s)] for a in range(s)]
        M = [[None] * s for _ in range(s)]
        for a in range(s):
            for bb in range(a + 1):
                M[a][bb] = sum(TtB[a][e] * t[e][bb] for e in range(bb, s)) + (1.0 if a == bb else 0.0)
        Lm = [[None] * s for _ in range(s)]
        for a in range(s):
            for bb in range(a + 1):
                acc = M[a][bb]
                for k in range(bb):
                    acc = acc - Lm[a][k] * Lm[bb][k]
                Lm[a][bb] = np.sqrt(acc) if a == bb else acc / Lm[bb][bb]
        count = design.type_count  # (types,)
        logdetL = sum((np.log(Lm[a][a]) * count).sum(axis=-1) for a in range(s))

        def forward(rhs, Lx):
            out = []
            for a in range(s):
                acc = rhs[a]
                for e in range(a):
                    acc = acc - Lx[a][e] * out[e]
                out.append(acc / Lx[a][a])
            return out

        CX = [forward([sum(t[cc][a] * ZX[:, cc, k] for cc in range(a, s)) for a in range(s)], Lm) for k in range(p)]
        # the response part needs, per level type τ, only Σ_j z_j and Σ_j z_j z_jᵀ of the levels
        # j of that type (z_j = Z_jᵀr): with R = L_τ⁻¹Tᵀ, Σ_j |R z_j|² = Σ_ab (RᵀR)_ab (Σ_j z_j z_jᵀ)_ab
        ind = design.type_indicator  # (m, types)
        zsum = np.einsum("gma,mt->gta", Zr3, ind)  # (G, types, s)
        Szz = np.einsum("gma,gmb,mt->gtab", Zr3, Zr3, ind)  # (G, types, s, s)
        Rcol = [forward([t[c][a] if c >= a else 0.0 for a in range(s)], Lm) for c in range(s)]  # Rcol[c][a] = R_ac
        cr_type = [sum(Rcol[c][a] * zsum[:, None, :, c] for c in range(s)) for a in range(s)]
        quad = 0.0
        for a in range(s):
            for b2 in range(s):
                RtR = sum(Rcol[a][k] * Rcol[b2][k] for k in range(s))
                quad = quad + (RtR * Szz[:, None, :, a, b2]).sum(axis=-1)
        A = np.empty((Gc, P, p, p))
        for k in range(p):
            for l2 in range(k + 1):
                v = sum((CX[k][a] * CX[l2][a] * count).sum(axis=-1) for a in range(s))
                A[..., k, l2] = design.XtX[k, l2] - v
                A[..., l2, k] = A[..., k, l2]
        bvec = np.stack([-sum((CX[k][a] * cr_type[a]).sum(axis=-1) for a in range(s)) for k in range(p)], axis=-1)
        rWr = rr[:, None] - quad
        return logdetL, A, bvec, rWr
    # general: dense Λ (q × q), block-diagonal with Kronecker blocks
    Gc, P = Ts[0].shape[:2]
    q = design.Z.shape[1]
    Lam = np.zeros((Gc, P, q, q))
    off = 0
    for b, T in zip(design.blocks, Ts):
        s = b.n_terms
        for j in range(b.n_levels):
            sl = slice(off + j * s, off + (j + 1) * s)
            Lam[..., sl, sl] = T
        off += s * b.n_levels
    M = np.swapaxes(Lam, -1, -2) @ design.ZtZ @ Lam
    M += np.eye(q)
    Lc = np.linalg.cholesky(M)
    logdetL = np.log(np.diagonal(Lc, axis1=-2, axis2=-1)).sum(axis=-1)
    rhs = np.concatenate(
        [np.broadcast_to(design.ZtX, (Gc, P, q, p)), np.broadcast_to(Zr[:, None, :, None], (Gc, P, q, 1))], axis=-1
    )
    rhs = np.swapaxes(Lam, -1, -2) @ rhs
    C = np.linalg.solve(Lc, rhs)
    CtC = np.swapaxes(C, -1, -2) @ C
    A = design.XtX - CtC[..., :p, :p]
    bvec = -CtC[..., :p, p]
    rWr = rr[:, None] - CtC[..., p, p]
    return logdetL, A, bvec, rWr


@dataclass
class _GeneStats:
    Zr: np.ndarray  # (G, q) Zᵀr of the OLS residuals
    rr: np.ndarray  # (G,)
    beta_ols: np.ndarray  # (G, p)
    loc: np.ndarray | None  # brms prior location (G,)
    scale: np.ndarray | None  # brms prior scale (G,)


def _log_posterior(phi, design, st: _GeneStats, prior, prior_scale, full=False):
    """Flat-β marginal log posterior of φ (G, P, dim), + the brms intercept prior at its conditional mean.

    With ``full``, also the conditional quantities needed by the final pass.
    """
    sigma, Ts, sds, cors, lprior = _unpack(phi, design, prior, prior_scale, st.scale)
    logdetL, A, bvec, rWr = _penalised(design, Ts, st.Zr, st.rr)
    n, p = design.n, design.p
    c = design.c if prior == BRMS_DEFAULT else None
    rhs = [bvec] + ([np.broadcast_to(c, bvec.shape)] if c is not None else [])
    logdetA, Ainv, sols = _small_chol_solve(A, rhs)
    beta_r = sols[0]
    S = rWr - np.einsum("...i,...i->...", bvec, beta_r)
    S = np.maximum(S, 1e-300 * np.maximum(st.rr[:, None], 1e-300))
    s2 = sigma * sigma
    lp = -(n - p) * np.log(sigma) - logdetL - 0.5 * logdetA - 0.5 * S / s2 + lprior
    beta = st.beta_ols[:, None, :] + beta_r
    out = {"lp0": lp, "sigma": sigma, "Ts": Ts, "sds": sds, "cors": cors, "beta": beta, "Ainv": Ainv}
    if c is not None:
        Ac = sols[1]
        m_u = beta @ c
        v_u = s2 * np.einsum("...i,...i->...", Ac, np.broadcast_to(c, Ac.shape))
        out.update({"Ac": Ac, "m_u": m_u, "v_u": v_u})
        # plug-in of the (nearly flat) intercept prior: only to place the proposal
        lp = lp + log_student_t(m_u, 3.0, st.loc[:, None], st.scale[:, None])
    out["lp"] = lp
    return out


# ----------------------------------------------------------------------------------------------
# Mode search, proposals, diagnostics
# ----------------------------------------------------------------------------------------------


def _stencil(dim: int, h: float) -> np.ndarray:
    pts = [np.zeros(dim)]
    for i in range(dim):
        for sgn in (1, -1):
            e = np.zeros(dim)
            e[i] = sgn * h
            pts.append(e)
    for i in range(dim):
        for j in range(i):
            for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                e = np.zeros(dim)
                e[i], e[j] = si * h, sj * h
                pts.append(e)
    return np.array(pts)


def _grad_hess(values: np.ndarray, dim: int, h: float):
    """Gradient and Hessian from the stencil's values (G, n_stencil)."""
    G = values.shape[0]
    f0 = values[:, 0]
    g = np.empty((G, dim))
    H = np.empty((G, dim, dim))
    for i in range(dim):
        fp, fm = values[:, 1 + 2 * i], values[:, 2 + 2 * i]
        g[:, i] = (fp - fm) / (2 * h)
        H[:, i, i] = (fp - 2 * f0 + fm) / (h * h)
    k = 1 + 2 * dim
    for i in range(dim):
        for j in range(i):
            pp, pm, mp, mm = values[:, k], values[:, k + 1], values[:, k + 2], values[:, k + 3]
            k += 4
            H[:, i, j] = H[:, j, i] = (pp - pm - mp + mm) / (4 * h * h)
    return g, H


def _negdef(H: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """``−H`` made positive definite (eigenvalues |λ|, floored): the precision of the proposal."""
    w, V = np.linalg.eigh(-H)
    w = np.where(np.isfinite(w), np.maximum(np.abs(w), floor), 1.0)
    return np.einsum("gij,gj,gkj->gik", V, w, V)


def _find_mode(phi0, design, st, prior, prior_scale):
    dim = design.dim
    sten = _stencil(dim, _FD_STEP)
    alphas = np.array([1.0, 0.5, 0.25, 0.1, 0.03])
    phi = phi0.copy()
    for _ in range(_NEWTON_ITER):
        vals = _log_posterior(phi[:, None, :] + sten[None], design, st, prior, prior_scale)["lp"]
        g, H = _grad_hess(vals, dim, _FD_STEP)
        prec = _negdef(H)
        step = np.linalg.solve(prec, g[..., None])[..., 0]
        norm = np.linalg.norm(step, axis=1, keepdims=True)
        step = np.where(norm > 2.0, step * 2.0 / np.maximum(norm, 1e-300), step)
        step = np.where(np.isfinite(step), step, 0.0)
        trial = phi[:, None, :] + alphas[None, :, None] * step[:, None, :]
        tv = _log_posterior(trial, design, st, prior, prior_scale)["lp"]
        tv = np.where(np.isfinite(tv), tv, -np.inf)
        best = np.argmax(tv, axis=1)
        improve = tv[np.arange(len(best)), best] > vals[:, 0]
        phi = np.where(improve[:, None], trial[np.arange(len(best)), best], phi)
        if np.all(np.abs(step).max(axis=1) < 1e-4):
            break
    vals = _log_posterior(phi[:, None, :] + sten[None], design, st, prior, prior_scale)["lp"]
    _, H = _grad_hess(vals, dim, _FD_STEP)
    return phi, _negdef(H)


def _log_t_density(phi: np.ndarray, mu: np.ndarray, L: np.ndarray) -> np.ndarray:
    """Log density (up to a constant shared by all proposals) of the multivariate t_ν(μ, L Lᵀ) at φ (G, S, d)."""
    dim = phi.shape[-1]
    dev = phi - mu[:, None, :]
    sol = np.einsum("gij,gsj->gsi", np.linalg.inv(L), dev)
    logdet = np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(axis=-1)
    return -(_NU_PROPOSAL + dim) / 2 * np.log1p((sol * sol).sum(axis=-1) / _NU_PROPOSAL) - logdet[:, None]


def pareto_khat(log_weights: np.ndarray) -> np.ndarray:
    """Pareto k̂ of each row's importance weights (PSIS: Zhang & Stephens' fit of the largest weights).

    Parameters
    ----------
    log_weights : numpy.ndarray
        ``(G, S)`` log weights.

    Returns
    -------
    numpy.ndarray
        ``(G,)`` k̂ with the weakly informative prior of Vehtari et al. (2024), as ``loo``.
    """
    lw = np.asarray(log_weights, dtype=float)
    G, S = lw.shape
    M = int(min(0.2 * S, 3 * math.sqrt(S)))
    srt = np.sort(lw, axis=1)
    lw = srt - srt[:, -1:]
    cut = lw[:, S - M - 1]
    x = np.exp(lw[:, S - M :]) - np.exp(cut)[:, None]  # exceedances, ascending
    x = np.maximum(x, 0.0)
    n = M
    prior = 3.0
    m = 30 + int(math.sqrt(n))
    bs = 1.0 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))
    quart = x[:, int(n / 4 + 0.5) - 1]
    xmax = np.maximum(x[:, -1], 1e-300)
    bs = bs[None, :] / (prior * np.maximum(quart, 1e-300))[:, None] + 1.0 / xmax[:, None]  # (G, m)
    with np.errstate(invalid="ignore", divide="ignore"):
        ks = np.mean(np.log1p(-bs[:, :, None] * x[:, None, :]), axis=2)  # (G, m)
        Lk = n * (np.log(-(bs / ks)) - ks - 1.0)
        w = 1.0 / np.exp(Lk[:, None, :] - Lk[:, :, None]).sum(axis=2)
    w = np.where(np.isfinite(w), w, 0.0)
    w = np.where(w < 10 * np.finfo(float).eps, 0.0, w)
    w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    b = (bs * w).sum(axis=1)
    with np.errstate(invalid="ignore"):
        k = np.mean(np.log1p(-b[:, None] * x), axis=1)
    k = (n * k + 10 * 0.5) / (n + 10)
    return np.where(np.isfinite(k), k, np.inf)


def _weighted_quantiles(values: np.ndarray, w: np.ndarray, probs) -> np.ndarray:
    """Quantiles of per-row weighted samples (weights sum to 1): the inverse of the midpoint ECDF."""
    order = np.argsort(values, axis=1, kind="stable")
    v = np.take_along_axis(values, order, axis=1)
    ws = np.take_along_axis(w, order, axis=1)
    cum = np.cumsum(ws, axis=1) - 0.5 * ws
    out = np.empty((values.shape[0], len(probs)))
    for g in range(values.shape[0]):
        out[g] = np.interp(probs, cum[g], v[g])
    return out


def _normal_mixture_quantiles(w, mu, sd, probs) -> np.ndarray:
    """Quantiles of per-row Gaussian mixtures (G, K), safeguarded Newton from the moment match."""
    mean = (w * mu).sum(axis=1)
    var = (w * (sd * sd + mu * mu)).sum(axis=1) - mean**2
    sdm = np.sqrt(np.maximum(var, 1e-300))
    keep = w > 1e-12 * w.max(axis=1, keepdims=True)
    w = np.where(keep, w, 0.0)
    sd = np.maximum(sd, 1e-12 * sdm[:, None])
    out = np.empty((w.shape[0], len(probs)))
    for j, pr in enumerate(probs):
        lo = (mu - 9 * sd).min(axis=1, where=keep, initial=np.inf)
        hi = (mu + 9 * sd).max(axis=1, where=keep, initial=-np.inf)
        x = np.clip(mean + sdm * special.ndtri(pr), lo, hi)
        for _ in range(60):
            zz = (x[:, None] - mu) / sd
            F = (w * special.ndtr(zz)).sum(axis=1)
            f = (w * np.exp(-0.5 * zz * zz) / (sd * math.sqrt(2 * math.pi))).sum(axis=1)
            err = F - pr
            lo = np.where(err < 0, x, lo)
            hi = np.where(err < 0, hi, x)
            with np.errstate(divide="ignore", invalid="ignore"):
                step = x - err / f
            bad = ~np.isfinite(step) | (step <= lo) | (step >= hi)
            x_new = np.where(bad, 0.5 * (lo + hi), step)
            done = np.abs(err) < 1e-11
            x = np.where(done, x, x_new)
            if done.all():
                break
        out[:, j] = x
    return out


# ----------------------------------------------------------------------------------------------
# The public entry point on arrays
# ----------------------------------------------------------------------------------------------


@dataclass
class ImportanceResult:
    """Importance-sampling posterior of a set of genes (one missingness pattern).

    Attributes
    ----------
    params : dict
        Param name → ``(G, 2 + len(probs))`` array: mean, sd, quantiles.
    khat, ess : numpy.ndarray
        Per-gene Pareto k̂ and effective sample size of the final weights.
    status : numpy.ndarray
        ``ok``, ``failed:importance_khat``, ``failed:importance_ess`` or ``failed:numerical``.
    location, scale : numpy.ndarray
        brms's prior location and scale per gene (NaN for other priors).
    """

    params: dict
    khat: np.ndarray
    ess: np.ndarray
    status: np.ndarray
    location: np.ndarray
    scale: np.ndarray
    n_draws: int


def _param_names(design: _Design, metadata) -> list[tuple[str, str]]:
    names = [(f"b_{c}", "beta") for c in design.names] + [("sigma", "sigma")]
    for b in design.blocks:
        names += [(f"sd_{b.group}__{t}", "sd") for t in b.terms]
    for b in design.blocks:
        for i in range(b.n_terms):
            for j in range(i + 1, b.n_terms):
                names.append((f"cor_{b.group}__{b.terms[i]}__{b.terms[j]}", "cor"))
    if len(design.blocks) == 1 and design.blocks[0].n_terms == 1:
        names.append(("ICC", "icc"))
    for col in metadata.fraction_columns():
        names.append((col, "frac"))
    return names


def importance_posterior(
    Y: np.ndarray,
    X: np.ndarray,
    coef_names: list[str],
    blocks: list[RandomBlock],
    metadata,
    *,
    prior: str = BRMS_DEFAULT,
    prior_scale: float = 1.0,
    probs=(0.025, 0.5, 0.975),
    n_draws: int = 4096,
    n_adapt: int = 1024,
    seed: int = DEFAULT_SEED,
    gene_chunk: int = 32,
) -> ImportanceResult:
    """Posterior summaries of every column of ``Y`` (samples × genes) by importance sampling.

    Parameters
    ----------
    Y : numpy.ndarray
        ``n × G`` responses (complete).
    X : numpy.ndarray
        ``n × p`` fixed-effect design; ``coef_names`` its column names.
    blocks : list of RandomBlock
        The random blocks (rows of their Z in the order of ``Y``'s rows).
    metadata : ModelMetadata
        For the variance-fraction names (:func:`batchmix.lmm.model_metadata`).
    prior : {"brms_default", "unif_icc", "half_cauchy"}
        ``brms_default``: brms 2.18's default priors for the response (see :mod:`.priors`);
        otherwise flat β, ``p(σ²) ∝ 1/σ²``, the λ prior on each SD ratio ``sd²/σ²`` and LKJ(1).
    n_draws, n_adapt : int
        Sobol points of the final and of the adaptation pass (powers of 2).
    seed : int
        Seed of the scrambled Sobol sequence (the same points for every gene).

    Returns
    -------
    ImportanceResult
    """
    if prior != BRMS_DEFAULT and prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; choose one of {(BRMS_DEFAULT,) + tuple(PRIORS)}")
    Y = np.asarray(Y, dtype=float)
    n, G = Y.shape
    design = _make_design(np.asarray(X, dtype=float), coef_names, blocks)
    p, dim = design.p, design.dim
    Q, R = np.linalg.qr(design.X)
    beta_ols = np.linalg.solve(R, Q.T @ Y).T
    res = Y - Q @ (Q.T @ Y)
    Zr = (design.Z.T @ res).T
    rr = np.einsum("ij,ij->j", res, res)
    if prior == BRMS_DEFAULT:
        ls = np.array([brms_default_location_scale(Y[:, g]) for g in range(G)]).reshape(G, 2)
        loc, scale = ls[:, 0], ls[:, 1]
    else:
        loc = scale = np.full(G, np.nan)
    use_u = prior == BRMS_DEFAULT and design.c is not None
    names = _param_names(design, metadata)
    probs = np.asarray(probs, dtype=float)
    params = {nm: np.full((G, 2 + len(probs)), np.nan) for nm, _ in names}
    khat = np.full(G, np.nan)
    ess = np.full(G, np.nan)
    status = np.array(["ok"] * G, dtype=object)
    # standardised proposal points: d normals, one χ² (the t), one normal for u
    sob = qmc.Sobol(dim + 2, scramble=True, seed=seed)
    U_adapt = sob.random(n_adapt)
    U_final = sob.random(n_draws)

    def std_points(U):
        U = np.clip(U, 1e-12, 1 - 1e-12)
        z = special.ndtri(U[:, :dim])
        chi = stats.chi2.ppf(U[:, dim], _NU_PROPOSAL)
        delta = z * np.sqrt(_NU_PROPOSAL / chi)[:, None]
        logq = -(_NU_PROPOSAL + dim) / 2 * np.log1p((delta * delta).sum(axis=1) / _NU_PROPOSAL)
        return delta, logq, special.ndtri(U[:, dim + 1])

    d_adapt, q_adapt, _ = std_points(U_adapt)
    d_final, q_final, zu_final = std_points(U_final)
    rng = np.random.default_rng(seed)
    z_beta = rng.standard_normal((n_draws, p))  # for the fixed-effect variance fractions only
    # fraction pieces
    n_obs = design.n
    mean_outer = []
    for b in blocks:
        if b.group == KINSHIP:  # Z = L, L Lᵀ = K: the term's variance at sample i is σ_k² K_ii
            mean_outer.append(np.array([[np.sum(b.Z**2) / n_obs]]))
        else:
            zz = b.Z.reshape(n_obs, b.n_levels, b.n_terms).sum(axis=1)
            mean_outer.append(zz.T @ zz / n_obs)
    fixed_cov = []
    for term, col in metadata.fixed_fraction_columns.items():
        idx = [design.names.index(cn) for cn in metadata.fixed_terms[term] if cn in design.names]
        if idx:
            fixed_cov.append((col, idx, np.atleast_2d(np.cov(design.X[:, idx], rowvar=False, ddof=1))))
    random_frac = [metadata.groups[i].fraction_column for i in range(len(blocks))]

    # far-tail proposal draws overflow harmlessly (they get zero weight): keep the log clean
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for start in range(0, G, gene_chunk):
            gsl = slice(start, min(G, start + gene_chunk))
            st = _GeneStats(
                Zr[gsl],
                rr[gsl],
                beta_ols[gsl],
                loc[gsl] if use_u else None,
                scale[gsl] if prior == BRMS_DEFAULT else None,
            )
            Gc = st.rr.shape[0]
            # start: σ from the OLS residual, every SD at σ/2, correlations 0
            phi0 = np.zeros((Gc, dim))
            sig0 = np.sqrt(np.maximum(st.rr / max(n - p, 1), 1e-300))
            phi0[:, 0] = np.log(sig0)
            for b, off in zip(blocks, design.offsets):
                phi0[:, off : off + b.n_terms] = np.log(0.5 * sig0)[:, None]
            mode, prec = _find_mode(phi0, design, st, prior, prior_scale)
            chol_cov = np.linalg.cholesky(np.linalg.inv(prec)) * _INFLATE
            # adaptation passes: the weighted mean and covariance of the current proposal's draws
            centre, chol_f = mode, chol_cov
            for _ in range(_ADAPT_ROUNDS):
                phi_a = centre[:, None, :] + np.einsum("gij,sj->gsi", chol_f, d_adapt)
                lw_a = _log_posterior(phi_a, design, st, prior, prior_scale)["lp"] - q_adapt[None, :]
                lw_a = np.where(np.isfinite(lw_a), lw_a, -np.inf)
                wa = np.exp(lw_a - lw_a.max(axis=1, keepdims=True))
                wa /= wa.sum(axis=1, keepdims=True)
                ess_a = 1.0 / (wa * wa).sum(axis=1)
                mu_a = np.einsum("gs,gsi->gi", wa, phi_a)
                dev = phi_a - mu_a[:, None, :]
                cov_a = np.einsum("gs,gsi,gsj->gij", wa, dev, dev) + 1e-8 * np.eye(dim)
                good = (ess_a > 50) & np.all(np.isfinite(cov_a), axis=(1, 2))
                with np.errstate(invalid="ignore"):
                    chol_a = np.linalg.cholesky(np.where(good[:, None, None], cov_a, np.eye(dim))) * _INFLATE
                centre = np.where(good[:, None], mu_a, centre)
                chol_f = np.where(good[:, None, None], chol_a, chol_f)
            # defensive mixture (balance heuristic): most points from the adapted t, shares from a
            # wider adapted t and a wider Laplace t, so that tails the adaptation under-covers get draws
            comps = [(centre, chol_f), (centre, _WIDE * chol_f), (mode, _WIDE * chol_cov)]
            counts = np.round(np.array(_SHARES) * n_draws).astype(int)
            counts[0] = n_draws - counts[1:].sum()
            bounds = np.concatenate([[0], np.cumsum(counts)])
            phi = np.concatenate(
                [
                    mu_c[:, None, :] + np.einsum("gij,sj->gsi", L_c, d_final[bounds[i] : bounds[i + 1]])
                    for i, (mu_c, L_c) in enumerate(comps)
                ],
                axis=1,
            )
            logq = np.stack([_log_t_density(phi, mu_c, L_c) for mu_c, L_c in comps], axis=0)
            mix = np.log(np.array(_SHARES))[:, None, None]
            q_final_g = special.logsumexp(logq + mix, axis=0)
            ev = _log_posterior(phi, design, st, prior, prior_scale, full=True)
            lw = ev["lp0"] - q_final_g
            beta, Ainv, sigma = ev["beta"], ev["Ainv"], ev["sigma"]
            s2 = (sigma * sigma)[..., None]
            mu_b = beta
            var_b = s2 * np.diagonal(Ainv, axis1=-2, axis2=-1)
            if use_u:
                su = np.sqrt(np.maximum(ev["v_u"], 1e-300))
                u = ev["m_u"] + su * zu_final[None, :]
                lw = lw + log_student_t(u, 3.0, st.loc[:, None], st.scale[:, None])
                kvec = s2 * ev["Ac"] / ev["v_u"][..., None]  # Cov(β, u) / Var(u)
                mu_b = beta + kvec * (u - ev["m_u"])[..., None]
                var_b = np.maximum(var_b - kvec * kvec * ev["v_u"][..., None], 0.0)
            lw = np.where(np.isfinite(lw), lw, -np.inf)
            kh = pareto_khat(lw)
            w = np.exp(lw - lw.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)
            es = 1.0 / (w * w).sum(axis=1)
            rows = np.arange(start, start + Gc)
            khat[rows], ess[rows] = kh, es
            ok = np.isfinite(lw).any(axis=1) & np.isfinite(kh)
            st_chunk = np.where(~ok, missing.NUMERICAL, np.where(kh > MAX_KHAT, "failed:importance_khat", "ok"))
            st_chunk = np.where((st_chunk == "ok") & (es < MIN_ESS), "failed:importance_ess", st_chunk)
            status[rows] = st_chunk
            # per-draw derived quantities
            draws: dict[str, np.ndarray] = {"sigma": sigma}
            var_random = []
            for bi, (b, T, sd, C) in enumerate(zip(blocks, ev["Ts"], ev["sds"], ev["cors"])):
                for i, t in enumerate(b.terms):
                    draws[f"sd_{b.group}__{t}"] = sd[..., i]
                for i in range(b.n_terms):
                    for j in range(i + 1, b.n_terms):
                        draws[f"cor_{b.group}__{b.terms[i]}__{b.terms[j]}"] = C[..., i, j]
                Sig = s2[..., None] * (T @ np.swapaxes(T, -1, -2))
                var_random.append((random_frac[bi], np.einsum("gsij,ij->gs", Sig, mean_outer[bi])))
            if "ICC" in params:
                sd0 = draws[f"sd_{blocks[0].group}__{blocks[0].terms[0]}"]
                draws["ICC"] = sd0**2 / (sd0**2 + sigma**2)
            if metadata.fraction_columns():
                # a β draw per φ draw (exact conditional, Matheron's update for the u constraint)
                Lb = _small_cholesky(s2[..., None] * Ainv)
                bdraw = beta + np.einsum("gsij,sj->gsi", Lb, z_beta)
                if use_u:
                    bdraw = (
                        bdraw
                        + ev["Ac"]
                        / (ev["v_u"] / s2[..., 0])[..., None]
                        * (u - np.einsum("gsi,i->gs", bdraw, design.c))[..., None]
                    )
                fixed_var = [
                    (col, np.einsum("gsi,ij,gsj->gs", bdraw[..., idx], cov, bdraw[..., idx]))
                    for col, idx, cov in fixed_cov
                ]
                total = sigma**2 + sum(v for _, v in fixed_var) + sum(v for _, v in var_random)
                for col, v in fixed_var + var_random:
                    draws[col] = draws.get(col, 0.0) + v / total
                draws["frac_residual"] = sigma**2 / total
            live = w > 0  # draws of zero weight may hold non-finite values: keep them out of the sums
            mu_b = np.where(live[..., None], mu_b, 0.0)
            var_b = np.where(live[..., None], var_b, 0.0)
            for nm, kind in names:
                out = params[nm]
                if kind == "beta":
                    j = design.names.index(nm[2:])
                    m_ = (w * mu_b[..., j]).sum(axis=1)
                    v_ = (w * (var_b[..., j] + mu_b[..., j] ** 2)).sum(axis=1) - m_**2
                    qs = _normal_mixture_quantiles(w, mu_b[..., j], np.sqrt(var_b[..., j]), probs)
                else:
                    x = np.where(live, draws[nm], 0.0)
                    m_ = (w * x).sum(axis=1)
                    v_ = (w * x * x).sum(axis=1) - m_**2
                    qs = _weighted_quantiles(x, w, probs)
                out[rows, 0] = m_
                out[rows, 1] = np.sqrt(np.maximum(v_, 0.0))
                out[rows, 2:] = qs
    bad = status != "ok"
    for nm in params:
        params[nm][bad] = np.nan
    return ImportanceResult(params, khat, ess, status, loc, scale, n_draws)


def design_for(formula: str, samples: pd.DataFrame):
    """X, coefficient names, random blocks and metadata of a formula on a sample sheet."""
    X, names = fixed_design(formula, samples)
    blocks = random_design(formula, samples).blocks
    return X, names, blocks, model_metadata(formula, samples)
