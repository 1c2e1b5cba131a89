"""A random effect with a known covariance between samples (kinship) and per-gene heritability.

GCTA's idea in lme4's model language: ``~ condition + (1 | kinship)`` adds ``g ~ N(0, σ_k² K)``
with ``K`` a samples × samples matrix given in the config (``covariance: {kinship: path}``), e.g.
a genetic relationship matrix. The engine fits it as an ordinary random effect with ``Z = L``,
``L Lᵀ = K`` (:func:`batchmix.design.kinship_factor`), as lme4qtl does in lme4: with
``(1 | kinship)`` the only random term, the EMMA / FaST-LMM rotation on the eigenvectors of K
fits all genes at once; with other terms, the general θ engine.

Per gene the fit adds (:func:`heritability_columns`):

- ``h2 = σ_k² / (σ_k² + σ² + Σ_other v_j)``, where ``v_j`` is each other random term's variance
  averaged over samples (the numerator of its ``frac_`` column); with ``(1 | kinship)`` alone
  this is GCTA's ``V(G)/Vp``. Like GCTA, σ_k² is not rescaled by the mean diagonal of K (a GRM
  has diagonal ≈ 1);
- ``se_h2``: the delta method on the inverse observed Hessian of the (REML or ML) log-likelihood
  profiled over σ², in the parameters (σ_k²/σ², other θ) (h² does not depend on σ² given them);
  at the boundary σ_k² = 0 the curvature is taken one step inside;
- ``lrt_kinship_stat`` and ``lrt_kinship_p``: the likelihood-ratio test of σ_k² = 0 against the
  same model without ``(1 | kinship)`` (same X, so REML criteria are comparable), with the 50:50
  mixture of χ²₀ and χ²₁ of a single variance on its boundary.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..design import KINSHIP, KINSHIP_PREFIX, RandomBlock, parse_formula
from ..distributions import chi2_sf

__all__ = [
    "HERITABILITY_COLUMNS",
    "KinshipError",
    "attach_kinship",
    "has_kinship",
    "heritability_columns",
    "onecomp_loglik",
    "read_kinship",
    "reduced_formula",
]

logger = logging.getLogger(__name__)

HERITABILITY_COLUMNS = ["h2", "se_h2", "lrt_kinship_stat", "lrt_kinship_p"]


class KinshipError(ValueError):
    """A kinship matrix that cannot be used, with the reason in the message."""


def read_kinship(path: str | Path, sample_ids, *, tol: float = 1e-8) -> pd.DataFrame:
    """Read and validate a samples × samples kinship matrix; refuse it naming the problem.

    Parameters
    ----------
    path : str or Path
        Tab-separated, sample ids as the first column and as the header (ids are text: ``007``
        stays ``007``). Extra individuals (not in ``sample_ids``) are allowed and dropped.
    sample_ids : sequence of str
        The sample sheet's ids: every one must be in the matrix.
    tol : float
        Relative tolerance of the symmetry (``|K − Kᵀ| ≤ tol · max|K|``) and PSD
        (smallest eigenvalue ≥ −tol · largest) checks.

    Returns
    -------
    pandas.DataFrame
        K restricted to ``sample_ids``, rows and columns in their order.

    Raises
    ------
    KinshipError
        Not square, ids differing between rows and columns or duplicated, non-numeric or
        missing values, not symmetric, not positive semi-definite, or samples missing.
    """
    path = Path(path)
    if not path.exists():
        raise KinshipError(f"kinship matrix {path}: file not found")
    header = pd.read_csv(path, sep="\t", nrows=0).columns
    raw = pd.read_csv(path, sep="\t", index_col=0, dtype=str, keep_default_na=False)
    raw.index = raw.index.astype(str)
    cols = [str(c) for c in header[1:]]
    raw.columns = cols
    where = f"kinship matrix {path}"
    if raw.shape[0] != raw.shape[1]:
        raise KinshipError(f"{where}: not square ({raw.shape[0]} rows, {raw.shape[1]} columns)")
    if raw.index.duplicated().any():
        raise KinshipError(f"{where}: duplicated row id {raw.index[raw.index.duplicated()][0]!r}")
    if set(raw.index) != set(cols):
        only_rows = sorted(set(raw.index) - set(cols))
        only_cols = sorted(set(cols) - set(raw.index))
        raise KinshipError(
            f"{where}: row and column ids differ (rows only: {only_rows[:3]}, columns only: {only_cols[:3]})"
        )
    try:
        K = raw.apply(pd.to_numeric, errors="raise").astype(float)
    except (ValueError, TypeError) as err:
        raise KinshipError(f"{where}: non-numeric entry ({err})") from None
    K = K.loc[:, list(K.index)]
    values = K.to_numpy()
    if not np.isfinite(values).all():
        r, c = np.argwhere(~np.isfinite(values))[0]
        raise KinshipError(f"{where}: missing or infinite value at ({K.index[r]!r}, {K.columns[c]!r})")
    scale = max(float(np.abs(values).max(initial=0.0)), 1e-300)
    asym = np.abs(values - values.T)
    if asym.max(initial=0.0) > tol * scale:
        r, c = np.unravel_index(np.argmax(asym), asym.shape)
        raise KinshipError(
            f"{where}: not symmetric: K[{K.index[r]!r}, {K.columns[c]!r}] = {values[r, c]:g} but "
            f"K[{K.index[c]!r}, {K.columns[r]!r}] = {values[c, r]:g}"
        )
    ids = [str(s) for s in sample_ids]
    missing_ids = [s for s in ids if s not in K.index]
    if missing_ids:
        raise KinshipError(
            f"{where}: {len(missing_ids)} sample(s) of the sample sheet are not in it, e.g. {missing_ids[:3]}"
        )
    extra = len(K) - len(set(ids))
    K = K.loc[ids, ids]
    d = np.linalg.eigvalsh(K.to_numpy())
    if d.min(initial=0.0) < -tol * max(float(d.max(initial=0.0)), 1e-300):
        raise KinshipError(
            f"{where}: not positive semi-definite on the samples (smallest eigenvalue {d.min():.3g}, "
            f"largest {d.max():.3g})"
        )
    if extra:
        logger.info("kinship matrix %s: %d individual(s) not in the sample sheet dropped", path, extra)
    return K


def attach_kinship(samples: pd.DataFrame, K: pd.DataFrame) -> pd.DataFrame:
    """The sample sheet with the kinship matrix as columns ``kinship::<id>`` (what ``(1 | kinship)`` reads).

    Row subsets of the returned sheet (e.g. the samples a gene was observed on) carry the matching
    submatrix, so every design built from them is consistent.
    """
    ids = [str(i) for i in samples.index]
    block = pd.DataFrame(
        K.loc[ids, ids].to_numpy(dtype=float), index=samples.index, columns=[f"{KINSHIP_PREFIX}{i}" for i in ids]
    )
    return pd.concat(
        [samples.drop(columns=[c for c in samples.columns if str(c).startswith(KINSHIP_PREFIX)]), block], axis=1
    )


def has_kinship(formula: str) -> bool:
    """Whether a formula has the term ``(1 | kinship)``."""
    return any(t.group == KINSHIP for t in parse_formula(formula).random)


def reduced_formula(formula: str) -> str:
    """The formula without its ``(1 | kinship)`` term (the null model of the kinship LRT)."""
    parsed = parse_formula(formula)
    terms = [parsed.fixed] + [f"({t.expr} | {t.group})" for t in parsed.random if t.group != KINSHIP]
    lhs = f"{parsed.response} " if parsed.response else ""
    return f"{lhs}~ " + " + ".join(terms)


def _other_variances(theta: np.ndarray, blocks: list[RandomBlock], kin: int, theta_offsets: list[int]) -> np.ndarray:
    """Σ over non-kinship blocks of tr(T Tᵀ · mean z zᵀ), relative to σ² (G,)."""
    out = np.zeros(theta.shape[0])
    for bi, block in enumerate(blocks):
        if bi == kin:
            continue
        s = block.n_terms
        T = np.zeros((theta.shape[0], s, s))
        k = theta_offsets[bi]
        for c in range(s):
            for r in range(c, s):
                T[:, r, c] = theta[:, k]
                k += 1
        n = block.Z.shape[0]
        zz = block.Z.reshape(n, block.n_levels, s).sum(axis=1)
        mean_outer = zz.T @ zz / n
        out += np.einsum("gij,ij->g", T @ np.swapaxes(T, 1, 2), mean_outer)
    return out


def onecomp_loglik(Y: np.ndarray, X: np.ndarray, Z: np.ndarray, *, reml: bool = True) -> Callable:
    """``θ (G, 1) -> log-likelihood (G,)`` profiled over σ², by the rotation on the eigenvectors of Z Zᵀ.

    Equal to the engine's criterion up to a constant per gene (which the curvature ignores):
    REML ``−½ log|V_λ| − ½ log|Xᵀ V_λ⁻¹ X| − (n−p)/2 · log S_λ``, ML ``−½ log|V_λ| − n/2 · log S_λ``,
    ``V_λ = I + λ Z Zᵀ``, λ = θ², ``S_λ`` the generalised residual sum of squares.
    """
    n, p = X.shape
    d, Q = np.linalg.eigh(Z.T @ Z)
    keep = d > 1e-10 * max(float(d.max(initial=0.0)), 1e-300)
    U = Z @ Q[:, keep] / np.sqrt(d[keep])
    d = d[keep]
    Xt, Yt = U.T @ X, U.T @ Y.T  # (r, p), (r, G)
    XtX, XtY, yty = X.T @ X, X.T @ Y.T, np.einsum("gi,gi->g", Y, Y)
    k = n - p if reml else n

    def loglik(theta: np.ndarray) -> np.ndarray:
        lam = theta[:, 0] ** 2
        w = lam[None, :] * d[:, None] / (1.0 + lam[None, :] * d[:, None])  # (r, G)
        A = XtX[None] - np.einsum("rp,rg,rq->gpq", Xt, w, Xt)
        b = XtY.T - np.einsum("rp,rg->gp", Xt, w * Yt)
        q = yty - np.einsum("rg,rg->g", w, Yt**2)
        S = q - np.einsum("gp,gp->g", b, np.linalg.solve(A, b[..., None])[..., 0])
        out = -0.5 * np.log1p(lam[None, :] * d[:, None]).sum(axis=0) - 0.5 * k * np.log(S)
        if reml:
            out -= 0.5 * np.linalg.slogdet(A)[1]
        return out

    return loglik


def heritability_columns(
    theta: np.ndarray,
    loglik: np.ndarray,
    blocks: list[RandomBlock],
    loglik_at: Callable[[np.ndarray], np.ndarray],
    null_loglik: np.ndarray | None,
    ols_loglik: np.ndarray,
    *,
    step: float = 1e-3,
) -> dict[str, np.ndarray]:
    """``h2``, ``se_h2`` and the kinship LRT of every gene (see the module notes).

    Parameters
    ----------
    theta : numpy.ndarray
        ``(G, m)`` estimates in lme4's θ layout (blocks in formula order).
    loglik : numpy.ndarray
        ``(G,)`` maximised log-likelihood (REML or ML, as fitted).
    blocks : list of RandomBlock
        The model's random blocks (one is ``kinship``).
    loglik_at : callable
        ``loglik_at(theta (G, m)) -> (G,)``: the log-likelihood profiled over σ² at θ.
    null_loglik : numpy.ndarray or None
        ``(G,)`` log-likelihood of the model without ``(1 | kinship)`` when it has other random
        terms; None when kinship is the only one (the null model is then OLS: ``ols_loglik``).
    ols_loglik : numpy.ndarray
    step : float
        Relative finite-difference step (``step · (1 + |x|)``) in λ_k = σ_k²/σ² and the other θ.
    """
    kin = [i for i, b in enumerate(blocks) if b.group == KINSHIP][0]
    offsets, k = [], 0
    for b in blocks:
        offsets.append(k)
        k += b.n_theta
    ik = offsets[kin]
    G, m = theta.shape
    lam = theta[:, ik] ** 2

    def to_theta(psi: np.ndarray) -> np.ndarray:
        th = psi.copy()
        th[:, ik] = np.sqrt(np.maximum(psi[:, ik], 0.0))
        return th

    def h2_of(psi: np.ndarray) -> np.ndarray:
        th = to_theta(psi)
        other = _other_variances(th, blocks, kin, offsets)
        lk = np.maximum(psi[:, ik], 0.0)
        return lk / (lk + 1.0 + other)

    psi = theta.copy()
    psi[:, ik] = lam
    h2 = h2_of(psi)
    # steps relative to each parameter's size; the curvature just inside the boundary when
    # σ_k² = 0 (the likelihood is defined for λ_k ≥ 0 only)
    hstep = step * (1.0 + np.abs(psi))
    centre = psi.copy()
    centre[:, ik] = np.maximum(centre[:, ik], 2 * hstep[:, ik])
    f0 = loglik_at(to_theta(centre))
    H = np.empty((G, m, m))
    plus, minus = {}, {}
    unit = np.eye(m)
    for i in range(m):
        e = unit[i] * hstep[:, i : i + 1]
        plus[i] = loglik_at(to_theta(centre + e))
        minus[i] = loglik_at(to_theta(centre - e))
        H[:, i, i] = (plus[i] - 2 * f0 + minus[i]) / hstep[:, i] ** 2
    for i in range(m):
        for j in range(i):
            e = unit[i] * hstep[:, i : i + 1] + unit[j] * hstep[:, j : j + 1]
            fpp = loglik_at(to_theta(centre + e))
            fmm = loglik_at(to_theta(centre - e))
            # f(x+ei+ej) + f(x−ei−ej) − f(x+ei) − f(x−ei) − f(x+ej) − f(x−ej) + 2 f(x) = 2 h_i h_j f_ij
            H[:, i, j] = H[:, j, i] = (fpp + fmm - plus[i] - minus[i] - plus[j] - minus[j] + 2 * f0) / (
                2 * hstep[:, i] * hstep[:, j]
            )
    grad = np.empty((G, m))
    for i in range(m):
        e = unit[i] * hstep[:, i : i + 1]
        grad[:, i] = (h2_of(centre + e) - h2_of(centre - e)) / (2 * hstep[:, i])
    with np.errstate(invalid="ignore"):
        info = -H
        cov = np.full_like(info, np.nan)
        ok = np.all(np.isfinite(info), axis=(1, 2))
        if ok.any():
            w, V = np.linalg.eigh(info[ok])
            # the inverse on the well-determined directions (a flat direction has no information)
            inv_w = np.where(w > 1e-10 * np.maximum(w.max(axis=1, keepdims=True), 1e-300), 1.0 / w, 0.0)
            cov[ok] = np.einsum("gij,gj,gkj->gik", V, inv_w, V)
        se = np.sqrt(np.maximum(np.einsum("gi,gij,gj->g", grad, cov, grad), 0.0))
    null = ols_loglik if null_loglik is None else null_loglik
    lrt = np.maximum(2.0 * (loglik - null), 0.0)
    lrt = np.where(lrt < 1e-8, 0.0, lrt)

    p = np.where(lrt > 0, 0.5 * chi2_sf(lrt, 1), 1.0)
    return {"h2": h2, "se_h2": se, "lrt_kinship_stat": lrt, "lrt_kinship_p": p}
