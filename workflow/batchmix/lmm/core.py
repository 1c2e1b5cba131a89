"""Vectorised core of batchmix's per-gene linear mixed models.

Every gene shares the design: X (n × p), Z (n × q) and hence X'X, Z'Z and Z'X.
Only Z'y, X'y and y'y differ between genes. The functions here evaluate lme4's
profiled deviance, its analytic gradient and Hessian in the relative covariance
parameters θ, for many genes at once (each gene at its own θ), working entirely
with q × q matrices stacked along a leading gene axis.

Notation (lme4's): the random effects are b = Λ u with u ~ N(0, σ² I), so that
Var(y) = σ² V with V = I + Z D Z', D = ΛΛ'. Λ is block diagonal, one block
I_J ⊗ T per random term with a lower-triangular s × s factor T holding the θ
parameters of that term (column-major lower triangle, as lme4 stores them).

With P = V⁻¹ - V⁻¹X (X'V⁻¹X)⁻¹ X'V⁻¹ and r² = y'Py (the penalised residual sum of
squares), lme4's profiled deviances are
    REML:  log|V| + log|X'V⁻¹X| + (n-p) (1 + log(2π r² / (n-p)))
    ML:    log|V| + n (1 + log(2π r² / n))
and log|V| = log|I + Λ'Z'ZΛ| (so the REML criterion includes log|X'X| at θ = 0, as lme4's does).

Derivatives (dD_k = E_k Λ' + Λ E_k', E_k = ∂Λ/∂θ_k, a = Z'Py, B = Z'PZ,
B_f = B for REML and Z'V⁻¹Z for ML, s_k = a' dD_k a, f = the log-determinant part):
    ∂_k f  = tr(B_f dD_k)
    ∂_kl f = tr(B_f ∂²D_kl) - tr(B_f dD_l B_f dD_k),   ∂²D_kl = E_k E_l' + E_l E_k'
    ∂_k r² = -s_k
    ∂_kl r² = 2 (dD_l a)' B (dD_k a) - a' ∂²D_kl a
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from ..design import RandomDesign

LOG_2PI = float(np.log(2.0 * np.pi))
SINGULAR_TOL = 1e-4  # lme4's isSingular() default tolerance on θ


def merge_equal(values: np.ndarray, rel: float = 1e-11) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values (to ``rel`` × max), their multiplicities and each value's group."""
    if values.size == 0:
        return values.copy(), np.zeros(0), np.zeros(0, dtype=int)
    order = np.argsort(values, kind="stable")
    v = values[order]
    tol = rel * max(float(np.abs(v).max()), 1e-300)
    new = np.concatenate([[True], np.diff(v) > tol])
    group = np.empty(values.size, dtype=int)
    group[order] = np.cumsum(new) - 1
    counts = np.bincount(group).astype(float)
    return np.bincount(group, weights=values) / counts, counts, group


def crossproduct_eigen(ZtZ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues d (clipped at 0) and eigenvectors Qz of Z'Z: the rotation's ``d`` and ``Qz``.

    With U = Z Qz[:, d > 0] / √d, Z Z' = U diag(d) U' (what the grid posterior rotates by).
    """
    d, Qz = np.linalg.eigh(ZtZ)
    return np.clip(d, 0.0, None), Qz


@dataclass
class Rotation:
    """The EMMA / FaST-LMM rotation of a single-θ design, shared by all genes (see :mod:`batchmix.lmm.onecomp`)."""

    QX: np.ndarray  # n × p orthonormal basis of X's columns
    U: np.ndarray  # n × k, eigenvectors of S Z Z' S with non-zero eigenvalue
    xi: np.ndarray  # k, those eigenvalues
    Qz: np.ndarray  # q × q eigenvectors of Z'Z
    d: np.ndarray  # q eigenvalues of Z'Z
    W: np.ndarray  # q × p, Qz' Z'X
    P: np.ndarray | None = None  # n × (p + q): [QX, U, S Z R₀] (R₀: null directions of S Z)
    to_wy: np.ndarray | None = None  # (p + q) × q: projections → Qz' Z'y
    RX: np.ndarray | None = None  # p × p, X = QX RX
    xi_u: np.ndarray | None = None  # distinct ξ
    xi_n: np.ndarray | None = None  # their multiplicities
    xi_onehot: np.ndarray | None = None  # k × (distinct ξ), sums η² over equal ξ
    d_u: np.ndarray | None = None  # distinct eigenvalues of Z'Z and multiplicities (ML)
    d_n: np.ndarray | None = None
    WW: np.ndarray | None = None  # q × p², rows W_j W_j' flattened
    ZQ: np.ndarray | None = None  # p × q, QX' Z
    R_keep: np.ndarray | None = None  # q × k, eigenvectors of Z'S Z with non-zero eigenvalue (U = S Z R_keep / √ξ)


def build_rotation(X: np.ndarray, Z: np.ndarray, ZtZ: np.ndarray, ZtX: np.ndarray, m: int) -> Rotation | None:
    """The rotation for a single-θ model, or None if the model has more parameters."""
    if m != 1:
        return None
    QX, RX = np.linalg.qr(X)
    ZQ = QX.T @ Z
    SZ = Z - QX @ ZQ
    xi_all, R = np.linalg.eigh(SZ.T @ SZ)
    keep = xi_all > 1e-10 * max(xi_all.max(initial=0.0), 1.0)
    xi = xi_all[keep]
    U = SZ @ R[:, keep] / np.sqrt(xi)
    d, Qz = crossproduct_eigen(ZtZ)
    W = Qz.T @ ZtX
    # S Z = U diag(√ξ) R_keep' + (S Z R_drop) R_drop' exactly, so with the projections
    # [QX'y, U'y, (S Z R_drop)'y] of y: Z'y = ZQ' QX'y + R_keep diag(√ξ) U'y + R_drop (S Z R_drop)'y
    P = np.column_stack([QX, U, SZ @ R[:, ~keep]])
    Zmap = np.vstack([ZQ, np.sqrt(xi)[:, None] * R[:, keep].T, R[:, ~keep].T])
    xi_u, xi_n, group = merge_equal(xi)
    onehot = np.zeros((xi.size, xi_u.size))
    onehot[np.arange(xi.size), group] = 1.0
    d_u, d_n, _ = merge_equal(d)
    p = X.shape[1]
    WW = (W[:, :, None] * W[:, None, :]).reshape(W.shape[0], p * p)
    return Rotation(
        QX=QX,
        U=U,
        xi=xi,
        Qz=Qz,
        d=d,
        W=W,
        P=P,
        to_wy=Zmap @ Qz,
        RX=RX,
        xi_u=xi_u,
        xi_n=xi_n,
        xi_onehot=onehot,
        d_u=d_u,
        d_n=d_n,
        WW=WW,
        ZQ=ZQ,
        R_keep=R[:, keep],
    )


@dataclass
class BlockDesign:
    """Per-level pieces of a single-term design, shared by all genes."""

    C: np.ndarray  # J × s × s, blocks of Z'Z
    ZX: np.ndarray  # J × s × p, blocks of Z'X
    E: np.ndarray  # m × s × s, ∂T/∂θ_k
    F: np.ndarray  # m × m × s × s, E_k E_l' + E_l E_k'
    rows: np.ndarray  # θ_k's row in T
    cols: np.ndarray  # θ_k's column in T
    J: int
    s: int


def build_block_design(random: RandomDesign, ZtZ: np.ndarray, ZtX: np.ndarray) -> BlockDesign | None:
    """Level-wise design when the model has exactly one random term with s ≥ 2 columns."""
    blocks = random.blocks
    if len(blocks) != 1 or blocks[0].n_terms < 2:
        return None
    block = blocks[0]
    J, s = block.n_levels, block.n_terms
    ZtZ = ZtZ.reshape(J, s, J, s)
    C = np.einsum("jajb->jab", ZtZ)
    off = ZtZ.copy()
    off[np.arange(J), :, np.arange(J), :] = 0.0
    if np.abs(off).max(initial=0.0) > 0:
        return None  # not block diagonal (cannot happen for one grouping factor)
    ZX = ZtX.reshape(J, s, -1)
    rows, cols = [], []
    for c in range(s):
        for r in range(c, s):
            rows.append(r)
            cols.append(c)
    m = len(rows)
    E = np.zeros((m, s, s))
    E[np.arange(m), rows, cols] = 1.0
    prod = np.einsum("kab,lcb->klac", E, E)
    F = prod + prod.transpose(1, 0, 2, 3)
    return BlockDesign(C=C, ZX=ZX, E=E, F=F, rows=np.asarray(rows), cols=np.asarray(cols), J=J, s=s)


def logdet_spd(matrix: np.ndarray) -> np.ndarray:
    """Batched log-determinant of symmetric positive definite matrices; others give NaN."""
    try:
        chol = np.linalg.cholesky(matrix)
        return 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    except np.linalg.LinAlgError:
        sign, logdet = np.linalg.slogdet(matrix)
        return np.where(sign > 0, logdet, np.nan)


def inverse_small(M: np.ndarray) -> np.ndarray:
    """Inverse of a stack of p × p matrices (leading axes any), in closed form for p ≤ 2."""
    p = M.shape[-1]
    if p == 1:
        return 1.0 / M
    if p == 2:
        a, b, c, d = M[..., 0, 0], M[..., 0, 1], M[..., 1, 0], M[..., 1, 1]
        det = a * d - b * c
        out = np.empty_like(M)
        out[..., 0, 0], out[..., 0, 1], out[..., 1, 0], out[..., 1, 1] = d / det, -b / det, -c / det, a / det
        return out
    return np.linalg.inv(M)


def gene_chunks(G: int, prepared: "PreparedDesign", budget: float = 3e6) -> list[slice]:
    """Gene chunks so that the G × m × q × q derivative stacks stay small in memory."""
    if prepared.block is not None:
        bd = prepared.block
        per_gene = max(1, (prepared.m + 2) ** 2 * bd.J * bd.s * max(bd.s, prepared.p) ** 2)
    else:
        per_gene = max(1, (prepared.m + 2) * prepared.q * prepared.q)
    size = max(1, int(budget // per_gene))
    return [slice(i, min(G, i + size)) for i in range(0, G, size)]


@dataclass
class PreparedDesign:
    """A design shared by all genes, with the cross-products the fits need.

    Build it with :func:`batchmix.lmm.prepare`. Attributes ending in ``t`` are
    transposed cross-products (``ZtX`` is Z'X).
    """

    X: np.ndarray
    Z: np.ndarray
    fixed_names: list[str]
    random: RandomDesign
    reml: bool
    XtX: np.ndarray = field(init=False)
    ZtX: np.ndarray = field(init=False)
    ZtZ: np.ndarray = field(init=False)
    logdet_XtX: float = field(init=False)
    theta_rows: np.ndarray = field(init=False)
    theta_cols: np.ndarray = field(init=False)
    theta_index: np.ndarray = field(init=False)
    theta_lower: np.ndarray = field(init=False)
    E: np.ndarray = field(init=False)
    d2D: np.ndarray = field(init=False)
    df_residual: int = field(init=False)
    diagonal_lambda: np.ndarray | None = field(init=False, default=None)
    rotation: Rotation | None = field(init=False, default=None)
    block: BlockDesign | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        X, Z = self.X, self.Z
        self.XtX = X.T @ X
        self.ZtX = Z.T @ X
        self.ZtZ = Z.T @ Z
        sign, logdet = np.linalg.slogdet(self.XtX)
        if sign <= 0:
            raise ValueError("the fixed-effect design is rank deficient")
        self.logdet_XtX = float(logdet)
        rows, cols, index, lower = [], [], [], []
        offset, k = 0, 0
        for block in self.random.blocks:
            s, J = block.n_terms, block.n_levels
            local = {}
            for c in range(s):
                for r in range(c, s):
                    local[(r, c)] = k
                    lower.append(0.0 if r == c else -np.inf)
                    k += 1
            for j in range(J):
                for (r, c), kk in local.items():
                    rows.append(offset + j * s + r)
                    cols.append(offset + j * s + c)
                    index.append(kk)
            offset += s * J
        self.theta_rows = np.asarray(rows, dtype=int)
        self.theta_cols = np.asarray(cols, dtype=int)
        self.theta_index = np.asarray(index, dtype=int)
        self.theta_lower = np.asarray(lower)
        m, q = k, self.q
        E = np.zeros((m, q, q))
        E[self.theta_index, self.theta_rows, self.theta_cols] = 1.0
        self.E = E
        # ∂²D_kl = E_k E_l' + E_l E_k', constant in θ because Λ is linear in θ
        prod = np.einsum("kij,lmj->klim", E, E)
        self.d2D = prod + prod.transpose(1, 0, 3, 2)
        if m and all(block.n_terms == 1 for block in self.random.blocks):
            # Λ diagonal: column i carries θ_{index(i)}; L is the q × m indicator
            L = np.zeros((q, m))
            L[self.theta_rows, self.theta_index] = 1.0
            self.diagonal_lambda = L
        rank = np.linalg.matrix_rank(np.column_stack([X, Z])) if Z.size else X.shape[1]
        self.df_residual = int(X.shape[0] - rank)
        # the engines' precomputation: the rotation for a single θ, the level-wise blocks for
        # one grouping factor with several columns
        if m:
            self.rotation = build_rotation(X, Z, self.ZtZ, self.ZtX, m)
            self.block = build_block_design(self.random, self.ZtZ, self.ZtX)

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def p(self) -> int:
        return self.X.shape[1]

    @property
    def q(self) -> int:
        return self.Z.shape[1]

    @property
    def m(self) -> int:
        return len(self.theta_lower)

    def theta_start(self) -> np.ndarray:
        """lme4's starting point: 1 on the diagonal of each T, 0 elsewhere."""
        return np.where(self.theta_lower == 0.0, 1.0, 0.0)

    def make_lambda(self, theta: np.ndarray) -> np.ndarray:
        """Stacked Λ (G × q × q) for θ (G × m)."""
        lam = np.zeros((theta.shape[0], self.q, self.q))
        lam[:, self.theta_rows, self.theta_cols] = theta[:, self.theta_index]
        return lam


@dataclass
class GeneData:
    """The per-gene sufficient statistics: Z'y, X'y, y'y."""

    Zty: np.ndarray  # G × q
    Xty: np.ndarray  # G × p
    yty: np.ndarray  # G

    @classmethod
    def from_matrix(cls, Y: np.ndarray, prepared: PreparedDesign) -> "GeneData":
        return cls(Zty=Y @ prepared.Z, Xty=Y @ prepared.X, yty=np.einsum("gi,gi->g", Y, Y))

    def take(self, index: np.ndarray) -> "GeneData":
        return GeneData(self.Zty[index], self.Xty[index], self.yty[index])


@dataclass
class Evaluation:
    """Quantities at θ for a stack of genes; derivative fields filled on request."""

    deviance: np.ndarray
    r2: np.ndarray
    logdet_V: np.ndarray
    logdet_M: np.ndarray
    beta: np.ndarray
    M: np.ndarray  # X'V⁻¹X
    ZVX: np.ndarray  # Z'V⁻¹X
    ZVZ: np.ndarray  # Z'V⁻¹Z
    ZVy: np.ndarray  # Z'V⁻¹y
    lam: np.ndarray
    grad: np.ndarray | None = None
    hess: np.ndarray | None = None
    # pieces reused by the Satterthwaite computation
    f_grad: np.ndarray | None = None
    f_hess: np.ndarray | None = None
    r2_grad: np.ndarray | None = None
    r2_hess: np.ndarray | None = None
    b: np.ndarray | None = None  # conditional modes (random effects), G × q in Z's order
    dM: np.ndarray | None = None  # ∂(X'V⁻¹X)/∂θ_k, G × m × p × p

    def take(self, rows: np.ndarray) -> "Evaluation":
        """The genes ``rows`` of this evaluation."""
        return Evaluation(
            **{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[rows]) for f in fields(self)}
        )


def _chol_logdet(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched Cholesky factor and log-determinant; non-PD entries give NaN."""
    try:
        chol = np.linalg.cholesky(matrix)
        return chol, 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    except np.linalg.LinAlgError:
        sign, logdet = np.linalg.slogdet(matrix)
        return None, np.where(sign > 0, logdet, np.nan)


def evaluate_dense(
    theta: np.ndarray, data: GeneData, prepared: PreparedDesign, reml: bool, order: int = 0
) -> Evaluation:
    """:func:`evaluate` with dense q × q matrices (any random-effects structure)."""
    q, p, n = prepared.q, prepared.p, prepared.n
    lam = prepared.make_lambda(theta)
    CL = np.matmul(prepared.ZtZ, lam)  # Z'Z Λ
    Mq = np.matmul(lam.transpose(0, 2, 1), CL)  # Λ'Z'ZΛ
    Mq[:, np.arange(q), np.arange(q)] += 1.0
    _, logdet_V = _chol_logdet(Mq)
    rhs = np.concatenate(
        [
            CL.transpose(0, 2, 1),  # Λ'Z'Z
            np.matmul(lam.transpose(0, 2, 1), prepared.ZtX),  # Λ'Z'X
            np.matmul(lam.transpose(0, 2, 1), data.Zty[:, :, None]),
        ],  # Λ'Z'y
        axis=2,
    )
    sol = np.linalg.solve(Mq, rhs)
    ZVZ = prepared.ZtZ - np.matmul(CL, sol[:, :, :q])
    ZVX = prepared.ZtX - np.matmul(CL, sol[:, :, q : q + p])
    ZVy = data.Zty - np.matmul(CL, sol[:, :, q + p :])[:, :, 0]
    LtZX = rhs[:, :, q : q + p]
    LtZy = rhs[:, :, q + p]
    M = prepared.XtX - np.matmul(LtZX.transpose(0, 2, 1), sol[:, :, q : q + p])
    XVy = data.Xty - np.einsum("gqp,gq->gp", LtZX, sol[:, :, q + p])
    yVy = data.yty - np.einsum("gq,gq->g", LtZy, sol[:, :, q + p])
    _, logdet_M = _chol_logdet(M)
    beta = np.linalg.solve(M, XVy[:, :, None])[:, :, 0]
    r2 = yVy - np.einsum("gp,gp->g", beta, XVy)
    r2 = np.where(r2 > 0, r2, np.nan)
    deviance = profiled_deviance(logdet_V, logdet_M, r2, n, p, reml)
    ev = Evaluation(deviance, r2, logdet_V, logdet_M, beta, M, ZVX, ZVZ, ZVy, lam)
    # spherical conditional modes u = M_q⁻¹ Λ'Z'(y - Xβ)
    u = sol[:, :, q + p] - np.einsum("gqp,gp->gq", sol[:, :, q : q + p], beta)
    ev.b = np.einsum("gij,gj->gi", lam, u)
    if order >= 1:
        _derivatives(ev, prepared, reml, order)
    return ev


def profiled_deviance(
    logdet_V: np.ndarray, logdet_M: np.ndarray, r2: np.ndarray, n: int, p: int, reml: bool
) -> np.ndarray:
    """lme4's profiled deviance (σ² profiled out) from log|V_θ|, log|XᵀV_θ⁻¹X| and the penalised RSS.

    REML: log|V| + log|M| + (n − p)(1 + log(2π r²/(n − p))); ML: log|V| + n(1 + log(2π r²/n)).
    """
    if reml:
        k = n - p
        return logdet_V + logdet_M + k * (1.0 + np.log(2.0 * np.pi * r2 / k))
    return logdet_V + n * (1.0 + np.log(2.0 * np.pi * r2 / n))


def _derivatives(ev: Evaluation, prepared: PreparedDesign, reml: bool, order: int) -> None:
    n, p = prepared.n, prepared.p
    Minv = np.linalg.inv(ev.M)
    B = ev.ZVZ - np.matmul(np.matmul(ev.ZVX, Minv), ev.ZVX.transpose(0, 2, 1))
    a = ev.ZVy - np.einsum("gqp,gp->gq", ev.ZVX, ev.beta)
    Bf = B if reml else ev.ZVZ
    if prepared.diagonal_lambda is not None:
        _derivatives_diagonal(ev, prepared, reml, order, B, Bf, a)
        return
    ELt = np.matmul(prepared.E[None], ev.lam.transpose(0, 2, 1)[:, None])  # G × m × q × q
    dD = ELt + ELt.transpose(0, 1, 3, 2)
    G, m, q = dD.shape[0], dD.shape[1], dD.shape[2]
    # matmul / elementwise forms throughout: numpy's einsum is slow on these stacks
    f_grad = (Bf[:, None] * dD).sum(axis=(2, 3))  # tr(B_f dD_k), both symmetric
    v = np.matmul(dD, a[:, None, :, None])[..., 0]
    s = np.einsum("gki,gi->gk", v, a)
    k = (n - p) if reml else n
    r2 = ev.r2
    ev.f_grad = f_grad
    ev.r2_grad = -s
    # ∂(X'V⁻¹X)/∂θ_k = -(Z'V⁻¹X)' dD_k (Z'V⁻¹X)
    ev.dM = -np.matmul(ev.ZVX.transpose(0, 2, 1)[:, None], np.matmul(dD, ev.ZVX[:, None]))
    ev.grad = f_grad - k * s / r2[:, None]
    if order >= 2:
        BfdD = np.matmul(Bf[:, None], dD)
        d2D_flat = prepared.d2D.reshape(m * m, q * q)  # symmetric in (i, j)
        tr_Bf_d2D = (Bf.reshape(G, q * q) @ d2D_flat.T).reshape(G, m, m)
        flat = BfdD.reshape(G, m, q * q)
        flat_t = BfdD.transpose(0, 1, 3, 2).reshape(G, m, q * q)
        tr_BdBd = np.matmul(flat, flat_t.transpose(0, 2, 1))  # tr(B_f dD_k B_f dD_l)
        f_hess = tr_Bf_d2D - tr_BdBd
        Bv = np.matmul(B[:, None], v[..., None])[..., 0]
        aa = (a[:, :, None] * a[:, None, :]).reshape(G, q * q)
        r2_hess = 2.0 * np.matmul(v, Bv.transpose(0, 2, 1)) - (aa @ d2D_flat.T).reshape(G, m, m)
        ev.f_hess = f_hess
        ev.r2_hess = r2_hess
        ev.hess = f_hess + k * (r2_hess / r2[:, None, None] - s[:, :, None] * s[:, None, :] / (r2**2)[:, None, None])


def _derivatives_diagonal(
    ev: Evaluation, prepared: PreparedDesign, reml: bool, order: int, B: np.ndarray, Bf: np.ndarray, a: np.ndarray
) -> None:
    """:func:`_derivatives` when Λ is diagonal (random intercepts / single columns only).

    With L (q × m) the indicator of each θ's columns and t = θ per column, dD_k =
    2θ_k diag(L_k) and ∂²D_kl = 2δ_kl diag(L_k), so every trace is a sum over blocks:
    tr(B dD_k) = 2θ_k Σ_{i∈k} B_ii, tr(B dD_k B dD_l) = 4θ_kθ_l Σ_{i∈k, j∈l} B_ij², and
    the q × q stacks of the general formulas are never formed.
    """
    n, p = prepared.n, prepared.p
    L = prepared.diagonal_lambda  # q × m
    G = B.shape[0]
    theta_q = np.diagonal(ev.lam, axis1=1, axis2=2)  # G × q
    theta_m = theta_q @ (L / L.sum(axis=0))  # G × m
    k = (n - p) if reml else n
    r2 = ev.r2
    two_t = 2.0 * theta_m
    f_grad = two_t * (np.diagonal(Bf, axis1=1, axis2=2) @ L)
    a2 = a * a
    s = two_t * (a2 @ L)
    ev.f_grad = f_grad
    ev.r2_grad = -s
    Wx = ev.ZVX  # G × q × p
    outer = (Wx[:, :, :, None] * Wx[:, :, None, :]).reshape(G, -1, p * p)
    per_block = np.matmul(outer.transpose(0, 2, 1), L)  # G × p² × m
    ev.dM = -(two_t[:, None, :] * per_block).transpose(0, 2, 1).reshape(G, -1, p, p)
    ev.grad = f_grad - k * s / r2[:, None]
    if order >= 2:
        tt = theta_m[:, :, None] * theta_m[:, None, :]
        LtBBL = np.matmul(np.matmul(L.T, Bf * Bf), L)  # G × m × m
        f_hess = 2.0 * np.eye(L.shape[1])[None] * (np.diagonal(Bf, axis1=1, axis2=2) @ L)[:, None, :] - 4.0 * tt * LtBBL
        aBa = np.matmul(np.matmul(L.T, a[:, :, None] * B * a[:, None, :]), L)
        r2_hess = 8.0 * tt * aBa - 2.0 * np.eye(L.shape[1])[None] * (a2 @ L)[:, None, :]
        ev.f_hess = f_hess
        ev.r2_hess = r2_hess
        ev.hess = f_hess + k * (r2_hess / r2[:, None, None] - s[:, :, None] * s[:, None, :] / (r2**2)[:, None, None])


def varpar_derivatives(
    ev: Evaluation, prepared: PreparedDesign, reml: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What lmerTest's Satterthwaite method needs, analytically, at an optimum.

    lmerTest differentiates the deviance written in (θ, σ) (not profiled over σ):
    dev(θ, σ) = f(θ) + k log(2πσ²) + r²(θ)/σ², and vcov(β) = σ² (X'V⁻¹X)⁻¹.
    ``ev`` must come from :func:`evaluate` with ``order=2``.

    Returns
    -------
    hess : G × (m+1) × (m+1), Hessian of dev in (θ, σ)
    jac : G × (m+1) × p × p, derivatives of vcov(β) in (θ, σ)
    vcov : G × p × p
    """
    n, p, m = prepared.n, prepared.p, prepared.m
    k = (n - p) if reml else n
    sigma2 = ev.r2 / k
    sigma = np.sqrt(sigma2)
    G = sigma.size
    hess = np.empty((G, m + 1, m + 1))
    hess[:, :m, :m] = ev.f_hess + ev.r2_hess / sigma2[:, None, None]
    hess[:, :m, m] = hess[:, m, :m] = -2.0 * ev.r2_grad / sigma[:, None] ** 3
    hess[:, m, m] = -2.0 * k / sigma2 + 6.0 * ev.r2 / sigma2**2
    Minv = np.linalg.inv(ev.M)
    vcov = sigma2[:, None, None] * Minv
    inner = -ev.dM
    jac = np.empty((G, m + 1, p, p))
    jac[:, :m] = sigma2[:, None, None, None] * np.matmul(np.matmul(Minv[:, None], inner), Minv[:, None])
    jac[:, m] = 2.0 * sigma[:, None, None] * Minv
    return hess, jac, vcov


def satterthwaite_df(vcov: np.ndarray, hess: np.ndarray, jac: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """Satterthwaite denominator df per coefficient, as lmerTest computes them.

    lmerTest takes vcov(θ, σ) = 2 H⁺, with H⁺ the Moore-Penrose inverse of the
    deviance Hessian over its eigenvalues above ``tol``; for coefficient j,
    df = 2 Var(β̂_j)² / (g' vcov(θ, σ) g) with g = ∂Var(β̂_j)/∂(θ, σ).
    """
    var = np.diagonal(vcov, axis1=1, axis2=2)
    grad = np.diagonal(jac, axis1=2, axis2=3)  # G × (m+1) × p
    if hess.shape[-1] == 2:
        A = _pinv2_sym(hess, tol)
    else:
        w, V = np.linalg.eigh(hess)
        inv_w = np.where(w > tol, 1.0 / np.where(w > tol, w, 1.0), 0.0)
        A = np.matmul(V * inv_w[:, None, :], V.transpose(0, 2, 1))
    A = 2.0 * A
    denom = (grad * np.matmul(A, grad)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2.0 * var**2 / denom


def _pinv2_sym(H: np.ndarray, tol: float) -> np.ndarray:
    """Σ over eigenvalues w > tol of v v' / w for a stack of symmetric 2 × 2 matrices.

    Closed form: the eigenvalues are m ± r (m the mean of the diagonal, r the half-gap);
    with both above ``tol`` this is the inverse, with only the larger one it is the
    projector (H - w₂ I) / (w₁ - w₂) divided by w₁, with neither it is 0.
    """
    a, b, c = H[:, 0, 0], 0.5 * (H[:, 0, 1] + H[:, 1, 0]), H[:, 1, 1]
    mean = 0.5 * (a + c)
    r = np.hypot(0.5 * (a - c), b)
    w1, w2 = mean + r, mean - r
    # the smaller eigenvalue from the determinant when it is small (no cancellation)
    det = a * c - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        w2 = np.where(np.abs(w2) < 1e-3 * np.abs(w1), det / w1, w2)
        both = (w1 > tol) & (w2 > tol)
        one = (w1 > tol) & ~both
        out = np.zeros_like(H)
        inv_det = 1.0 / det
        scale = 1.0 / (w1 * (w1 - w2))
        for (i, j), full, proj in (((0, 0), c, a - w2), ((1, 1), a, c - w2), ((0, 1), -b, b), ((1, 0), -b, b)):
            out[:, i, j] = np.where(both, full * inv_det, np.where(one, proj * scale, 0.0))
    return out
