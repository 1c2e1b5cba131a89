"""Parametric bootstrap of every gene's LMM: lme4's ``bootMer(type = "parametric", use.u = FALSE)`` for all genes at
once. Each gene is fitted with :func:`batchmix.lmm.fit_arrays`; new random effects and
residuals are simulated from its fit, and all ``B × G`` simulated responses are refitted with
the shared design (:func:`batchmix.lmm.prepare`). A refit sees a response only through
``X'y``, ``Z'y`` and ``y'y``, so responses are simulated directly in that form (``r + 1``
numbers, r = rank of [X Z], instead of n; the exact same law). One-variance-component models
are refitted with the engine's rotation and a lean global-grid + Newton search over λ, any
other model with the engine's θ-Newton path started at the gene's θ̂ (as bootMer's
``refit()``), boundary refits retried from interior starts. Percentile intervals are
``numpy.quantile(method="linear")`` (R's ``quantile(type = 7)``). Singular refits are counted
and kept, as bootMer keeps them.
"""

from __future__ import annotations

import logging
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import lmm
from ..defaults import DEFAULT_SEED
from ..design import sanitize_name
from ..lmm import missing
from ..lmm.core import SINGULAR_TOL
from ..lmm.results import relative_factors, theta_to_covariances
from .posterior import quantile_columns

__all__ = [
    "BOOT_COLUMNS",
    "SINGULAR_TOL",
    "BootstrapResult",
    "CompressedDesign",
    "bootstrap",
    "refit_compressed",
    "simulate_compressed",
]

logger = logging.getLogger(__name__)

BOOT_COLUMNS = [
    "gene_id",
    "param",
    "status",
    "estimate",
    "q2.5",
    "q50",
    "q97.5",
    "boot_mean",
    "boot_sd",
    "n_singular",
    "n_fail",
    "n_na",
]


@dataclass
class CompressedDesign:
    """Sufficient statistics of simulated responses in an orthonormal basis of span[X Z].

    The REML/ML criterion sees a response only through ``X'y``, ``Z'y`` and ``y'y``. With
    ``U_W`` an orthonormal basis (n × r) of span[X Z] and ``R = U_W'[X Z]``, a response
    ``y = Xβ + Zb + e`` (``e ~ N(0, σ² I)``) has ``[X Z]'y = R'm`` and ``y'y = |m|² + ρ`` with
    ``m = R (β, b) + σ ξ`` (``ξ ~ N(0, I_r)``) and ``ρ = σ² χ²_{n−r}`` independent: the exact law
    of everything a refit uses, from ``r + 1`` numbers instead of ``n``.
    """

    R: np.ndarray  # r × (p + q)
    U: np.ndarray  # n × r
    n: int
    p: int

    @classmethod
    def of(cls, X: np.ndarray, Z: np.ndarray) -> "CompressedDesign":
        W = np.column_stack([X, Z])
        U, s, _ = np.linalg.svd(W, full_matrices=False)
        keep = s > 1e-10 * s.max()
        U = U[:, keep]
        return cls(R=U.T @ W, U=U, n=X.shape[0], p=X.shape[1])

    @property
    def r(self) -> int:
        return self.R.shape[0]


def _param_names(prepared, single: bool) -> list[str]:
    """brms-style names of the bootstrap statistics, in output order."""
    names = [f"b_{c}" for c in prepared.fixed_names]
    for block in prepared.random.blocks:
        g = sanitize_name(block.group)
        names += [f"sd_{g}__{t}" for t in block.terms]
        names += [
            f"cor_{g}__{block.terms[i]}__{block.terms[j]}"
            for i in range(block.n_terms)
            for j in range(i + 1, block.n_terms)
        ]
    names.append("sigma")
    if single:
        names.append("ICC")
    else:
        names += [f"vfrac_{sanitize_name(b.group)}" for b in prepared.random.blocks] + ["vfrac_residual"]
    return names


def _statistics(theta: np.ndarray, beta: np.ndarray, sigma2: np.ndarray, prepared, single: bool) -> np.ndarray:
    """The bootstrap statistics (G × P) of fits given θ, β and σ², in :func:`_param_names` order.

    SDs and correlations are those of σ² T T' per block (lme4's ``VarCorr``); a correlation
    with a zero SD is NaN (as lme4's ``VarCorr`` gives for bootMer's FUN). ``ICC`` (one random
    term with one column) is σ_b² / (σ_b² + σ²). With several components, ``vfrac_<group>`` is
    a block's variance (for random slopes ``z_i' Σ z_i`` averaged over samples, as
    :mod:`batchmix.lmm`'s ``frac_`` columns) over the sum of all blocks' and σ², and
    ``vfrac_residual`` is σ² over that sum (fixed effects are not in the denominator).
    """
    cols = [beta]
    block_var = []
    n = prepared.n
    blocks = prepared.random.blocks
    for block, Sigma in zip(blocks, theta_to_covariances(theta, sigma2, blocks)):
        zz = block.Z.reshape(n, block.n_levels, block.n_terms).sum(axis=1)
        block_var.append(np.einsum("gij,ij->g", Sigma, zz.T @ zz / n))
        sd = np.sqrt(np.diagonal(Sigma, axis1=1, axis2=2))
        cols.append(sd)
        s = sd.shape[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            for i in range(s):
                for j in range(i + 1, s):
                    c = Sigma[:, i, j] / (sd[:, i] * sd[:, j])
                    cols.append(np.where((sd[:, i] > 0) & (sd[:, j] > 0), np.clip(c, -1, 1), np.nan)[:, None])
    cols.append(np.sqrt(sigma2)[:, None])
    if single:
        vb = sigma2 * theta[:, 0] ** 2
        cols.append((vb / (vb + sigma2))[:, None])
    else:
        total = sigma2 + sum(block_var)
        cols += [(v / total)[:, None] for v in block_var] + [(sigma2 / total)[:, None]]
    return np.column_stack(cols)


def refit_compressed(
    compressed: np.ndarray,
    rho: np.ndarray,
    comp: CompressedDesign,
    prepared: lmm.PreparedDesign,
    *,
    method: str = "auto",
    theta0: np.ndarray | None = None,
) -> lmm.SufficientFit:
    """Refit responses given by their compressed statistics (see :class:`CompressedDesign`).

    X'y, Z'y and y'y of each response follow from ``compressed`` and ``ρ`` and go to
    :func:`batchmix.lmm.refit_sufficient` (``method``, ``theta0`` as there); the OLS residual
    sum of squares is passed exactly, from the part of ``compressed`` outside X's span, plus ρ.
    """
    p = prepared.p
    Xty = compressed @ comp.R[:, :p]
    Zty = compressed @ comp.R[:, p:]
    yty = np.einsum("ij,ij->i", compressed, compressed) + rho
    # the OLS residual sum of squares from the part of ``compressed`` outside X's span, plus ρ
    # (y'y − ‖Q_X'y‖² cancels when the mean dominates)
    X_basis, _ = np.linalg.qr(comp.R[:, :p])
    outside = compressed - (compressed @ X_basis) @ X_basis.T
    residual_ss = np.einsum("ij,ij->i", outside, outside) + rho
    return lmm.refit_sufficient(Xty, Zty, yty, prepared, theta0=theta0, method=method, residual_ss=residual_ss)


def _gene_rng(seed: int, gene_id: str) -> np.random.Generator:
    """Each gene's own stream: its draws do not depend on the other genes or on batching."""
    return np.random.default_rng([int(seed), zlib.crc32(str(gene_id).encode("utf-8"))])


def simulate_compressed(gene_ids, theta, beta, sigma2, prepared, comp: CompressedDesign, nsim: int, seed: int):
    """Simulated compressed responses (G·nsim × r, the ``m`` of :class:`CompressedDesign`) and ``ρ``.

    The genes are simulated at their fits θ, β, σ².

    As ``simulate(fit, use.u = FALSE)``: new random effects b* = Λ(θ̂) u*, u* ~ N(0, σ̂² I_q) and
    residuals e* ~ N(0, σ̂² I_n), around X β̂. Row ``g·nsim + b`` is gene g's replicate b.
    """
    G = len(gene_ids)
    q, r, n = prepared.q, comp.r, comp.n
    u = np.empty((G, nsim, q))
    xi = np.empty((G, nsim, r))
    chi = np.zeros((G, nsim))
    for g, gid in enumerate(gene_ids):
        rng = _gene_rng(seed, gid)
        u[g] = rng.standard_normal((nsim, q))
        xi[g] = rng.standard_normal((nsim, r))
        if n > r:
            chi[g] = rng.chisquare(n - r, nsim)
    sigma = np.sqrt(sigma2)
    b = np.empty((G, nsim, q))
    off = 0
    for block, T in zip(prepared.random.blocks, relative_factors(theta, prepared.random.blocks)):
        J, s = block.n_levels, block.n_terms
        ub = u[:, :, off : off + J * s].reshape(G, nsim, J, s)
        b[:, :, off : off + J * s] = np.einsum("gbjs,gts->gbjt", ub, T).reshape(G, nsim, J * s)
        off += J * s
    b *= sigma[:, None, None]
    p = prepared.p
    mean = beta @ comp.R[:, :p].T  # G × r
    xi *= sigma[:, None, None]
    xi += mean[:, None, :]
    compressed = xi.reshape(G * nsim, r)
    compressed += b.reshape(G * nsim, q) @ comp.R[:, p:].T  # one GEMM for all replicates
    rho = sigma2[:, None] * chi
    return compressed, rho.reshape(G * nsim)


def _summaries(stat: np.ndarray, probs) -> np.ndarray:
    """Per gene and statistic over replicates (axis 1), ignoring NaN: R's type-7 quantiles
    (``numpy.quantile(method="linear")``), mean and SD (ddof 1). Returns (G, P, len(probs) + 2)."""
    x = np.sort(stat, axis=1)  # NaN sort last
    valid = np.isfinite(x).sum(axis=1)  # (G, P)
    out = np.full(stat.shape[:1] + stat.shape[2:] + (len(probs) + 2,), np.nan)
    nsim = x.shape[1]
    for j, p in enumerate(probs):
        h = (valid - 1) * p
        lo = np.clip(np.floor(h).astype(np.intp), 0, nsim - 1)
        hi = np.clip(lo + 1, 0, nsim - 1)
        hi = np.minimum(hi, np.maximum(valid - 1, 0))
        xl = np.take_along_axis(x, lo[:, None, :], axis=1)[:, 0]
        xh = np.take_along_axis(x, hi[:, None, :], axis=1)[:, 0]
        out[..., j] = np.where(valid > 0, xl + (h - lo) * (xh - xl), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(np.isfinite(x), x, 0.0)
        mean = z.sum(axis=1) / valid
        var = (np.where(np.isfinite(x), x - mean[:, None, :], 0.0) ** 2).sum(axis=1) / (valid - 1)
    out[..., len(probs)] = np.where(valid > 0, mean, np.nan)
    out[..., len(probs) + 1] = np.where(valid > 1, np.sqrt(var), np.nan)
    return out


@dataclass
class BootstrapResult:
    """Parametric-bootstrap summaries of every gene.

    Attributes
    ----------
    summary : pandas.DataFrame
        Tidy, one row per gene and statistic: ``gene_id, param, status, estimate, q2.5, q50,
        q97.5, boot_mean, boot_sd, n_singular, n_fail, n_na``. ``estimate`` is the statistic on
        the original fit; quantiles are ``numpy.quantile(method="linear")`` (R's type 7) over
        the replicates that are not NaN (``n_na`` counts the others: failed refits, and
        correlations of a refit with a zero SD). ``n_singular`` counts singular refits (kept,
        as bootMer keeps them), ``n_fail`` failed ones.
    draws : dict
        gene id → DataFrame of its replicates (``sim``, one column per param, ``singular``) for
        the genes asked for in ``keep_draws_for``.
    fits : dict
        gene id → dict of the original fit (``theta``, ``beta``, ``sigma2``, names) for those genes.
    nsim, seed : int
    formula : str
    """

    summary: pd.DataFrame
    draws: dict
    fits: dict
    nsim: int
    seed: int
    formula: str


def bootstrap(
    expression: pd.DataFrame,
    samples: pd.DataFrame,
    formula: str,
    nsim: int = 1000,
    seed: int = DEFAULT_SEED,
    reml: bool = True,
    gene_status: pd.Series | None = None,
    probs: tuple[float, ...] = (0.025, 0.5, 0.975),
    keep_draws_for: list | None = None,
    batch_size: int = 200_000,
    method: str = "auto",
    n_threads: int = 1,
) -> BootstrapResult:
    """Parametric bootstrap of every gene's LMM, as lme4's ``bootMer(type="parametric", use.u=FALSE)``.

    Each gene is fitted (:func:`batchmix.lmm.fit_arrays`), ``nsim`` responses are simulated from
    its fit (new random effects and residuals), and all ``genes × nsim`` responses are refitted
    together with the shared design, ``batch_size`` at a time (memory ~ ``batch_size × r × 24``
    bytes, r = rank of [X Z]). A gene's draws come from its own random stream seeded by
    ``(seed, crc32(gene_id))``: results do not depend on the other genes or on ``batch_size``.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes × samples. Genes with missing values are bootstrapped on their observed samples
        (grouped by missingness pattern).
    samples : pandas.DataFrame
        Sample sheet indexed by sample id.
    formula : str
        lme4-style formula, any random-effects structure.
    nsim : int
        Replicates per gene (bootMer's ``nsim``).
    seed : int
        Random seed.
    reml : bool
        Refit by REML (lme4's default) or ML.
    gene_status : pandas.Series, optional
        Genes whose status is not ``ok`` or ``singular`` keep it and get NaNs.
    probs : tuple of float
        Percentiles to report.
    keep_draws_for : list, optional
        Gene ids whose raw replicates are returned (figures, checks).
    batch_size : int
        Responses refitted per batch.
    method : {"auto", "general"}
        See :func:`refit_compressed`.
    n_threads : int
        Batches run in this many threads. Results do not depend on it. The refits are many small
        matrix products: with several threads, set ``OPENBLAS_NUM_THREADS=1`` (or the equivalent
        for your BLAS) before starting Python, or BLAS threads compete with these.

    Returns
    -------
    BootstrapResult
    """
    expression = expression.astype(float)
    genes = [str(g) for g in expression.index]
    samples = samples.loc[list(expression.columns)]
    qcols = quantile_columns(probs)
    status = np.full(len(genes), missing.OK, dtype=object)
    if gene_status is not None:
        gs = gene_status.reindex(expression.index).fillna(missing.NO_STATUS).astype(str).to_numpy()
        status = np.where((gs == missing.OK) | (gs == missing.SINGULAR), missing.OK, gs)
    full = lmm.prepare(formula, samples, reml=reml)
    single = len(full.random.blocks) == 1 and full.random.blocks[0].n_terms == 1
    params = _param_names(full, single)
    P = len(params)
    est = np.full((len(genes), P), np.nan)
    summ = np.full((len(genes), P, len(probs) + 2), np.nan)
    counts = np.zeros((len(genes), 3), dtype=int)  # n_singular, n_fail per gene; n_na per param below
    n_na = np.zeros((len(genes), P), dtype=int)
    keep = {str(g) for g in (keep_draws_for or [])}
    draws, fits = {}, {}
    values = expression.to_numpy()
    patterns, all_missing = missing.group_by_missingness(values, np.flatnonzero(status == missing.OK))
    status[all_missing] = missing.ALL_MISSING
    for pattern in patterns:
        rows, cols = pattern.rows, np.flatnonzero(pattern.observed)
        try:
            prepared = full if pattern.complete else lmm.prepare(formula, samples.iloc[cols], reml=reml)
            if prepared.n - prepared.p < 2 or prepared.p != full.p or prepared.m != full.m:
                raise ValueError("design degenerate on the observed samples")
        except (ValueError, np.linalg.LinAlgError):
            status[rows] = missing.TOO_FEW_OBSERVATIONS
            continue
        Y = values[np.ix_(rows, cols)]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            fit0 = lmm.fit_arrays(Y, prepared)
        # as lmm.fit: constant genes and exact fits by X have no bootstrap
        yty = np.einsum("gi,gi->g", Y, Y)
        spread = missing.constant_rows(Y, yty)
        perfect = missing.perfect_fit(fit0.ols_rss, yty)
        good = (
            fit0.converged
            & np.isfinite(fit0.sigma2)
            & (fit0.sigma2 > 0)
            & np.isfinite(fit0.beta).all(axis=1)
            & ~spread
            & ~perfect
        )
        status[rows[~good]] = missing.ORIGINAL_FIT_FAILED
        status[rows[perfect & ~spread]] = missing.PERFECT_FIT
        status[rows[spread]] = missing.CONSTANT
        rows, Y = rows[good], Y[good]
        theta0, beta0, s20 = fit0.theta[good], fit0.beta[good], fit0.sigma2[good]
        if not len(rows):
            continue
        est[rows] = _statistics(theta0, beta0, s20, prepared, single)
        comp = CompressedDesign.of(prepared.X, prepared.Z)
        diag = np.isfinite(prepared.theta_lower)
        per = max(1, batch_size // nsim)
        b0 = fit0.b[good]

        def run(start, rows=rows, theta0=theta0, beta0=beta0, s20=s20, prepared=prepared, comp=comp, diag=diag, b0=b0):
            sl = slice(start, min(len(rows), start + per))
            ids = [genes[i] for i in rows[sl]]
            compressed, rho = simulate_compressed(ids, theta0[sl], beta0[sl], s20[sl], prepared, comp, nsim, seed)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                start0 = np.repeat(theta0[sl], nsim, axis=0)  # as bootMer's refit(): start at θ̂
                refit = refit_compressed(compressed, rho, comp, prepared, method=method, theta0=start0)
                th, be, s2, conv = refit.theta, refit.beta, refit.sigma2, refit.converged
                stat = _statistics(th, be, s2, prepared, single)
            stat[~conv] = np.nan
            singular = conv & (np.abs(th[:, diag]) < SINGULAR_TOL).any(axis=1)
            Gc = len(ids)
            stat = stat.reshape(Gc, nsim, P)
            rr = rows[sl]
            counts[rr, 0] = singular.reshape(Gc, nsim).sum(axis=1)
            counts[rr, 1] = (~conv).reshape(Gc, nsim).sum(axis=1)
            n_na[rr] = np.isnan(stat).sum(axis=1)
            summ[rr] = _summaries(stat, probs)
            for j, gid in enumerate(ids):
                if gid in keep:
                    frame = pd.DataFrame(stat[j], columns=params)
                    frame.insert(0, "sim", np.arange(1, nsim + 1))
                    frame["singular"] = singular.reshape(Gc, nsim)[j].astype(int)
                    draws[gid] = frame
                    g0 = start + j
                    fits[gid] = {
                        "theta": theta0[g0],
                        "beta": beta0[g0],
                        "sigma2": float(s20[g0]),
                        "fixed_names": list(prepared.fixed_names),
                        "b": b0[g0],
                        "prepared": prepared,
                    }

        starts = range(0, len(rows), per)
        if n_threads > 1 and len(starts) > 1:
            # each batch writes its own rows; numpy and BLAS release the GIL
            with ThreadPoolExecutor(max_workers=n_threads) as pool:
                list(pool.map(run, starts))
        else:
            for st in starts:
                run(st)
    G = len(genes)
    frame = pd.DataFrame(
        {
            "gene_id": np.repeat(genes, P),
            "param": np.tile(params, G),
            "status": np.repeat(status, P),
            "estimate": est.ravel(),
        }
    )
    for j, c in enumerate(qcols):
        frame[c] = summ[:, :, j].ravel()
    frame["boot_mean"] = summ[:, :, len(probs)].ravel()
    frame["boot_sd"] = summ[:, :, len(probs) + 1].ravel()
    frame["n_singular"] = np.repeat(counts[:, 0], P)
    frame["n_fail"] = np.repeat(counts[:, 1], P)
    frame["n_na"] = n_na.ravel()
    done = frame["status"] == "ok"
    for c in ["n_singular", "n_fail", "n_na"]:
        frame[c] = frame[c].astype("Int64").where(done)
    return BootstrapResult(frame, draws, fits, nsim, seed, formula)
