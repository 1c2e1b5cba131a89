"""Per-gene linear mixed models, vectorised across genes (lme4 + lmerTest results).

For every gene (row of an expression table) fit the lme4-style model named by a
formula such as ``"~ condition + (1 | batch)"`` or ``"~ Days + (Days | Subject)"``
by REML (default) or ML, and report what lme4 and lmerTest report: the
log-likelihood on lme4's scale, variance components, fixed effects with
Satterthwaite degrees of freedom, conditional modes (BLUPs), the OLS fit without
random terms and the likelihood-ratio test against it, and variance fractions.

Two engines share one design for all genes:

* one variance component (``(1 | batch)``): the EMMA / FaST-LMM rotation, each
  gene a one-dimensional optimisation over λ = θ², all genes evaluated together
  (:mod:`batchmix.lmm.onecomp`);
* anything else (random slopes, several grouping factors): lme4's profiled
  deviance in θ with analytic gradient and Hessian, minimised by a projected
  Newton method run in lock-step over genes with stacked q × q linear algebra
  (:mod:`batchmix.lmm.general`).

Typical use from a notebook::

    from batchmix import lmm
    result = lmm.fit(vst_table, samples, "~ condition + (1 | batch)")
    result.gene_fits.head()
    corrected = lmm.corrected_expression(vst_table, samples, result, groups=["batch"])

For code that needs the raw arrays (bootstrap, grid posteriors)::

    prepared = lmm.prepare("~ condition + (1 | batch)", samples, reml=True)
    arrays = lmm.fit_arrays(Y, prepared)       # Y: genes × samples numpy array, no NaN
    arrays.theta, arrays.beta, arrays.sigma2, arrays.loglik

and for responses known only by their sufficient statistics (a parametric bootstrap)::

    refit = lmm.refit_sufficient(Y @ prepared.X, Y @ prepared.Z, (Y * Y).sum(axis=1), prepared)
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..design import (
    KINSHIP,
    RandomBlock,
    RandomDesign,
    fixed_design,
    fixed_term_columns,
    parse_formula,
    random_design,
)
from ..distributions import chi2_sf, t_sf
from . import core, general, kinship, missing
from .core import GeneData, PreparedDesign
from .onecomp import fit_onecomp, fit_state, state_from_statistics
from .results import ModelMetadata, block_columns, coefficient_column, metadata_from_design, theta_to_covariances

logger = logging.getLogger(__name__)

__all__ = [
    "LMMFit",
    "ArrayFit",
    "PreparedDesign",
    "prepare",
    "fit_arrays",
    "fit",
    "corrected_expression",
    "refit_sufficient",
    "SufficientFit",
]

LRT_ZERO = 1e-8  # LRT statistics below this are the boundary's point mass at 0
FIXED_VCOV_COLUMNS = ["gene_id", "coef_a", "coef_b", "value"]


def prepare(formula: str, samples: pd.DataFrame, reml: bool = True) -> PreparedDesign:
    """Build the design shared by all genes from a formula and a sample sheet.

    Parameters
    ----------
    formula : str
        lme4-style formula, e.g. ``"~ condition + (1 | batch)"``.
    samples : pandas.DataFrame
        One row per sample, in the order of the expression matrix's columns.
    reml : bool, default True
        REML (lme4's default) or ML.

    Returns
    -------
    PreparedDesign
        Holds X, Z, their cross-products, the θ layout and (for single-θ models)
        the rotation used by the fast path.
    """
    parsed = parse_formula(formula)
    X, names = fixed_design(formula, samples)
    if not parsed.random:
        # No random term: every gene is an ordinary least-squares fit (Z has no columns), so a
        # config without a batch random effect still runs and reports the same columns.
        rd = RandomDesign(blocks=[])
        return PreparedDesign(X=X, Z=np.zeros((X.shape[0], 0)), fixed_names=names, random=rd, reml=reml)
    rd = random_design(formula, samples)
    return PreparedDesign(X=X, Z=rd.Z, fixed_names=names, random=rd, reml=reml)


@dataclass
class ArrayFit:
    """Per-gene results on raw arrays (G genes), in lme4's parameterisation.

    Attributes
    ----------
    theta : ndarray, G × m
        Relative covariance factor parameters (lme4's ``getME(fit, "theta")``).
    beta : ndarray, G × p
        Fixed effects.
    vcov : ndarray, G × p × p
        Covariance of the fixed effects, σ² (X'V⁻¹X)⁻¹.
    df : ndarray, G × p
        Satterthwaite degrees of freedom (lmerTest).
    sigma2 : ndarray, G
        Residual variance.
    loglik : ndarray, G
        REML or ML log-likelihood on lme4's scale (``logLik()``).
    ols_loglik : ndarray, G
        The same criterion for the model without random terms.
    b : ndarray, G × q
        Conditional modes of the random effects, in Z's column order.
    converged : ndarray of bool, G
    singular : ndarray of bool, G
        A diagonal θ below 1e-4 (lme4's ``isSingular()``).
    ols_rss : ndarray, G
        Residual sum of squares of the OLS fit without random terms.
    """

    theta: np.ndarray
    beta: np.ndarray
    vcov: np.ndarray
    df: np.ndarray
    sigma2: np.ndarray
    loglik: np.ndarray
    ols_loglik: np.ndarray
    b: np.ndarray
    converged: np.ndarray
    singular: np.ndarray
    ols_rss: np.ndarray | None = None


def _ols_rss(Y: np.ndarray, prepared: PreparedDesign) -> np.ndarray:
    QX, _ = np.linalg.qr(prepared.X)
    resid = Y - (Y @ QX) @ QX.T
    return np.einsum("gi,gi->g", resid, resid)


def _ols_loglik_from_rss(rss: np.ndarray, prepared: PreparedDesign, reml: bool) -> np.ndarray:
    n, p = prepared.n, prepared.p
    with np.errstate(divide="ignore", invalid="ignore"):
        if reml:
            k = n - p
            return -0.5 * (k * (1.0 + np.log(2.0 * np.pi * rss / k)) + prepared.logdet_XtX)
        return -0.5 * n * (1.0 + np.log(2.0 * np.pi * rss / n))


def _fit_ols_arrays(Y: np.ndarray, prepared: PreparedDesign) -> ArrayFit:
    """Per-gene OLS for a model without random terms, in :class:`ArrayFit`'s layout.

    σ² is RSS/(n − p) under REML and RSS/n under ML (the ML estimate, as ``lm`` + ``logLik(REML =
    FALSE)`` uses); the t-tests have n − p degrees of freedom, which is what Satterthwaite gives
    when there are no variance components.
    """
    G, (n, p) = Y.shape[0], prepared.X.shape
    XtX_inv = np.linalg.inv(prepared.XtX)
    beta = (Y @ prepared.X) @ XtX_inv
    resid = Y - beta @ prepared.X.T
    rss = np.einsum("gi,gi->g", resid, resid)
    sigma2 = rss / ((n - p) if prepared.reml else n)
    # the coefficients' covariance always uses the unbiased σ², as lm's summary does
    vcov = (rss / (n - p))[:, None, None] * XtX_inv[None, :, :]
    loglik = _ols_loglik_from_rss(rss, prepared, prepared.reml)
    return ArrayFit(
        theta=np.zeros((G, 0)),
        beta=beta,
        vcov=vcov,
        df=np.full((G, p), float(n - p)),
        sigma2=sigma2,
        loglik=loglik,
        ols_loglik=loglik,
        b=np.zeros((G, 0)),
        converged=np.isfinite(loglik),
        singular=np.zeros(G, dtype=bool),
        ols_rss=rss,
    )


def fit_arrays(
    Y: np.ndarray,
    prepared: PreparedDesign,
    method: str = "auto",
    theta: np.ndarray | None = None,
    yty: np.ndarray | None = None,
) -> ArrayFit:
    """Fit every row of ``Y`` (genes × samples, no missing values) with the shared design.

    Parameters
    ----------
    Y : ndarray, G × n
        Expression values, columns in the sample order used by :func:`prepare`.
    prepared : PreparedDesign
        From :func:`prepare`; its ``reml`` flag selects REML or ML.
    method : {"auto", "onecomp", "general"}
        ``auto`` uses the rotation for single-θ models and the θ-Newton engine
        otherwise; the two agree to optimisation tolerance.
    theta : ndarray, G × m, optional
        Evaluate every result at these θ instead of optimising (e.g. at another
        program's estimates, or on a grid); uses the θ-engine.
    yty : ndarray, G, optional
        Σ y² per gene when the caller has it already (saves a pass over Y).

    Returns
    -------
    ArrayFit
    """
    Y = np.asarray(Y, dtype=float)
    if Y.ndim != 2 or Y.shape[1] != prepared.n:
        raise ValueError(f"Y must be genes × {prepared.n} samples, got shape {Y.shape}")
    reml = prepared.reml
    p, n = prepared.p, prepared.n
    k = (n - p) if reml else n
    if prepared.m == 0:
        return _fit_ols_arrays(Y, prepared)
    use_onecomp = theta is None and (method == "onecomp" or (method == "auto" and prepared.rotation is not None))
    if use_onecomp:
        if prepared.rotation is None:
            raise ValueError("the one-component engine needs a model with a single θ")
        one = fit_onecomp(Y, prepared.rotation, prepared, reml, yty)
        rss0 = one.rss0
        theta, r2, deviance, beta = one.theta, one.r2, one.deviance, one.beta
        sigma2 = r2 / k
        vcov = sigma2[:, None, None] * one.Minv
        df = core.satterthwaite_df(vcov, one.hess_varpar, one.jac_vcov)
        b = one.b
        converged = np.isfinite(deviance)
    elif method in ("auto", "general"):
        data = GeneData.from_matrix(Y, prepared)
        rss0 = _ols_rss(Y, prepared)
        G = Y.shape[0]
        q = prepared.q
        deviance, sigma2 = np.full(G, np.nan), np.full(G, np.nan)
        beta, b = np.full((G, p), np.nan), np.full((G, q), np.nan)
        vcov, df = np.full((G, p, p), np.nan), np.full((G, p), np.nan)
        if theta is None:
            # the Newton iterations keep what the outputs need at the optimum
            theta, converged, ev = general.optimise(
                data, prepared, reml, keep_evaluation=True, theta0=general.start_values(data, prepared, reml)
            )
            evaluations = [(slice(None), ev)]
        else:
            theta = np.broadcast_to(np.asarray(theta, dtype=float), (G, prepared.m)).copy()
            converged = np.ones(G, dtype=bool)
            evaluations = (
                (chunk, general.evaluate(theta[chunk], data.take(np.arange(G)[chunk]), prepared, reml, order=2))
                for chunk in core.gene_chunks(G, prepared)
            )
        for chunk, ev in evaluations:
            deviance[chunk] = ev.deviance
            sigma2[chunk] = ev.r2 / k
            beta[chunk] = ev.beta
            b[chunk] = ev.b
            # Satterthwaite where the evaluation is finite (a gene may fail at its start)
            rows = np.arange(G)[chunk]
            ok = np.isfinite(ev.deviance) & np.isfinite(ev.M).all(axis=(1, 2))
            if not ok.all():
                ev, rows = ev.take(ok), rows[ok]
            if rows.size:
                hess, jac, vc = core.varpar_derivatives(ev, prepared, reml)
                vcov[rows] = vc
                df[rows] = core.satterthwaite_df(vc, hess, jac)
        converged &= np.isfinite(deviance)
    else:
        raise ValueError(f"unknown method {method!r}")
    diag = np.isfinite(prepared.theta_lower)
    singular = (np.abs(theta[:, diag]) < core.SINGULAR_TOL).any(axis=1)
    return ArrayFit(
        theta=theta,
        beta=beta,
        vcov=vcov,
        df=df,
        sigma2=sigma2,
        loglik=-0.5 * deviance,
        ols_loglik=_ols_loglik_from_rss(rss0, prepared, reml),
        b=b,
        converged=converged,
        singular=singular,
        ols_rss=rss0,
    )


@dataclass
class SufficientFit:
    """Refits from sufficient statistics (:func:`refit_sufficient`), N responses.

    Attributes
    ----------
    theta : ndarray, N × m
    beta : ndarray, N × p
    sigma2 : ndarray, N
    converged : ndarray of bool, N
        False where the optimisation failed or the criterion is not finite.
    """

    theta: np.ndarray
    beta: np.ndarray
    sigma2: np.ndarray
    converged: np.ndarray


def refit_sufficient(
    Xty: np.ndarray,
    Zty: np.ndarray,
    yty: np.ndarray,
    prepared: PreparedDesign,
    *,
    theta0: np.ndarray | None = None,
    method: str = "auto",
    residual_ss: np.ndarray | None = None,
) -> SufficientFit:
    """Fit responses known only through their sufficient statistics X'y, Z'y and y'y.

    The REML/ML criterion sees a response only through these, so this is the exact fit of
    :func:`fit_arrays` without the data (what a parametric bootstrap needs: simulated responses
    can be drawn as their statistics directly).

    Parameters
    ----------
    Xty : ndarray, N × p
    Zty : ndarray, N × q
    yty : ndarray, N
    prepared : PreparedDesign
        From :func:`prepare`; its ``reml`` flag selects REML or ML.
    theta0 : ndarray, N × m, optional
        Starting θ of the θ-Newton engine (the rotation searches λ globally and needs none).
    method : {"auto", "general"}
        ``auto`` uses the rotation for single-θ models and the θ-Newton engine otherwise;
        ``general`` forces the latter (the two agree to optimisation tolerance).
    residual_ss : ndarray, N, optional
        The OLS residual sum of squares, when the caller has it more accurately than
        y'y − ‖Q_X'y‖² (rotation only).

    Returns
    -------
    SufficientFit
    """
    if method not in ("auto", "general"):
        raise ValueError(f"unknown method {method!r}")
    Xty, Zty, yty = (np.asarray(a, dtype=float) for a in (Xty, Zty, yty))
    if method == "auto" and prepared.rotation is not None:
        state = state_from_statistics(Xty, Zty, yty, prepared.rotation, residual_ss=residual_ss)
        one = fit_state(state, prepared.rotation, prepared, prepared.reml, derivatives=False)
        k = (prepared.n - prepared.p) if prepared.reml else prepared.n
        sigma2 = one.r2 / k
        converged = np.isfinite(sigma2) & np.isfinite(one.beta).all(axis=1)
        return SufficientFit(theta=one.theta, beta=one.beta, sigma2=sigma2, converged=converged)
    theta, beta, sigma2, converged = general.refit(GeneData(Zty=Zty, Xty=Xty, yty=yty), prepared, theta0)
    return SufficientFit(theta=theta, beta=beta, sigma2=sigma2, converged=converged)


@dataclass
class LMMFit:
    """Result of :func:`fit`.

    Attributes
    ----------
    gene_fits : pandas.DataFrame
        One row per input gene, in input order. Columns: ``gene_id``, ``status``
        (``ok``, ``singular``, ``filtered:<reason>``, ``failed:<reason>``), ``n``,
        ``loglik``, ``aic``, ``bic``, ``ols_loglik``, ``ols_aic``, ``ols_bic``,
        ``lrt_stat``, ``lrt_df``, ``lrt_p``, ``var_<group>`` (random intercepts) or
        ``var_<group>_<term>`` and ``cor_<group>_<term1>_<term2>`` (random slopes),
        ``var_residual``, ``sigma``, ``df_residual``, ``frac_<fixed term>``,
        ``frac_<random component>``, ``frac_residual``, then per coefficient
        ``coef_<name>``, ``se_<name>``, ``df_<name>``, ``t_<name>``, ``p_<name>``.
    blups : pandas.DataFrame
        Tidy conditional modes: ``gene_id``, ``group``, ``level``, ``term``, ``value``
        (genes with status ``ok`` or ``singular`` only).
    formula : str
    reml : bool
    fixed_names : list of str
        Coefficient names, as in the ``coef_*`` columns.
    metadata : ModelMetadata, optional
        The model's structure and the columns holding each parameter
        (:func:`batchmix.lmm.model_metadata`).
    fixed_vcov : pandas.DataFrame
        Long table ``gene_id, coef_a, coef_b, value``: Cov(β̂) of every gene with status
        ``ok`` or ``singular``, upper triangle with the diagonal, pairs in coefficient order
        (the matrix whose diagonal gives ``se_<coef>``²).
    notes : list of str
        Warnings the user should see (e.g. an aliased column dropped from X); also logged.
    """

    gene_fits: pd.DataFrame
    blups: pd.DataFrame
    formula: str
    reml: bool
    fixed_names: list[str] = field(default_factory=list)
    metadata: ModelMetadata | None = None
    fixed_vcov: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FIXED_VCOV_COLUMNS))
    notes: list[str] = field(default_factory=list)


def _block_term_values(block: RandomBlock) -> np.ndarray:
    """n × s values of the term's columns for each sample (whatever its level)."""
    n = block.Z.shape[0]
    return block.Z.reshape(n, block.n_levels, block.n_terms).sum(axis=1)


def _pattern_columns(
    prepared: PreparedDesign,
    arrays: ArrayFit,
    metadata: ModelMetadata,
) -> tuple[dict[str, np.ndarray], list[tuple]]:
    """Output columns for the genes of one missingness pattern."""
    G = arrays.sigma2.shape[0]
    n, p, m = prepared.n, prepared.p, prepared.m
    cols: dict[str, np.ndarray] = {}
    loglik, ols = arrays.loglik, arrays.ols_loglik
    n_par = p + m + 1
    cols["n"] = np.full(G, float(n))
    cols["loglik"] = loglik
    cols["aic"] = -2.0 * loglik + 2.0 * n_par
    cols["bic"] = -2.0 * loglik + np.log(n) * n_par
    cols["ols_loglik"] = ols
    cols["ols_aic"] = -2.0 * ols + 2.0 * (p + 1)
    cols["ols_bic"] = -2.0 * ols + np.log(n) * (p + 1)
    lrt = np.maximum(2.0 * (loglik - ols), 0.0)
    lrt = np.where(lrt < LRT_ZERO, 0.0, lrt)
    cols["lrt_stat"] = lrt
    cols["lrt_df"] = np.full(G, float(m))
    if m == 0:
        # no random term: nothing to test against OLS
        cols["lrt_stat"] = np.full(G, np.nan)
        lrt_p = np.full(G, np.nan)
    elif m == 1:
        # one variance component on the boundary: 50:50 mixture of χ²₀ and χ²₁
        lrt_p = np.where(lrt > 0, 0.5 * chi2_sf(lrt, 1), 1.0)
    else:
        lrt_p = chi2_sf(lrt, m)
    cols["lrt_p"] = lrt_p
    sigma2 = arrays.sigma2
    blocks = prepared.random.blocks
    random_var: list[tuple[str, np.ndarray]] = []
    for block, names, Sigma in zip(blocks, block_columns(blocks), theta_to_covariances(arrays.theta, sigma2, blocks)):
        sd = np.sqrt(np.diagonal(Sigma, axis1=1, axis2=2))
        for i, v in enumerate(names.variances):
            cols[v] = Sigma[:, i, i]
        with np.errstate(divide="ignore", invalid="ignore"):
            for i, j, cname in names.correlations:
                cols[cname] = Sigma[:, i, j] / (sd[:, i] * sd[:, j])
        # a random term's share: its variance averaged over samples, E_i[z_i' Σ z_i]
        if block.group == KINSHIP:
            # Z = L with L Lᵀ = K: the term's variance at sample i is σ_k² K_ii
            mean_outer = np.array([[np.sum(block.Z**2) / n]])
        else:
            zz = _block_term_values(block)
            mean_outer = zz.T @ zz / n
        random_var.append((names.fraction, np.einsum("gij,ij->g", Sigma, mean_outer)))
    cols["var_residual"] = sigma2
    cols["sigma"] = np.sqrt(sigma2)
    cols["df_residual"] = np.full(G, float(prepared.df_residual))
    fixed_var = []
    for term, frac_name in metadata.fixed_fraction_columns.items():
        idx = [prepared.fixed_names.index(c) for c in metadata.fixed_terms[term] if c in prepared.fixed_names]
        if not idx:
            continue
        # sample variance (n - 1) of X_t β_t over samples, as β_t' Cov(X_t) β_t
        cov = np.atleast_2d(np.cov(prepared.X[:, idx], rowvar=False, ddof=1))
        fixed_var.append((frac_name, np.einsum("gi,ij,gj->g", arrays.beta[:, idx], cov, arrays.beta[:, idx])))
    total = sigma2 + sum(v for _, v in fixed_var) + sum(v for _, v in random_var)
    for name, v in fixed_var + random_var:
        cols[name] = v / total
    cols["frac_residual"] = sigma2 / total
    se = np.sqrt(np.diagonal(arrays.vcov, axis1=1, axis2=2))
    for j, name in enumerate(prepared.fixed_names):
        t = arrays.beta[:, j] / se[:, j]
        cols[coefficient_column("coef", name)] = arrays.beta[:, j]
        cols[coefficient_column("se", name)] = se[:, j]
        cols[coefficient_column("df", name)] = arrays.df[:, j]
        cols[coefficient_column("t", name)] = t
        cols[coefficient_column("p", name)] = 2.0 * t_sf(np.abs(t), arrays.df[:, j])
    blup_parts = []
    offset = 0
    for block in prepared.random.blocks:
        width = block.n_levels * block.n_terms
        values = arrays.b[:, offset : offset + width]
        offset += width
        blup_parts.append((block, values))
    return cols, blup_parts


def _align_samples(expression: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """The sample sheet's rows in the order of the expression's columns (not copied when they are so
    already: a chunk job's blocks share one aligned sheet, and ``.loc`` of 500 ids costs milliseconds)."""
    columns = expression.columns
    index = samples.index
    if index.dtype == columns.dtype and index.is_unique and index.equals(columns):
        return samples
    missing = [s for s in expression.columns if s not in samples.index]
    if missing:
        raise ValueError(f"{len(missing)} expression columns are not in the sample sheet, e.g. {missing[:3]}")
    return samples.loc[list(expression.columns)]


def fit(
    expression: pd.DataFrame,
    samples: pd.DataFrame,
    formula: str,
    reml: bool = True,
    gene_status: pd.Series | None = None,
) -> LMMFit:
    """Fit a linear mixed model to every gene of an expression table.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes × samples (index gene ids, columns sample ids), on a scale where a
        Gaussian model is sensible (e.g. a VST). Missing values (NaN) are allowed:
        genes are grouped by their pattern of missing samples and each group is
        fitted with the design restricted to its samples.
    samples : pandas.DataFrame
        Sample sheet indexed by sample id, with the formula's columns (strings
        for factors, numbers for numeric covariates). Aligned to the expression
        columns by id.
    formula : str
        lme4-style formula, e.g. ``"~ condition + (1 | batch)"``.
    reml : bool, default True
        REML (lme4's default) or ML.
    gene_status : pandas.Series, optional
        gene id → status from an earlier stage; genes whose status is not ``ok``
        are not fitted and keep that status with NaN in every numeric column.

    Returns
    -------
    LMMFit

    Notes
    -----
    Statuses set here: ``singular`` (a θ on the boundary, as lme4's
    ``isSingular()`` with tolerance 1e-4), ``filtered:all_missing``,
    ``filtered:constant`` (no variation, e.g. all-zero genes),
    ``failed:too_few_observations`` (fewer than p + 2 observed samples or a
    degenerate design on them), ``failed:perfect_fit`` (zero OLS residual),
    ``failed:not_converged`` and ``failed:numerical``. Failed and filtered genes
    have NaN in every numeric column.

    The likelihood-ratio test compares the mixed model with the same model
    without random terms *on the fitted criterion*: REML log-likelihoods under
    REML (the two models share X, so their REML criteria are comparable; this is
    what lmerTest's ``ranova()`` does), ML log-likelihoods under ML. With one
    variance parameter the p-value uses the 50:50 mixture of χ²₀ and χ²₁ (a
    statistic of 0 gets p = 1); with several it uses χ² with as many degrees of
    freedom as θ parameters, which is conservative.

    Variance fractions follow variancePartition: each fixed term's share is the
    sample variance (n - 1) of its fitted contribution X_term β_term, a random
    term's share is its variance (for random slopes, z_i' Σ z_i averaged over
    samples), the residual's is σ²; they sum to 1.
    """
    samples = _align_samples(expression, samples)
    notes: list[str] = []
    with_kinship = kinship.has_kinship(formula)
    full, messages, metadata = _shared_design(formula, samples, reml)
    for message in messages:
        _note(notes, message)
    metadata = copy.deepcopy(metadata)  # the caller's own: the design is shared with later calls
    gene_ids = np.asarray(expression.index, dtype=object)
    G = gene_ids.size
    values = expression.to_numpy(dtype=float)
    status = np.full(G, "ok", dtype=object)
    if gene_status is not None:
        prior = gene_status.reindex(expression.index).fillna("ok").astype(str).to_numpy()
        status[:] = prior
    # Σ y² per gene: a non-finite sum flags the genes with missing values (only those rows
    # are inspected sample by sample), and the one-component engine reuses it
    with np.errstate(over="ignore", invalid="ignore"):
        yty_all = np.einsum("gi,gi->g", values, values)
    todo = np.flatnonzero(status == missing.OK)
    patterns, all_missing = missing.group_by_missingness(values, todo, yty_all)
    status[all_missing] = missing.ALL_MISSING
    columns: dict[str, np.ndarray] = {}
    blup_frames = []
    vcov_frames = []
    for pattern in patterns:
        mask, members = pattern.observed, pattern.rows
        whole = pattern.complete
        if whole:
            Y = values if members.size == G else values[members]
            yty = yty_all if members.size == G else yty_all[members]
        else:
            Y = values[np.ix_(members, mask)]
            yty = np.einsum("gi,gi->g", Y, Y)
        try:
            if whole:
                prepared = full
            else:
                prepared, messages = _prepare_recording(formula, samples.loc[mask], reml)
                for message in messages:
                    _note(notes, f"{members.size} gene(s) with missing samples: {message}")
        except (ValueError, np.linalg.LinAlgError):
            status[members] = missing.TOO_FEW_OBSERVATIONS
            continue
        if prepared.n - prepared.p < 2 or (prepared.q == 0 and full.q > 0):
            status[members] = missing.TOO_FEW_OBSERVATIONS
            continue
        constant = missing.constant_rows(Y, yty)
        if constant.any():
            status[members[constant]] = missing.CONSTANT
            members, Y, yty = members[~constant], Y[~constant], yty[~constant]
        if members.size == 0:
            continue
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            arrays = fit_arrays(Y, prepared, yty=yty)
            cols, blup_parts = _pattern_columns(prepared, arrays, metadata)
            if with_kinship:
                cols.update(
                    _kinship_columns(Y, yty, prepared, arrays, formula, samples if whole else samples.loc[mask])
                )
        perfect = missing.perfect_fit(arrays.ols_rss, yty)
        good = arrays.converged & np.isfinite(arrays.loglik) & np.isfinite(arrays.beta).all(axis=1) & ~perfect
        status[members] = np.where(good, np.where(arrays.singular, missing.SINGULAR, missing.OK), missing.NUMERICAL)
        status[members[~arrays.converged & np.isfinite(arrays.loglik)]] = missing.NOT_CONVERGED
        status[members[perfect]] = missing.PERFECT_FIT
        gsel = members[good]
        all_good = gsel.size == G
        vcov_frames.append(_vcov_frame(gsel, arrays.vcov[good], prepared.fixed_names))
        for name, vals in cols.items():
            if all_good:
                columns[name] = vals
                continue
            if name not in columns:
                columns[name] = np.full(G, np.nan)
            columns[name][gsel] = vals[good]
        if gsel.size == 0 or not blup_parts:
            continue
        # one row per gene and column of Z (blocks, then levels, then terms), genes in order
        groups, levels, terms = [], [], []
        for block, _ in blup_parts:
            nl, s = block.n_levels, block.n_terms
            groups.append(np.full(nl * s, block.group, dtype=object))
            levels.append(np.repeat(np.asarray(block.levels, dtype=object), s))
            terms.append(np.tile(np.asarray(block.terms, dtype=object), nl))
        width = sum(g.size for g in groups)
        b = arrays.b if all_good else arrays.b[good]
        column = np.tile(np.arange(width), gsel.size)  # each row's column of Z
        blup_frames.append(
            pd.DataFrame(
                {
                    "gene_index": np.repeat(gsel, width),
                    "group": _text_column(np.concatenate(groups), column),
                    "level": _text_column(np.concatenate(levels), column),
                    "term": _text_column(np.concatenate(terms), column),
                    "value": b[:, :width].reshape(-1),
                }
            )
        )
    ordered = _column_order(columns, full)
    table = pd.DataFrame({"gene_id": gene_ids, "status": status})
    numeric = pd.DataFrame({c: columns[c] for c in ordered}, index=table.index)
    table = pd.concat([table, numeric], axis=1)
    if blup_frames:
        blups = pd.concat(blup_frames, ignore_index=True) if len(blup_frames) > 1 else blup_frames[0]
        if len(blup_frames) > 1:
            blups = blups.sort_values("gene_index", kind="stable")
        blups.insert(0, "gene_id", _text_column(gene_ids, blups["gene_index"].to_numpy()))
        blups = blups.drop(columns="gene_index").reset_index(drop=True)
    else:
        blups = pd.DataFrame(columns=["gene_id", "group", "level", "term", "value"])
    vcov_frames = [f for f in vcov_frames if len(f)]
    if vcov_frames:
        fixed_vcov = pd.concat(vcov_frames, ignore_index=True) if len(vcov_frames) > 1 else vcov_frames[0]
        fixed_vcov = fixed_vcov.sort_values("gene_index", kind="stable")
        fixed_vcov.insert(0, "gene_id", _text_column(gene_ids, fixed_vcov["gene_index"].to_numpy()))
        fixed_vcov = fixed_vcov.drop(columns="gene_index").reset_index(drop=True)
    else:
        fixed_vcov = pd.DataFrame(columns=FIXED_VCOV_COLUMNS)
    return LMMFit(
        gene_fits=table,
        blups=blups,
        formula=formula,
        reml=reml,
        fixed_names=list(full.fixed_names),
        metadata=metadata,
        fixed_vcov=fixed_vcov,
        notes=notes,
    )


def _kinship_columns(Y, yty, prepared: PreparedDesign, arrays: ArrayFit, formula: str, samples: pd.DataFrame) -> dict:
    """``h2``, ``se_h2`` and the kinship LRT of one missingness pattern (:mod:`.kinship`)."""
    null = None
    if len(prepared.random.blocks) > 1:
        reduced = prepare(kinship.reduced_formula(formula), samples, reml=prepared.reml)
        null = fit_arrays(Y, reduced, yty=yty).loglik
    return kinship.heritability_columns(
        arrays.theta,
        arrays.loglik,
        prepared.random.blocks,
        # one component: the rotation (all genes at once); otherwise the general engine at θ
        kinship.onecomp_loglik(Y, prepared.X, prepared.Z, reml=prepared.reml)
        if prepared.m == 1
        else (lambda th: fit_arrays(Y, prepared, theta=th, yty=yty).loglik),
        null,
        arrays.ols_loglik,
    )


# The complete-sample designs of the last few (formula, sample sheet, REML) this process fitted: a
# chunk job fits its genes in blocks on one design, and building it (formulaic, the cross-products,
# the rotation) costs tens of milliseconds, as much as fitting a thousand genes.
# Only small designs are kept (X and Z with up to _DESIGN_KEPT_VALUES values, e.g. 500 samples and
# 20 batches): a kinship model's Z is samples × samples, and keeping it would hold its memory.
_DESIGNS: OrderedDict = OrderedDict()
_DESIGNS_KEPT = 2
_DESIGN_KEPT_VALUES = 2_000_000


def _sheet_key(formula: str, samples: pd.DataFrame, reml: bool) -> tuple | None:
    """What the design depends on, as a dictionary key; None for a sheet that cannot be hashed.

    The cells themselves (as Python objects, with their types in object columns, where 1, 1.0 and
    True are equal), not a hash of them: building the key costs a tenth of hashing the sheet's text
    columns, and equal keys mean equal sheets (a NaN never equals another: at worst a rebuild).
    """
    columns = tuple((str(c), str(t)) for c, t in samples.dtypes.items())
    cells = []
    for j in range(samples.shape[1]):
        values = samples.iloc[:, j].to_numpy(dtype=object).tolist()
        cells.append(tuple(values))
        if samples.dtypes.iloc[j] == np.dtype(object):
            cells.append(tuple(type(v).__name__ for v in values))
    key = (formula, bool(reml), columns, tuple(samples.index.to_numpy(dtype=object).tolist()), tuple(cells))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _shared_design(formula: str, samples: pd.DataFrame, reml: bool) -> tuple[PreparedDesign, list[str], ModelMetadata]:
    """The complete-sample design, its messages and the model's metadata; built once for the same inputs.

    Nothing in the fits writes into a :class:`PreparedDesign`, so later calls share it.
    """
    key = _sheet_key(formula, samples, reml)
    if key is not None and key in _DESIGNS:
        _DESIGNS.move_to_end(key)
        return _DESIGNS[key]
    full, messages = _prepare_recording(formula, samples, reml)
    metadata = metadata_from_design(
        formula, reml, full.fixed_names, fixed_term_columns(formula, samples), full.random.blocks
    )
    if key is not None and full.X.size + full.Z.size + full.q * full.q <= _DESIGN_KEPT_VALUES:
        _DESIGNS[key] = (full, messages, metadata)
        while len(_DESIGNS) > _DESIGNS_KEPT:
            _DESIGNS.popitem(last=False)
    return full, messages, metadata


def _prepare_recording(formula: str, samples: pd.DataFrame, reml: bool) -> tuple[PreparedDesign, list[str]]:
    """:func:`prepare`, returning the design's warnings (e.g. an aliased column dropped) as messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare(formula, samples, reml=reml)
    return prepared, list(dict.fromkeys(str(w.message) for w in caught))


def _note(notes: list[str], message: str) -> None:
    """Log a warning the user should see and keep it for the result (once per message)."""
    if message not in notes:
        logger.warning(message)
        notes.append(message)


def _vcov_frame(gene_index: np.ndarray, vcov: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Long upper triangle (with the diagonal) of each gene's Cov(β̂), in coefficient order.

    A pattern of missing samples may lose a column of X; its names stay a subsequence of the
    full design's, so the pairs keep the full design's order.
    """
    rows_i, rows_j = np.triu_indices(len(names))
    labels = np.asarray(names, dtype=object)
    G, P = gene_index.size, rows_i.size
    return pd.DataFrame(
        {
            "gene_index": np.repeat(gene_index, P),
            "coef_a": _text_column(labels, np.tile(rows_i, G)),
            "coef_b": _text_column(labels, np.tile(rows_j, G)),
            "value": vcov[:, rows_i, rows_j].reshape(-1),
        }
    )


def _text_column(labels: np.ndarray, codes: np.ndarray):
    """``labels[codes]`` as the column pandas makes of them (``str`` for texts), built from the few labels.

    A DataFrame column made from an object array of texts is converted text by text (pandas checks
    every row); the long tables repeat a few texts in many rows, so the labels are converted once
    and taken by position (the same column: dtype and values).
    """
    return pd.Series(np.asarray(labels, dtype=object)).array.take(np.asarray(codes, dtype=np.intp))


def _column_order(columns: dict[str, np.ndarray], full: PreparedDesign) -> list[str]:
    head = ["n", "loglik", "aic", "bic", "ols_loglik", "ols_aic", "ols_bic", "lrt_stat", "lrt_df", "lrt_p"]
    var = [c for c in columns if c.startswith(("var_", "cor_")) and c != "var_residual"]
    mid = ["var_residual", "sigma", "df_residual"]
    frac = [c for c in columns if c.startswith("frac_") and c != "frac_residual"] + ["frac_residual"]
    frac += kinship.HERITABILITY_COLUMNS
    coef_names = list(full.fixed_names) + [
        c[5:] for c in columns if c.startswith("coef_") and c[5:] not in full.fixed_names
    ]
    coefs = [f"{kind}_{name}" for name in coef_names for kind in ("coef", "se", "df", "t", "p")]
    wanted = head + var + mid + frac + coefs
    if not columns:
        return []
    return [c for c in wanted if c in columns]


def corrected_expression(
    expression: pd.DataFrame, samples: pd.DataFrame, fit: LMMFit, groups: list[str]
) -> pd.DataFrame:
    """Expression with the named random effects removed: y - Σ_g Z_g b̂_g.

    Parameters
    ----------
    expression : pandas.DataFrame
        The table that was fitted (genes × samples).
    samples : pandas.DataFrame
        The sample sheet used for the fit.
    fit : LMMFit
        Result of :func:`fit` on this table.
    groups : list of str
        Grouping factors whose conditional modes are subtracted (all their
        terms: intercepts and slopes), e.g. ``["batch"]``. Fixed effects (the
        biology) and the other random effects are kept.

    Returns
    -------
    pandas.DataFrame
        Same shape, index and columns as ``expression``. Genes without a fit
        (filtered or failed) are returned unchanged; missing values stay missing;
        a level with no conditional mode for a gene (absent from that gene's
        observed samples) contributes nothing.
    """
    values = corrected_values(expression, samples, fit, groups)
    return pd.DataFrame(values, index=expression.index, columns=expression.columns)


def corrected_values(
    expression: pd.DataFrame, samples: pd.DataFrame, fit: LMMFit, groups: list[str], out: np.ndarray | None = None
) -> np.ndarray:
    """:func:`corrected_expression` as a genes × samples float64 array, the same numbers.

    ``out``: an array of the expression's shape to write them into (any memory order, e.g. a
    column-major slice of a larger matrix), which is returned; by default a new array. No DataFrame
    is built, and the values are not copied beyond ``out``.
    """
    samples = _align_samples(expression, samples)
    design_groups = [t.group for t in parse_formula(fit.formula).random]
    unknown = [g for g in groups if g not in design_groups]
    if unknown:
        raise ValueError(f"groups {unknown} are not grouping factors of {fit.formula!r}")
    key = _sheet_key(fit.formula, samples, fit.reml)
    # the fit's own random design when this process built it (a chunk job): the same as rebuilding it
    rd = _DESIGNS[key][0].random if key in _DESIGNS else random_design(fit.formula, samples)
    # The long table's text columns as codes into their few distinct values (one hash pass each),
    # so that selecting and placing the modes does no work per row on strings.
    blups = fit.blups
    group, term, level = (_Codes(blups[name]) for name in ("group", "term", "level"))
    genes = _Codes(blups["gene_id"])
    in_groups = group.isin(groups)
    source = expression.to_numpy(dtype=float)
    # the expression is copied into values by the first subtraction (or as it is, without modes)
    values = np.empty_like(source) if out is None else out
    copied = False
    if not in_groups.any():
        values[...] = source
        return values
    # the genes with modes, in their order of first appearance
    fitted_codes = pd.unique(genes.codes[in_groups])
    fitted_genes = np.asarray(genes.uniques, dtype=object)[fitted_codes]
    row_of_code = np.full(len(genes.uniques), -1)
    row_of_code[fitted_codes] = np.arange(fitted_codes.size)
    gene_pos = pd.Index(expression.index).get_indexer(fitted_genes)
    # every gene has modes, in order (the usual case): subtracted whole, without fancy indexing
    every_gene = np.array_equal(gene_pos, np.arange(values.shape[0]))
    value = blups["value"].to_numpy(dtype=np.float64)
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for block in rd.blocks:
        key = (block.group, tuple(block.terms))
        if block.group not in groups or key in seen:
            continue
        seen.add(key)
        sel = np.flatnonzero(in_groups & group.isin([block.group]) & term.isin(block.terms))
        rows = row_of_code[genes.codes[sel]]
        at_level, at_term = level.positions(block.levels)[sel], term.positions(block.terms)[sel]
        # levels then terms, as the columns of block.Z
        cols = np.where((at_level >= 0) & (at_term >= 0), at_level * len(block.terms) + at_term, -1)
        wide = _wide_blups(rows, cols, value[sel], len(fitted_genes), block)
        if wide is None:  # a (gene, level, term) given twice
            wide = _pivot_blups(blups.iloc[sel], fitted_genes, block)
        product = _modes_times_z(wide, block.Z)
        if every_gene and not copied:
            np.subtract(source, product, out=values)
        else:
            if not copied:
                values[...] = source
            if every_gene:
                values -= product
            else:
                values[gene_pos] -= product
        copied = True
    if not copied:
        values[...] = source
    return values


def _modes_times_z(wide: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """``wide @ Z.T``: each gene's modes placed on its samples.

    For a random intercept (each row of Z a single 1, the rest 0) and modes that are all finite and
    not zero, each sum of the product has exactly one term that is not zero (a mode times 1; the
    others are ±0), so it equals that mode bit for bit: the product is a gather of the modes by
    each sample's level. Any other Z or modes go through the matrix product.
    """
    level = _indicator_columns(Z)
    if level is not None and np.isfinite(wide).all() and (wide != 0).all():
        # gathered sample by sample: column-major, as the chunk's matrix is
        return np.ascontiguousarray(wide.T)[level].T
    return wide @ Z.T


def _indicator_columns(Z: np.ndarray) -> np.ndarray | None:
    """The column of each row's single 1 when every row of ``Z`` is one 1 and zeros, else None."""
    if Z.ndim != 2 or Z.shape[1] == 0 or not ((Z == 0) | (Z == 1)).all() or not (Z.sum(axis=1) == 1).all():
        return None
    return Z.argmax(axis=1)


class _Codes:
    """A text column as integer codes into its distinct values (missing: -1)."""

    def __init__(self, column: pd.Series):
        self.codes, self.uniques = pd.factorize(column)

    def isin(self, values) -> np.ndarray:
        """Rows whose value is one of ``values``."""
        hit = np.append(pd.Index(self.uniques).isin(list(values)), False)  # code -1: no
        return hit[self.codes]

    def positions(self, values) -> np.ndarray:
        """Each row's position in ``values`` (-1 when absent or missing)."""
        where = np.append(pd.Index(values).get_indexer(self.uniques), -1)
        return where[self.codes]


def _wide_blups(rows: np.ndarray, cols: np.ndarray, value: np.ndarray, n_genes: int, block) -> np.ndarray | None:
    """The conditional modes of one block as genes × (level, term) (fitted genes in rows, the
    block's levels then terms in columns, as ``block.Z``); a missing or NaN mode is 0 (contributes
    nothing). None when a (gene, level, term) comes twice (never from :func:`fit`): see
    :func:`_pivot_blups`.
    """
    width = len(block.levels) * len(block.terms)
    keep = (rows >= 0) & (cols >= 0)
    # Row-major like the pivot table's to_numpy() was, so that the product runs the same BLAS kernel.
    wide = np.zeros((n_genes, width), dtype=np.float64)
    cells = rows[keep] * width + cols[keep]
    if cells.size and np.bincount(cells, minlength=n_genes * width).max() > 1:
        return None
    wide[rows[keep], cols[keep]] = np.where(np.isnan(value[keep]), 0.0, value[keep])
    return wide


def _pivot_blups(sub: pd.DataFrame, genes: np.ndarray, block) -> np.ndarray:
    """:func:`_wide_blups` through ``pivot_table``: a repeated mode takes its first non-missing value."""
    wanted = pd.MultiIndex.from_product([block.levels, block.terms])
    pivot = sub.pivot_table(index="gene_id", columns=["level", "term"], values="value", aggfunc="first", sort=False)
    return np.ascontiguousarray(pivot.reindex(index=genes, columns=wanted).fillna(0.0).to_numpy())
