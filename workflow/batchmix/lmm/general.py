"""The general engine: lme4's profiled deviance minimised over θ by a projected Newton method.

Any random-effects structure (random slopes, several grouping factors). Evaluations come from
:func:`evaluate`: level by level (:mod:`batchmix.lmm.block`) for one grouping factor with several
columns, dense q × q stacks (:func:`batchmix.lmm.core.evaluate_dense`) otherwise. All genes iterate
in lock-step; starting values come from the one-component rotation (:mod:`batchmix.lmm.onecomp`)
or the block engine's moment estimate.
"""

from __future__ import annotations

import numpy as np

from .block import evaluate_block, moment_start
from .core import SINGULAR_TOL, Evaluation, GeneData, PreparedDesign, evaluate_dense, gene_chunks
from .onecomp import lambda_from_stats

__all__ = ["evaluate", "optimise", "refit", "start_values"]


def evaluate(theta: np.ndarray, data: GeneData, prepared: PreparedDesign, reml: bool, order: int = 0) -> Evaluation:
    """Profiled deviance at θ (G × m) for G genes; gradient (order ≥ 1), Hessian (order 2)."""
    if prepared.block is not None:
        return evaluate_block(theta, data, prepared, reml, order)
    return evaluate_dense(theta, data, prepared, reml, order)


_KEPT = ("deviance", "r2", "beta", "b", "M", "dM", "f_hess", "r2_hess", "r2_grad")


def optimise(
    data: GeneData,
    prepared: PreparedDesign,
    reml: bool,
    theta0: np.ndarray | None = None,
    max_iter: int = 200,
    tol_dev: float = 1e-10,
    tol_step: float = 1e-7,
    keep_evaluation: bool = False,
):
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
        for chunk in gene_chunks(len(idx), prepared):
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
        for chunk in gene_chunks(len(idx), prepared):
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
            escape = (w_all[:, 0] < -1e-6 * scale) & (curv < -1e-6 * scale * norm**2) & (norm > 0)
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
        small = (
            ((change < tol_dev) & (step_size < tol_step))
            | (change < 1e-3 * tol_dev)
            | ((change < tol_dev) & (np.abs(grad[moved]).max(axis=1) < 1e-3))
        )
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
    :mod:`batchmix.lmm.onecomp`; its √λ starts the corresponding diagonal entry of T,
    off-diagonal entries start at 0. Compared with lme4's start (θ = 1), the Newton
    iterations then begin near the optimum (or on the boundary when a column alone
    shows no variance). A single random term with several columns (``(Days|Subject)``)
    starts instead at the moment estimate of :func:`batchmix.lmm.block.moment_start`
    (which includes the correlation) where that exists.
    """
    G = data.yty.shape[0]
    moment = None
    if prepared.block is not None:
        moment = moment_start(data, prepared)
        if moment is not None and np.isfinite(moment).all():
            return moment
    theta = np.tile(prepared.theta_start(), (G, 1))
    offset, k = 0, 0
    for block in prepared.random.blocks:
        s, J = block.n_terms, block.n_levels
        for c in range(s):
            cols = offset + np.arange(J) * s + c
            lam = lambda_from_stats(data.Zty[:, cols], data.Xty, data.yty, prepared.X, prepared.Z[:, cols], reml)
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


def refit(
    data: GeneData,
    prepared: PreparedDesign,
    theta0: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """θ, β, σ² and convergence of responses given by their sufficient statistics (any model).

    ``theta0`` (G × m) starts the Newton iterations (bootMer's ``refit()`` starts at the original
    fit's θ). The θ-Newton path can stop on the boundary (a diagonal θ = 0) where lme4 finds a
    lower interior optimum (seen on sleepstudy slope refits): boundary fits are retried from a
    few interior starts (lme4's default start scaled, and mixes of it with ``theta0``), keeping
    whichever criterion is lowest.
    """
    reml = prepared.reml
    theta, converged = optimise(data, prepared, reml, theta0=theta0)
    diag = np.isfinite(prepared.theta_lower)
    suspect = np.flatnonzero((np.abs(theta[:, diag]) < SINGULAR_TOL).any(axis=1))
    if suspect.size:
        sub = data.take(suspect)
        best_th, best_conv = theta[suspect], converged[suspect]
        best_dev = evaluate(best_th, sub, prepared, reml).deviance
        start = np.tile(prepared.theta_start(), (suspect.size, 1))
        starts = [start, 0.5 * start, 0.25 * start]
        if theta0 is not None:
            starts += [0.5 * (start + theta0[suspect]), 0.5 * theta0[suspect] + 0.05 * start]
        for st in starts:
            th, cv = optimise(sub, prepared, reml, theta0=st)
            dv = evaluate(th, sub, prepared, reml).deviance
            better = np.isfinite(dv) & ~(dv >= best_dev - 1e-9)
            best_th = np.where(better[:, None], th, best_th)
            best_conv = np.where(better, cv, best_conv)
            best_dev = np.where(better, dv, best_dev)
        theta[suspect], converged[suspect] = best_th, best_conv
    p = prepared.p
    k = prepared.n - p if reml else prepared.n
    G = theta.shape[0]
    beta, sigma2 = np.full((G, p), np.nan), np.full(G, np.nan)
    for chunk in gene_chunks(G, prepared):
        ev = evaluate(theta[chunk], data.take(np.arange(G)[chunk]), prepared, reml, order=0)
        beta[chunk] = ev.beta
        sigma2[chunk] = ev.r2 / k
    converged = converged & np.isfinite(sigma2) & np.isfinite(beta).all(axis=1)
    return theta, beta, sigma2, converged
