"""One grouping factor (e.g. ``(Days | Subject)``): the θ engine level by level.

With a single random term, Z'Z is block diagonal (one s × s block C_j per level j) and
Λ = I_J ⊗ T, so I + Λ'Z'ZΛ splits into J independent s × s systems. Everything the
dense engine (:func:`batchmix.lmm.core.evaluate_dense`) computes with q × q matrices is computed
here from (J, s, s) stacks plus p × p corrections, in O(J s³ + J s² p) per gene
instead of O(q³) with q = J s. The formulas are the dense ones with
B = Z'PZ = blockdiag(K_j) − W (X'V⁻¹X)⁻¹ W' (K_j = Z_j'V⁻¹Z_j, W = Z'V⁻¹X) expanded,
and dD_k = I_J ⊗ S_k, S_k = E_k T' + T E_k'.
"""

from __future__ import annotations

import numpy as np

from .core import BlockDesign, Evaluation, GeneData, PreparedDesign, inverse_small, logdet_spd, profiled_deviance


def evaluate_block(
    theta: np.ndarray, data: GeneData, prepared: PreparedDesign, reml: bool, order: int = 0
) -> Evaluation:
    """Same contract as :func:`batchmix.lmm.general.evaluate`, for a single random term."""
    bd: BlockDesign = prepared.block
    G, p, n, J, s, m = theta.shape[0], prepared.p, prepared.n, bd.J, bd.s, theta.shape[1]
    T = np.zeros((G, s, s))
    T[:, bd.rows, bd.cols] = theta
    zy = data.Zty.reshape(G, J, s)
    # batched matmul over (gene, level) stacks: numpy's einsum is several times slower
    # on these tiny matrices
    Tt = T.transpose(0, 2, 1)
    CT = np.matmul(bd.C[None], T[:, None])  # C_j T
    Mj = np.matmul(Tt[:, None], CT)  # T' C_j T
    Mj[..., np.arange(s), np.arange(s)] += 1.0
    TZX = np.matmul(Tt[:, None], bd.ZX[None])  # T' Z_j'X
    Tzy = np.matmul(Tt[:, None], zy[..., None])[..., 0]  # T' Z_j'y
    rhs = np.concatenate([CT.transpose(0, 1, 3, 2), TZX, Tzy[..., None]], axis=3)
    if s == 2:
        # closed-form 2 × 2 systems (symmetric positive definite: I + T'C_jT)
        # symmetric in exact arithmetic: use the upper entry on both sides of the diagonal
        Mj[..., 1, 0] = Mj[..., 0, 1]
        det = Mj[..., 0, 0] * Mj[..., 1, 1] - Mj[..., 0, 1] * Mj[..., 1, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            logdet_V = np.where(det > 0, np.log(det), np.nan).sum(axis=1)
            inv = inverse_small(Mj)
        sol = np.matmul(inv, rhs)
    else:
        logdet_V = logdet_spd(Mj).sum(axis=1)
        sol = np.linalg.solve(Mj, rhs)
    solC, solX, soly = sol[..., :s], sol[..., s : s + p], sol[..., s + p]
    K = bd.C[None] - np.matmul(CT, solC)  # Z_j'V⁻¹Z_j
    W = bd.ZX[None] - np.matmul(CT, solX)  # Z_j'V⁻¹X
    ZVy = zy - np.einsum("gjab,gjb->gja", CT, soly)
    M = prepared.XtX - np.einsum("gjap,gjar->gpr", TZX, solX)
    XVy = data.Xty - np.einsum("gjap,gja->gp", TZX, soly)
    yVy = data.yty - np.einsum("gja,gja->g", Tzy, soly)
    logdet_M = logdet_spd(M)
    beta = np.linalg.solve(M, XVy[:, :, None])[:, :, 0]
    r2 = yVy - np.einsum("gp,gp->g", beta, XVy)
    r2 = np.where(r2 > 0, r2, np.nan)
    k = n - p if reml else n
    deviance = profiled_deviance(logdet_V, logdet_M, r2, n, p, reml)
    ev = Evaluation(deviance, r2, logdet_V, logdet_M, beta, M, None, None, None, None)
    u = soly - np.einsum("gjap,gp->gja", solX, beta)
    ev.b = np.einsum("gab,gjb->gja", T, u).reshape(G, J * s)
    if order == 0:
        return ev
    N = np.linalg.inv(M)
    a = ZVy - np.einsum("gjap,gp->gja", W, beta)
    ET = np.einsum("kab,gcb->gkac", bd.E, T)  # E_k T'
    S = ET + ET.transpose(0, 1, 3, 2)
    Kbar = K.sum(axis=1)
    A = np.einsum("gja,gjb->gab", a, a)
    # two-operand contractions only: numpy's einsum loops naively over 3 operands
    WW = np.einsum("gjap,gjbr->gabpr", W, W)  # Σ_j W_j[a]' W_j[b]
    Q = np.einsum("gkab,gabpr->gkpr", S, WW)  # Σ_j W_j' S_k W_j
    f_grad = np.einsum("gab,gkba->gk", Kbar, S)
    if reml:
        f_grad = f_grad - np.einsum("gpr,gkrp->gk", N, Q)
    s_k = np.einsum("gkab,gab->gk", S, A)
    ev.f_grad, ev.r2_grad = f_grad, -s_k
    ev.grad = f_grad - k * s_k / r2[:, None]
    ev.dM = -Q
    if order < 2:
        return ev
    KS = np.matmul(K[:, :, None], S[:, None])  # K_j S_l: G × J × m × s × s
    # Σ_j tr(K_j S_l K_j S_k) as one batched product over the flattened (j, a, b)
    KS_flat = KS.transpose(0, 2, 1, 3, 4).reshape(G, m, J * s * s)
    KSt_flat = KS.transpose(0, 2, 1, 4, 3).reshape(G, m, J * s * s)
    tr_KSKS = np.matmul(KS_flat, KSt_flat.transpose(0, 2, 1))
    tr_F = np.einsum("gab,klba->gkl", Kbar, bd.F)
    if reml:
        SW = np.matmul(S[:, None], W[:, :, None])  # S_k W_j: G × J × m × s × p
        KSW = np.matmul(K[:, :, None], SW)  # K_j S_l W_j
        # Σ_j W_j' S_k K_j S_l W_j as one batched product over the flattened (j, a)
        left = SW.transpose(0, 2, 4, 1, 3).reshape(G, m * p, J * s)
        right = KSW.transpose(0, 1, 3, 2, 4).reshape(G, J * s, m * p)
        R = np.matmul(left, right).reshape(G, m, p, m, p).transpose(0, 1, 3, 2, 4)
        NR = np.einsum("gpr,gklrp->gkl", N, R)
        NQ = np.matmul(N[:, None], Q)
        tr_BSBS = tr_KSKS - NR - NR.transpose(0, 2, 1) + np.einsum("glac,gkca->gkl", NQ, NQ)
        WFW = np.einsum("klab,gabpr->gklpr", bd.F, WW)
        tr_F = tr_F - np.einsum("gpr,gklrp->gkl", N, WFW)
    else:
        tr_BSBS = tr_KSKS
    f_hess = tr_F - tr_BSBS
    v = np.einsum("gkab,gjb->gjka", S, a)
    v_flat = v.transpose(0, 2, 1, 3).reshape(G, m, J * s)  # (k; j, a)
    Wv = np.matmul(v_flat, W.reshape(G, J * s, p))  # Σ_j W_j' v_kj
    Kv = np.matmul(K[:, :, None], v[..., None])[..., 0]  # K_j v_kj
    Kv_flat = Kv.transpose(0, 2, 1, 3).reshape(G, m, J * s)
    NWv = np.matmul(Wv, N)  # N symmetric
    vBv = np.matmul(Kv_flat, v_flat.transpose(0, 2, 1)) - np.matmul(NWv, Wv.transpose(0, 2, 1))
    r2_hess = 2.0 * vBv - np.einsum("klab,gab->gkl", bd.F, A)
    ev.f_hess, ev.r2_hess = f_hess, r2_hess
    ev.hess = f_hess + k * (r2_hess / r2[:, None, None] - s_k[:, :, None] * s_k[:, None, :] / (r2**2)[:, None, None])
    return ev


def moment_start(data: GeneData, prepared: PreparedDesign) -> np.ndarray | None:
    """Moment estimate of θ for a single random term from the sufficient statistics.

    Per level j, b̂_j = C_j⁻¹ Z_j'r with r = y − Xβ̂ (OLS); their spread across levels
    estimates Σ/σ² + mean(C_j⁻¹) (Swamy's estimator), σ² coming from the pooled residuals
    of the per-level fits. T is the Cholesky factor of the estimate (eigenvalues floored at
    0, so boundary starts are possible). None when a level's C_j is singular or the levels
    leave no residual degrees of freedom.
    """
    bd: BlockDesign = prepared.block
    J, s, n = bd.J, bd.s, prepared.n
    if n <= J * s or J < 2:
        return None
    w = np.linalg.eigvalsh(bd.C)
    if (w[:, 0] <= 1e-8 * np.maximum(w[:, -1], 1e-300)).any():
        return None
    Cinv = np.linalg.inv(bd.C)  # J × s × s
    G = data.yty.shape[0]
    beta = np.linalg.solve(prepared.XtX, data.Xty.T).T  # G × p
    Zr = data.Zty.reshape(G, J, s) - np.einsum("jap,gp->gja", bd.ZX, beta)
    bhat = np.einsum("jab,gjb->gja", Cinv, Zr)  # G × J × s
    rss = data.yty - np.einsum("gp,gp->g", beta, data.Xty)
    within = rss - np.einsum("gja,gja->g", bhat, Zr)
    sigma2 = np.maximum(within / (n - J * s), 1e-12 * np.maximum(rss / n, 1e-300))
    centred = bhat - bhat.mean(axis=1, keepdims=True)
    S = np.einsum("gja,gjb->gab", centred, centred) / (J - 1)
    Sigma = S / sigma2[:, None, None] - Cinv.mean(axis=0)[None]
    w, V = np.linalg.eigh(Sigma)
    w = np.clip(w, 0.0, None)
    # a factor with non-negative diagonal: the Cholesky factor of V w V' via QR of (V √w)'
    F = V * np.sqrt(w)[:, None, :]  # Σ = F F'
    _, R = np.linalg.qr(F.transpose(0, 2, 1))  # F' = Q R → Σ = R' R
    T = R.transpose(0, 2, 1)  # lower triangular
    sign = np.where(np.diagonal(T, axis1=1, axis2=2) < 0, -1.0, 1.0)
    T = T * sign[:, None, :]
    theta = T[:, bd.rows, bd.cols]
    return np.where(np.isfinite(theta).all(axis=1, keepdims=True), theta, np.nan)
