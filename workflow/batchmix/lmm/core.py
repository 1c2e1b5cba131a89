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

from dataclasses import dataclass, field

import numpy as np

from ..design import RandomDesign

LOG_2PI = float(np.log(2.0 * np.pi))
SINGULAR_TOL = 1e-4  # lme4's isSingular() default tolerance on θ


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
    onecomp: object = field(init=False, default=None)
    diagonal_lambda: np.ndarray | None = field(init=False, default=None)
    block: object = field(init=False, default=None)

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
    M: np.ndarray          # X'V⁻¹X
    ZVX: np.ndarray        # Z'V⁻¹X
    ZVZ: np.ndarray        # Z'V⁻¹Z
    ZVy: np.ndarray        # Z'V⁻¹y
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
        from dataclasses import fields

        return Evaluation(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[rows])
                             for f in fields(self)})


def _chol_logdet(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched Cholesky factor and log-determinant; non-PD entries give NaN."""
    try:
        chol = np.linalg.cholesky(matrix)
        return chol, 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    except np.linalg.LinAlgError:
        sign, logdet = np.linalg.slogdet(matrix)
        return None, np.where(sign > 0, logdet, np.nan)


def evaluate(theta: np.ndarray, data: GeneData, prepared: PreparedDesign, reml: bool,
             order: int = 0) -> Evaluation:
    """Profiled deviance at θ (G × m) for G genes; gradient (order ≥ 1), Hessian (order 2)."""
    if prepared.block is not None:
        from .block import evaluate_block

        return evaluate_block(theta, data, prepared, reml, order)
    return evaluate_dense(theta, data, prepared, reml, order)


def evaluate_dense(theta: np.ndarray, data: GeneData, prepared: PreparedDesign, reml: bool,
                   order: int = 0) -> Evaluation:
    """:func:`evaluate` with dense q × q matrices (any random-effects structure)."""
    pd_ = prepared
    q, p, n = pd_.q, pd_.p, pd_.n
    lam = pd_.make_lambda(theta)
    CL = np.matmul(pd_.ZtZ, lam)                     # Z'Z Λ
    Mq = np.matmul(lam.transpose(0, 2, 1), CL)       # Λ'Z'ZΛ
    Mq[:, np.arange(q), np.arange(q)] += 1.0
    _, logdet_V = _chol_logdet(Mq)
    rhs = np.concatenate(
        [CL.transpose(0, 2, 1),                                        # Λ'Z'Z
         np.matmul(lam.transpose(0, 2, 1), pd_.ZtX),                   # Λ'Z'X
         np.matmul(lam.transpose(0, 2, 1), data.Zty[:, :, None])],    # Λ'Z'y
        axis=2)
    sol = np.linalg.solve(Mq, rhs)
    ZVZ = pd_.ZtZ - np.matmul(CL, sol[:, :, :q])
    ZVX = pd_.ZtX - np.matmul(CL, sol[:, :, q:q + p])
    ZVy = data.Zty - np.matmul(CL, sol[:, :, q + p:])[:, :, 0]
    LtZX = rhs[:, :, q:q + p]
    LtZy = rhs[:, :, q + p]
    M = pd_.XtX - np.matmul(LtZX.transpose(0, 2, 1), sol[:, :, q:q + p])
    XVy = data.Xty - np.einsum("gqp,gq->gp", LtZX, sol[:, :, q + p])
    yVy = data.yty - np.einsum("gq,gq->g", LtZy, sol[:, :, q + p])
    _, logdet_M = _chol_logdet(M)
    beta = np.linalg.solve(M, XVy[:, :, None])[:, :, 0]
    r2 = yVy - np.einsum("gp,gp->g", beta, XVy)
    r2 = np.where(r2 > 0, r2, np.nan)
    deviance = profiled_deviance(logdet_V, logdet_M, r2, n, p, reml)
    ev = Evaluation(deviance, r2, logdet_V, logdet_M, beta, M, ZVX, ZVZ, ZVy, lam)
    # spherical conditional modes u = M_q⁻¹ Λ'Z'(y - Xβ)
    u = sol[:, :, q + p] - np.einsum("gqp,gp->gq", sol[:, :, q:q + p], beta)
    ev.b = np.einsum("gij,gj->gi", lam, u)
    if order >= 1:
        _derivatives(ev, prepared, reml, order)
    return ev


def profiled_deviance(logdet_V: np.ndarray, logdet_M: np.ndarray, r2: np.ndarray, n: int, p: int,
                      reml: bool) -> np.ndarray:
    """lme4's profiled deviance (σ² profiled out) from log|V_θ|, log|XᵀV_θ⁻¹X| and the penalised RSS.

    REML: log|V| + log|M| + (n − p)(1 + log(2π r²/(n − p))); ML: log|V| + n(1 + log(2π r²/n)).
    """
    if reml:
        k = n - p
        return logdet_V + logdet_M + k * (1.0 + np.log(2.0 * np.pi * r2 / k))
    return logdet_V + n * (1.0 + np.log(2.0 * np.pi * r2 / n))


def _derivatives(ev: Evaluation, pd_: PreparedDesign, reml: bool, order: int) -> None:
    n, p = pd_.n, pd_.p
    Minv = np.linalg.inv(ev.M)
    B = ev.ZVZ - np.matmul(np.matmul(ev.ZVX, Minv), ev.ZVX.transpose(0, 2, 1))
    a = ev.ZVy - np.einsum("gqp,gp->gq", ev.ZVX, ev.beta)
    Bf = B if reml else ev.ZVZ
    if pd_.diagonal_lambda is not None:
        _derivatives_diagonal(ev, pd_, reml, order, B, Bf, a)
        return
    ELt = np.matmul(pd_.E[None], ev.lam.transpose(0, 2, 1)[:, None])   # G × m × q × q
    dD = ELt + ELt.transpose(0, 1, 3, 2)
    G, m, q = dD.shape[0], dD.shape[1], dD.shape[2]
    # matmul / elementwise forms throughout: numpy's einsum is slow on these stacks
    f_grad = (Bf[:, None] * dD).sum(axis=(2, 3))             # tr(B_f dD_k), both symmetric
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
        d2D_flat = pd_.d2D.reshape(m * m, q * q)              # symmetric in (i, j)
        tr_Bf_d2D = (Bf.reshape(G, q * q) @ d2D_flat.T).reshape(G, m, m)
        flat = BfdD.reshape(G, m, q * q)
        flat_t = BfdD.transpose(0, 1, 3, 2).reshape(G, m, q * q)
        tr_BdBd = np.matmul(flat, flat_t.transpose(0, 2, 1))  # tr(B_f dD_k B_f dD_l)
        f_hess = tr_Bf_d2D - tr_BdBd
        Bv = np.matmul(B[:, None], v[..., None])[..., 0]
        aa = (a[:, :, None] * a[:, None, :]).reshape(G, q * q)
        r2_hess = (2.0 * np.matmul(v, Bv.transpose(0, 2, 1))
                   - (aa @ d2D_flat.T).reshape(G, m, m))
        ev.f_hess = f_hess
        ev.r2_hess = r2_hess
        ev.hess = f_hess + k * (r2_hess / r2[:, None, None]
                                - s[:, :, None] * s[:, None, :] / (r2 ** 2)[:, None, None])


def _derivatives_diagonal(ev: Evaluation, pd_: PreparedDesign, reml: bool, order: int,
                          B: np.ndarray, Bf: np.ndarray, a: np.ndarray) -> None:
    """:func:`_derivatives` when Λ is diagonal (random intercepts / single columns only).

    With L (q × m) the indicator of each θ's columns and t = θ per column, dD_k =
    2θ_k diag(L_k) and ∂²D_kl = 2δ_kl diag(L_k), so every trace is a sum over blocks:
    tr(B dD_k) = 2θ_k Σ_{i∈k} B_ii, tr(B dD_k B dD_l) = 4θ_kθ_l Σ_{i∈k, j∈l} B_ij², and
    the q × q stacks of the general formulas are never formed.
    """
    n, p = pd_.n, pd_.p
    L = pd_.diagonal_lambda                                    # q × m
    G = B.shape[0]
    theta_q = np.diagonal(ev.lam, axis1=1, axis2=2)            # G × q
    theta_m = theta_q @ (L / L.sum(axis=0))                    # G × m
    k = (n - p) if reml else n
    r2 = ev.r2
    two_t = 2.0 * theta_m
    f_grad = two_t * (np.diagonal(Bf, axis1=1, axis2=2) @ L)
    a2 = a * a
    s = two_t * (a2 @ L)
    ev.f_grad = f_grad
    ev.r2_grad = -s
    Wx = ev.ZVX                                                # G × q × p
    outer = (Wx[:, :, :, None] * Wx[:, :, None, :]).reshape(G, -1, p * p)
    per_block = np.matmul(outer.transpose(0, 2, 1), L)         # G × p² × m
    ev.dM = -(two_t[:, None, :] * per_block).transpose(0, 2, 1).reshape(G, -1, p, p)
    ev.grad = f_grad - k * s / r2[:, None]
    if order >= 2:
        tt = theta_m[:, :, None] * theta_m[:, None, :]
        LtBBL = np.matmul(np.matmul(L.T, Bf * Bf), L)         # G × m × m
        f_hess = 2.0 * np.eye(L.shape[1])[None] * (np.diagonal(Bf, axis1=1, axis2=2) @ L)[:, None, :] \
            - 4.0 * tt * LtBBL
        aBa = np.matmul(np.matmul(L.T, a[:, :, None] * B * a[:, None, :]), L)
        r2_hess = 8.0 * tt * aBa - 2.0 * np.eye(L.shape[1])[None] * (a2 @ L)[:, None, :]
        ev.f_hess = f_hess
        ev.r2_hess = r2_hess
        ev.hess = f_hess + k * (r2_hess / r2[:, None, None]
                                - s[:, :, None] * s[:, None, :] / (r2 ** 2)[:, None, None])


def _chunks(G: int, prepared: PreparedDesign, budget: float = 3e6) -> list[slice]:
    """Gene chunks so that the G × m × q × q derivative stacks stay small in memory."""
    if prepared.block is not None:
        bd = prepared.block
        per_gene = max(1, (prepared.m + 2) ** 2 * bd.J * bd.s * max(bd.s, prepared.p) ** 2)
    else:
        per_gene = max(1, (prepared.m + 2) * prepared.q * prepared.q)
    size = max(1, int(budget // per_gene))
    return [slice(i, min(G, i + size)) for i in range(0, G, size)]


_KEPT = ("deviance", "r2", "beta", "b", "M", "dM", "f_hess", "r2_hess", "r2_grad")


def optimise(data: GeneData, prepared: PreparedDesign, reml: bool,
             theta0: np.ndarray | None = None, max_iter: int = 200,
             tol_dev: float = 1e-10, tol_step: float = 1e-7, keep_evaluation: bool = False):
    """Minimise the profiled deviance over θ per gene, all genes in lock-step.

    A projected Newton method with the exact Hessian: eigenvalues of the Hessian
    are made positive (|λ|, floored) so every step descends, steps are halved until
    the deviance decreases, and θ's diagonal entries are kept ≥ 0 (a boundary
    coordinate with a non-negative gradient and positive curvature is held fixed).
    Two kinds of spurious stopping points are left: a zero diagonal entry of T with
    entries below it (their signs are flipped so that the gradient points inward; the
    deviance is unchanged), and saddle points (a stationary point where the Hessian has a
    negative eigenvalue is left along that eigenvector, turned into the feasible side).

    Returns
    -------
    theta : ndarray (G × m)
    converged : ndarray of bool (G)
    evaluation : Evaluation, only with ``keep_evaluation``
        What :func:`evaluate` with ``order=2`` gives at the returned θ (the fields
        :func:`varpar_derivatives` and :func:`batchmix.lmm.fit_arrays` use), kept from the
        iterations instead of evaluated again.
    """
    G, m = data.yty.shape[0], prepared.m
    lower = prepared.theta_lower
    bounded = np.isfinite(lower)
    theta = np.tile(prepared.theta_start(), (G, 1)) if theta0 is None else theta0.copy()
    converged = np.zeros(G, dtype=bool)
    dev = np.full(G, np.nan)
    grad = np.zeros((G, m))
    hess = np.zeros((G, m, m))

    kept: dict[str, np.ndarray] = {}

    def keep(ev: Evaluation, rows: np.ndarray, ok: np.ndarray | slice = slice(None)) -> None:
        # the quantities at each gene's current θ, for keep_evaluation
        if not keep_evaluation:
            return
        for name in _KEPT:
            value = getattr(ev, name)
            if name not in kept:
                kept[name] = np.full((G,) + value.shape[1:], np.nan)
            kept[name][rows] = value[ok]

    def full_eval(idx: np.ndarray) -> None:
        for chunk in _chunks(len(idx), prepared):
            sub = idx[chunk]
            ev = evaluate(theta[sub], data.take(sub), prepared, reml, order=2)
            dev[sub], grad[sub], hess[sub] = ev.deviance, ev.grad, ev.hess
            keep(ev, sub)

    def trial_eval(th: np.ndarray, idx: np.ndarray):
        # full evaluation at the trial point: most Newton steps are accepted, and then
        # the gradient and Hessian there are needed anyway
        out_dev = np.empty(len(idx))
        out_grad = np.empty((len(idx), m))
        out_hess = np.empty((len(idx), m, m))
        evs = []
        for chunk in _chunks(len(idx), prepared):
            ev = evaluate(th[chunk], data.take(idx[chunk]), prepared, reml, order=2)
            out_dev[chunk], out_grad[chunk], out_hess[chunk] = ev.deviance, ev.grad, ev.hess
            evs.append((chunk, ev))
        return out_dev, out_grad, out_hess, evs

    active = np.arange(G)
    full_eval(active)
    bad = ~np.isfinite(dev)
    active = active[~bad]
    for _ in range(max_iter):
        if active.size == 0:
            break
        # A column of T whose diagonal entry is 0 contributes t t' to T T' whatever the sign
        # of its entries below the diagonal: flipping them leaves the deviance unchanged and
        # flips the gradient along the diagonal entry. Choose the sign for which moving off
        # the boundary descends, so that such points are not mistaken for optima.
        for col in _theta_columns(prepared):
            sel = (theta[active, col[0]] <= 1e-12) & (grad[active, col[0]] > 0)
            if sel.any():
                rows = active[sel]
                sign = np.ones(m)
                sign[col] = -1.0
                theta[rows] *= sign
                grad[rows] *= sign
                hess[rows] *= sign[:, None] * sign[None, :]
        th, g, H = theta[active], grad[active], hess[active]
        at_bound = bounded[None, :] & (th <= lower[None, :] + 1e-12)
        diag = np.diagonal(H, axis1=1, axis2=2)
        # a bound coordinate is released only when moving inward lowers the deviance
        # (negative gradient); a stationary point on the bound with negative curvature
        # is a maximum along that coordinate, so nudge it inward
        fixed = at_bound & (g >= 0) & (diag > 0)
        nudge = at_bound & (g >= 0) & (diag <= 0)
        free = ~fixed
        Hf = np.where(free[:, :, None] & free[:, None, :], H, 0.0)
        Hf[:, np.arange(m), np.arange(m)] = np.where(free, np.diagonal(Hf, axis1=1, axis2=2), 1.0)
        gf = np.where(free, g, 0.0)
        w, V = np.linalg.eigh(Hf)
        wabs = np.abs(w)
        floor = 1e-10 * np.maximum(wabs.max(axis=1, keepdims=True), 1e-300)
        wmod = np.maximum(wabs, floor)
        step = -np.einsum("gij,gj,gkj,gk->gi", V, 1.0 / wmod, V, gf)
        step = np.where(free, step, 0.0)
        step = np.where(nudge, 0.1, step)
        decrement = -np.einsum("gi,gi->g", gf, step)
        done = (decrement < tol_dev) & ~nudge.any(axis=1)
        # a stationary point with a direction of negative curvature is a saddle (e.g. θ₁₁ =
        # θ₂₁ = 0 in a random-slope model, where the optimum has a rank-one covariance):
        # leave it along that direction, turned so that it points into the feasible region
        if done.any():
            sub = np.flatnonzero(done)
            w_all, V_all = np.linalg.eigh(H[sub])
            scale = np.maximum(np.abs(w_all).max(axis=1), 1.0)
            v = V_all[:, :, 0]
            bound_sub = at_bound[sub]
            v = v * np.where((v * bound_sub).sum(axis=1) < 0, -1.0, 1.0)[:, None]
            v = np.where(bound_sub & (v < 0), 0.0, v)
            curv = np.einsum("gi,gij,gj->g", v, H[sub], v)
            norm = np.abs(v).max(axis=1)
            escape = (w_all[:, 0] < -1e-6 * scale) & (curv < -1e-6 * scale * norm ** 2) & (norm > 0)
            if escape.any():
                rows = sub[escape]
                step[rows] = v[escape] / norm[escape, None]
                decrement[rows] = 0.0
                done[rows] = False
        converged[active[done]] = True
        active, th, step, decrement = active[~done], th[~done], step[~done], decrement[~done]
        if active.size == 0:
            break
        # backtracking line search, vectorised: each gene halves its own step
        alpha = np.ones(active.size)
        accepted = np.zeros(active.size, dtype=bool)
        new_theta = th.copy()
        new_dev = np.empty(active.size)
        new_grad = np.empty((active.size, m))
        new_hess = np.empty((active.size, m, m))
        for _ls in range(40):
            pending = ~accepted
            if not pending.any():
                break
            trial = th[pending] + alpha[pending, None] * step[pending]
            trial = np.where(bounded[None, :], np.maximum(trial, lower[None, :]), trial)
            trial_dev, trial_grad, trial_hess, evs = trial_eval(trial, active[pending])
            # strict decrease (Armijo with a tiny slope factor): accepting equal values
            # would let flat directions cycle forever
            gain = dev[active[pending]] - trial_dev
            ok = np.isfinite(trial_dev) & (gain > 1e-4 * alpha[pending] * decrement[pending])
            idx = np.flatnonzero(pending)
            new_theta[idx[ok]] = trial[ok]
            new_dev[idx[ok]] = trial_dev[ok]
            new_grad[idx[ok]] = trial_grad[ok]
            new_hess[idx[ok]] = trial_hess[ok]
            accepted[idx[ok]] = True
            rows = active[pending]
            for chunk, ev in evs:
                sel = ok[chunk]
                keep(ev, rows[chunk][sel], sel)
            alpha[idx[~ok]] *= 0.5
        # genes that cannot descend any further are at a (numerical) optimum
        stuck = ~accepted
        converged[active[stuck]] = True
        moved = active[accepted]
        old_dev = dev[moved].copy()
        step_size = np.abs(new_theta[accepted] - th[accepted]).max(axis=1)
        theta[moved] = new_theta[accepted]
        dev[moved], grad[moved], hess[moved] = new_dev[accepted], new_grad[accepted], new_hess[accepted]
        change = np.abs(old_dev - dev[moved])
        # the last condition ends walks along flat ridges (a nearly degenerate covariance),
        # where the deviance no longer changes and the gradient is small but steps stay large
        small = (((change < tol_dev) & (step_size < tol_step)) | (change < 1e-3 * tol_dev)
                 | ((change < tol_dev) & (np.abs(grad[moved]).max(axis=1) < 1e-3)))
        converged[moved[small]] = True
        active = moved[~small]
    if keep_evaluation:
        ev = Evaluation(kept["deviance"], kept["r2"], None, None, kept["beta"], kept["M"], None, None, None, None)
        for name in _KEPT[3:]:
            setattr(ev, name, kept[name])
        return theta, converged, ev
    return theta, converged


def start_values(data: GeneData, prepared: PreparedDesign, reml: bool) -> np.ndarray:
    """Starting θ (G × m) for :func:`optimise`: each random column fitted on its own.

    For every random term and each of its columns (``(1|batch)``, the intercept and the
    slope of ``(Days|Subject)``) the one-component model ``~ X + (0 + column | group)`` is
    fitted exactly from the sufficient statistics by the rotation of
    :mod:`batchmix._lmm_onecomp`; its √λ starts the corresponding diagonal entry of T,
    off-diagonal entries start at 0. Compared with lme4's start (θ = 1), the Newton
    iterations then begin near the optimum (or on the boundary when a column alone
    shows no variance). A single random term with several columns (``(Days|Subject)``)
    starts instead at the moment estimate of :func:`batchmix._lmm_block.moment_start`
    (which includes the correlation) where that exists.
    """
    from .onecomp import lambda_from_stats

    G = data.yty.shape[0]
    moment = None
    if prepared.block is not None:
        from .block import moment_start

        moment = moment_start(data, prepared)
        if moment is not None and np.isfinite(moment).all():
            return moment
    theta = np.tile(prepared.theta_start(), (G, 1))
    offset, k = 0, 0
    for block in prepared.random.blocks:
        s, J = block.n_terms, block.n_levels
        for c in range(s):
            cols = offset + np.arange(J) * s + c
            lam = lambda_from_stats(data.Zty[:, cols], data.Xty, data.yty, prepared.X,
                                    prepared.Z[:, cols], reml)
            theta[:, k] = np.sqrt(lam)
            k += s - c
        offset += s * J
    if moment is not None:
        ok = np.isfinite(moment).all(axis=1)
        theta[ok] = moment[ok]
    return theta


def _theta_columns(prepared: PreparedDesign) -> list[list[int]]:
    """θ indices of each column of each T with entries below the diagonal: [diagonal, below...]."""
    out, k = [], 0
    for block in prepared.random.blocks:
        s = block.n_terms
        for c in range(s):
            idx = list(range(k, k + s - c))
            k += s - c
            if len(idx) > 1:
                out.append(idx)
    return out


def varpar_derivatives(ev: Evaluation, prepared: PreparedDesign, reml: bool
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
    hess[:, m, m] = -2.0 * k / sigma2 + 6.0 * ev.r2 / sigma2 ** 2
    Minv = np.linalg.inv(ev.M)
    vcov = sigma2[:, None, None] * Minv
    inner = -ev.dM
    jac = np.empty((G, m + 1, p, p))
    jac[:, :m] = sigma2[:, None, None, None] * np.matmul(np.matmul(Minv[:, None], inner), Minv[:, None])
    jac[:, m] = 2.0 * sigma[:, None, None] * Minv
    return hess, jac, vcov


def satterthwaite_df(vcov: np.ndarray, hess: np.ndarray, jac: np.ndarray,
                     tol: float = 1e-8) -> np.ndarray:
    """Satterthwaite denominator df per coefficient, as lmerTest computes them.

    lmerTest takes vcov(θ, σ) = 2 H⁺, with H⁺ the Moore-Penrose inverse of the
    deviance Hessian over its eigenvalues above ``tol``; for coefficient j,
    df = 2 Var(β̂_j)² / (g' vcov(θ, σ) g) with g = ∂Var(β̂_j)/∂(θ, σ).
    """
    var = np.diagonal(vcov, axis1=1, axis2=2)
    grad = np.diagonal(jac, axis1=2, axis2=3)          # G × (m+1) × p
    if hess.shape[-1] == 2:
        A = _pinv2_sym(hess, tol)
    else:
        w, V = np.linalg.eigh(hess)
        inv_w = np.where(w > tol, 1.0 / np.where(w > tol, w, 1.0), 0.0)
        A = np.matmul(V * inv_w[:, None, :], V.transpose(0, 2, 1))
    A = 2.0 * A
    denom = (grad * np.matmul(A, grad)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2.0 * var ** 2 / denom


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
