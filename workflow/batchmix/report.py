"""The run's self-contained HTML report and its figures.

:func:`build_report` reads the workflow's tables, draws every figure with
matplotlib/seaborn, writes each figure as a PNG into a figures directory (for
``snakemake --report``) and renders one HTML page from the Jinja2 template in
``batchmix/templates/`` with the figures embedded as ``data:`` URIs, the tables
downloadable as TSV ``data:`` links and no network resource, so that the page
opens offline, e.g. from an email.

The statistics and figures are public functions so that they can be used from a
notebook: :func:`pca`, :func:`batch_variance_share`, :func:`silhouette_widths`,
:func:`gene_accounting`, :func:`model_comparison`, :func:`top_batch_genes`,
:func:`shrinkage_estimates`, and the ``plot_*`` functions, each returning a
:class:`matplotlib.figure.Figure`.

Outputs are deterministic: no time stamps, PNGs written without the software tag,
principal components with a fixed sign, tables in a fixed order.
"""

from __future__ import annotations

import base64
import importlib.metadata
import io as _io
import json
import logging
import math
import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import cdist

from batchmix.design import (
    fixed_design,
    formula_columns,
    parse_formula,
    random_design,
    sanitize_name,
)
from batchmix.io import file_md5, read_samples

__all__ = [
    "FITTED_STATUSES",
    "PCAResult",
    "ShrinkageEstimates",
    "FIGURE_CAPTIONS",
    "build_report",
    "load_tables",
    "gene_accounting",
    "pca",
    "batch_variance_share",
    "silhouette_widths",
    "batch_diagnostics",
    "model_comparison",
    "top_batch_genes",
    "fraction_columns",
    "shrinkage_group",
    "condition_column",
    "choose_shrinkage_genes",
    "shrinkage_estimates",
    "uncertainty_intervals",
    "describe_prior",
    "software_versions",
    "plot_pca",
    "plot_batch_share",
    "plot_variance_fractions",
    "plot_top_batch_genes",
    "plot_shrinkage",
    "plot_mean_sd",
    "table_to_tsv",
]

log = logging.getLogger(__name__)

#: Statuses of a gene whose model was fitted (``singular``: a variance on the boundary, still a fit).
FITTED_STATUSES = ("ok", "singular")

# Genes used for PCA: the most variable ones, as DESeq2's plotPCA (ntop = 500).
PCA_TOP_GENES = 500
# Principal components summarised by the batch share of variance and the silhouette width.
DIAGNOSTIC_COMPONENTS = 10
# Rows of a table shown in the page; the TSV download holds up to DOWNLOAD_ROWS rows.
SHOWN_ROWS = 20
DOWNLOAD_ROWS = 10_000
# The reversal table can hold millions of pairs, each with its per-batch correlations: the page
# carries the strongest ones (about 300 bytes each) and points to the full file.
REVERSAL_DOWNLOAD_ROWS = 2_000
# Significance level of the likelihood-ratio test count.
LRT_ALPHA = 0.05
# Percentiles of the batch share of variance at which the shrinkage figure picks its genes.
SHRINKAGE_PERCENTILES = (90.0, 70.0, 50.0, 30.0)
# Two-sided 95 % Wald band of the population fit, as lme4's confint(method = "Wald").
BAND_Z = float(stats.norm.ppf(0.975))
# Relative disagreement tolerated between the recomputed and the reported standard errors
# before the confidence band is left out (it would not be the model's band).
SE_TOLERANCE = 0.02
SOFTWARE = [
    "batchmix", "snakemake", "numpy", "scipy", "pandas", "statsmodels", "matplotlib",
    "seaborn", "formulaic", "jinja2",
]
# The mean-sd plot bins the genes (as vsn's meanSdPlot) from this many on, below it draws points.
HEXBIN_MIN_GENES = 2000
RESIDUAL_COLOUR = "#d9d9d9"  # variancePartition draws the residuals grey85

# Appended to the batch captions when there is a corrected expression.
AFTER_CORRECTION = {
    "pca": (" After removing the batch BLUPs (right) the colours should mix while the shapes, the biology "
            "the model keeps, stay apart."),
    "batch_share": " After correction they should drop, and the silhouette width of the batches fall to 0 or below.",
}

#: What to look for in each figure; keys are figure names (``shrinkage_1`` … share ``shrinkage``).
#: ``workflow/report/figures.rst`` repeats them for ``snakemake --report``.
FIGURE_CAPTIONS = {
    "pca": (
        "Principal components of the {n_genes} most variable genes, each sample coloured by batch "
        "and shaped by {condition}. Samples that cluster by colour rather than by shape show a batch "
        "effect.{after}"
    ),
    "batch_share": (
        "For each of the top principal components, the share of its variance explained by the batch "
        "(R² of a one-way ANOVA of the component's scores on the batch); above each bar, the "
        "component's share of the total variance. Tall bars on the first components mean the batch "
        "drives the main axes of variation.{after}"
    ),
    "variance_fractions": (
        "Share of each gene's variance explained by each model component, across the {n_genes} fitted "
        "genes, drawn as variancePartition's plotVarPart (violins scaled to equal width, a box of the "
        "quartiles inside). A component whose violin sits high explains much of the expression "
        "variation of many genes; a high batch violin is a strong batch effect."
    ),
    "top_batch_genes": (
        "The genes with the largest share of variance explained by the batch, with the split of their "
        "variance into every component (variancePartition's plotPercentBars). Check whether known "
        "biology appears among them: then the batch is confounded with it."
    ),
    "shrinkage": (
        "Shrinkage, as in lme4's sleepstudy figure, for one gene. Open circles: each {group}'s own "
        "estimate, the mean of its samples of each condition (no pooling); filled circles: the LMM's "
        "prediction for it, the population fit plus its BLUP (partial pooling); lines and bands: the "
        "population fit with its 95% Wald confidence band (complete pooling). The BLUP is the {group}'s "
        "average deviation shrunk towards zero, the more so the fewer or noisier its samples, so the "
        "filled circles sit nearer the population lines than the open ones on average; a single "
        "condition can move away when a {group}'s conditions deviate in opposite directions, which a "
        "random intercept does not model."
    ),
    "shrinkage_numeric": (
        "Shrinkage, as in lme4's sleepstudy figure, for one gene: one panel per level of {group}, its "
        "samples, its own OLS line (dashed, no pooling), the LMM's line for it (solid, the population "
        "fit plus its BLUPs: partial pooling) and the population line with its 95% Wald confidence band "
        "(grey, complete pooling). The LMM lines lie between the OLS lines and the population line, "
        "pulled the further the fewer or noisier the samples."
    ),
    "mean_sd": (
        "Standard deviation of each gene that passed the filter, across samples, against the rank of its "
        "mean, before and after variance stabilisation (vsn's meanSdPlot); the red line is the running "
        "median. Before, the sd depends on the mean; after a successful stabilisation the red line is "
        "roughly flat."
    ),
    "bootstrap_band": (
        "Left: the data against {x} with the population fit Xβ̂ (line) and the 95% percentile band of the "
        "population line over the {nsim} parametric-bootstrap refits (lme4's bootMer: new random effects and "
        "residuals simulated from the fit, then the model refitted). Right, one panel per {group}: its own "
        "OLS line (red, dashed: no pooling), the LMM's line for it (blue: the population fit plus its BLUPs, "
        "partial pooling) and the population line (grey). The band is the uncertainty of the population line, "
        "not of single values, so most points lie outside it; a band that fans out towards the ends of {x} "
        "means the slope is less certain than the level. The blue lines should lie between the red lines and "
        "the grey one, pulled furthest for the {group} levels whose own fit is noisiest."
    ),
    "bootstrap_band_levels": (
        "For each level of {group}: the values adjusted for the other fixed effects (grey), the level's own "
        "mean (red, dashed: no pooling) and the LMM's prediction for it, the population intercept plus its "
        "BLUP (blue: partial pooling); the line is the population intercept and the band its 95% percentile "
        "interval over the {nsim} parametric-bootstrap refits (lme4's bootMer). The blue bars should lie "
        "between the red bars and the line, pulled furthest for the levels with the fewest or noisiest samples."
    ),
    "posterior": (
        "Marginal posterior of each parameter, the exact grid posterior of the one-variance-component model "
        "under {prior}: histograms of exact draws, the median (solid line) and the 2.5% and 97.5% quantiles "
        "(dotted), with the mean and the 95% interval above each panel. Compare the intervals with the "
        "bootstrap percentiles in the table below: with enough {group} levels they agree closely. A posterior "
        "of {sd_name} piled up near zero, or with a long right tail, means the data say little about the "
        "{group} variance and the prior shapes the answer."
    ),
}

# The exact grid posterior's priors (batchmix.uncertainty.log_prior_lambda), in words.
PRIOR_DESCRIPTIONS = {
    "unif_icc": "the intraclass correlation ICC = σ_b²/(σ_b² + σ²) uniform on (0, 1)",
    "half_cauchy": "σ_b/σ half-Cauchy(0, {scale:g})",
}
# Why a gene has no posterior, for the statuses of posterior.tsv that are not ok.
POSTERIOR_UNAVAILABLE = {
    "not_available:multiple_components": (
        "the model has more than one variance component, and the exact grid posterior covers only models "
        "with one (a random intercept, or a single random slope)"
    ),
    "not_available:no_random_effect": "the model has no random term, so there is no variance component to integrate over",
}


# --------------------------------------------------------------------------------------------
# Reading


def _read_matrix(path: str | Path) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t", index_col=0, na_values=["NA"], keep_default_na=False)
    table.index = table.index.astype(str)
    table.index.name = "gene_id"
    return table.astype(float)


def _read_tsv(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(
        path, sep="\t", na_values=["NA"], keep_default_na=False,
        dtype={"gene_id": str, "gene_a": str, "gene_b": str, "level": str, "status": str},
    )


def load_tables(inputs: dict[str, str]) -> dict[str, object]:
    """Read the report's inputs (the named inputs of the ``report`` rule).

    Parameters
    ----------
    inputs : dict of str to str
        Keys as in ``report_inputs`` of ``workflow/rules/common.smk``: ``vst_info``,
        ``size_factors``, ``gene_status``, ``mean_sd``, ``vst_expression``, ``gene_fits``,
        ``blups``, ``samples``, ``expression``, and optionally ``corrected``, ``reversals``,
        ``simpson_summary``, ``simpson_figure``, ``uncertainty_summary``, ``uncertainty_bootstrap``,
        ``uncertainty_posterior``, ``uncertainty_figures`` (a directory).

    Returns
    -------
    dict
        The same keys with tables (:class:`pandas.DataFrame`), dicts (JSON) or, for
        ``expression``, ``simpson_figure`` and ``uncertainty_figures``, the path; a missing
        optional input is ``None``.
    """
    tables: dict[str, object] = {
        "vst_info": json.loads(Path(inputs["vst_info"]).read_text()),
        "size_factors": _read_tsv(inputs["size_factors"]),
        "gene_status": _read_tsv(inputs["gene_status"]),
        "mean_sd": _read_tsv(inputs["mean_sd"]),
        "vst_expression": _read_matrix(inputs["vst_expression"]),
        "gene_fits": _read_tsv(inputs["gene_fits"]),
        "blups": _read_tsv(inputs["blups"]),
        "samples": read_samples(inputs["samples"]),
        "expression": inputs["expression"],
        "corrected": _read_matrix(inputs["corrected"]) if inputs.get("corrected") else None,
        "reversals": _read_tsv(inputs["reversals"]) if inputs.get("reversals") else None,
        "simpson_summary": (
            json.loads(Path(inputs["simpson_summary"]).read_text()) if inputs.get("simpson_summary") else None
        ),
        "simpson_figure": inputs.get("simpson_figure") or None,
        "uncertainty_summary": (
            json.loads(Path(inputs["uncertainty_summary"]).read_text()) if inputs.get("uncertainty_summary") else None
        ),
        "uncertainty_bootstrap": (
            _read_tsv(inputs["uncertainty_bootstrap"]) if inputs.get("uncertainty_bootstrap") else None
        ),
        "uncertainty_posterior": (
            _read_tsv(inputs["uncertainty_posterior"]) if inputs.get("uncertainty_posterior") else None
        ),
        "uncertainty_figures": inputs.get("uncertainty_figures") or None,
    }
    return tables


# --------------------------------------------------------------------------------------------
# Statistics


def gene_accounting(gene_fits: pd.DataFrame) -> pd.DataFrame:
    """Count the genes by outcome, so that nothing lost goes unseen.

    Parameters
    ----------
    gene_fits : pandas.DataFrame
        ``results/lmm/gene_fits.tsv``: one row per input gene with a ``status`` of ``ok``,
        ``singular``, ``filtered:<why>`` or ``failed:<why>``.

    Returns
    -------
    pandas.DataFrame
        One row per distinct status: ``outcome`` (``fitted``, ``filtered`` or ``failed``),
        ``status``, ``reason`` (the text after the colon, empty for fitted genes) and
        ``n_genes``; ordered fitted, filtered, failed, then by decreasing count and status.
    """
    status = gene_fits["status"].fillna("failed:no status").astype(str)
    counts = status.value_counts()
    rows = []
    for value, n in counts.items():
        if value in FITTED_STATUSES:
            outcome, reason = "fitted", ""
        else:
            outcome, _, reason = value.partition(":")
            if outcome not in ("filtered", "failed"):
                outcome, reason = "failed", f"unknown status {value!r}"
        rows.append({"outcome": outcome, "status": value, "reason": reason, "n_genes": int(n)})
    table = pd.DataFrame(rows, columns=["outcome", "status", "reason", "n_genes"])
    order = {"fitted": 0, "filtered": 1, "failed": 2}
    table["_order"] = table["outcome"].map(order)
    table = table.sort_values(["_order", "n_genes", "status"], ascending=[True, False, True], kind="mergesort")
    return table.drop(columns="_order").reset_index(drop=True)


@dataclass
class PCAResult:
    """Principal components of samples.

    Attributes
    ----------
    scores : pandas.DataFrame
        Samples × components (``PC1``, ``PC2``, …), the centred data projected on the components.
    variance_ratio : pandas.Series
        Share of the total variance (of the genes used) carried by each component.
    genes : list of str
        The genes used.
    """

    scores: pd.DataFrame
    variance_ratio: pd.Series
    genes: list[str] = field(default_factory=list)


def pca(expression: pd.DataFrame, genes: list[str] | None = None, n_top: int = PCA_TOP_GENES) -> PCAResult:
    """Principal component analysis of the samples, as DESeq2's ``plotPCA``.

    Each gene is centred (not scaled) and the samples are projected on the right singular
    vectors. Each component's sign is fixed so that its largest absolute gene loading is
    positive, which makes the result independent of the SVD implementation.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes × samples on a log-like scale.
    genes : list of str, optional
        Genes to use. Default: the ``n_top`` genes of largest variance among those with no
        missing value (ties broken by input order).
    n_top : int
        Number of most variable genes when ``genes`` is not given.

    Returns
    -------
    PCAResult
    """
    if genes is None:
        complete = expression.dropna(axis=0, how="any")
        variance = complete.var(axis=1, ddof=1)
        order = np.argsort(-variance.to_numpy(), kind="stable")[:n_top]
        genes = list(complete.index[order])
    data = expression.loc[genes].to_numpy(dtype=float)
    if not np.isfinite(data).all():
        raise ValueError("pca: the genes used have missing or infinite values")
    centred = data - data.mean(axis=1, keepdims=True)
    # Samples in rows: the left singular vectors scaled by the singular values are the scores.
    u, s, vt = np.linalg.svd(centred.T, full_matrices=False)
    n_comp = int(np.sum(s > s.max() * 1e-10)) if s.size and s.max() > 0 else 0
    u, s, vt = u[:, :n_comp], s[:n_comp], vt[:n_comp]
    for k in range(n_comp):
        if vt[k, np.argmax(np.abs(vt[k]))] < 0:
            u[:, k] *= -1
            vt[k] *= -1
    names = [f"PC{k + 1}" for k in range(n_comp)]
    scores = pd.DataFrame(u * s, index=expression.columns, columns=names)
    total = float(np.sum(centred**2))
    ratio = pd.Series(s**2 / total if total > 0 else np.zeros(n_comp), index=names)
    return PCAResult(scores=scores, variance_ratio=ratio, genes=list(genes))


def batch_variance_share(scores: pd.DataFrame, batch: pd.Series) -> pd.Series:
    """Share of each component's variance explained by the batch.

    The R² of a one-way ANOVA of the scores on the batch: between-batch sum of squares
    over total sum of squares, per column.

    Parameters
    ----------
    scores : pandas.DataFrame
        Samples × components.
    batch : pandas.Series
        Sample id → batch label (aligned on ``scores.index``).

    Returns
    -------
    pandas.Series
        One value in [0, 1] per component (NaN for a constant component).
    """
    labels = batch.reindex(scores.index).astype(str)
    values = scores.to_numpy(dtype=float)
    centred = values - values.mean(axis=0)
    total = np.sum(centred**2, axis=0)
    group_means = scores.groupby(labels.to_numpy(), sort=True).transform("mean").to_numpy()
    between = np.sum((group_means - values.mean(axis=0)) ** 2, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, between / total, np.nan)
    return pd.Series(share, index=scores.columns, name="batch_r2")


def silhouette_widths(points: np.ndarray, labels: np.ndarray | pd.Series) -> np.ndarray:
    """Silhouette width of every point for the given clusters (Rousseeuw 1987), Euclidean.

    ``s(i) = (b(i) - a(i)) / max(a(i), b(i))`` with ``a(i)`` the mean distance from ``i`` to
    the other members of its cluster and ``b(i)`` the smallest mean distance from ``i`` to
    the members of another cluster. A point alone in its cluster gets 0, as in R's
    ``cluster::silhouette`` and scikit-learn.

    Parameters
    ----------
    points : numpy.ndarray
        ``n × d`` coordinates (e.g. principal component scores).
    labels : array-like
        ``n`` cluster labels (e.g. batches); at least two distinct labels.

    Returns
    -------
    numpy.ndarray
        ``n`` widths in [-1, 1]; their mean is the average silhouette width.
    """
    points = np.asarray(points, dtype=float)
    labels = np.asarray(labels).astype(str)
    if points.ndim != 2 or points.shape[0] != labels.size:
        raise ValueError("silhouette_widths: points must be n x d with one label per row")
    levels, codes = np.unique(labels, return_inverse=True)
    if levels.size < 2:
        raise ValueError("silhouette_widths: needs at least two clusters")
    distance = cdist(points, points)
    n = points.shape[0]
    sizes = np.bincount(codes, minlength=levels.size)
    # Sum of distances from each point to each cluster.
    sums = np.zeros((n, levels.size))
    for k in range(levels.size):
        sums[:, k] = distance[:, codes == k].sum(axis=1)
    own = sizes[codes]
    with np.errstate(invalid="ignore", divide="ignore"):
        a = sums[np.arange(n), codes] / (own - 1)
        mean_other = sums / sizes
    mean_other[np.arange(n), codes] = np.inf
    b = mean_other.min(axis=1)
    denominator = np.maximum(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        width = np.where(denominator > 0, (b - a) / denominator, 0.0)
    width[own == 1] = 0.0
    return width


def batch_diagnostics(
    expression: pd.DataFrame, batch: pd.Series, genes: list[str] | None = None,
    n_components: int = DIAGNOSTIC_COMPONENTS,
) -> dict[str, object]:
    """PCA, batch share of variance of the top components, and batch silhouette width.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes × samples.
    batch : pandas.Series
        Sample id → batch label.
    genes : list of str, optional
        Genes for the PCA (default: the most variable, see :func:`pca`).
    n_components : int
        Number of leading components summarised (fewer if the data have fewer).

    Returns
    -------
    dict
        ``pca`` (:class:`PCAResult`), ``share`` (batch R² per component, top components),
        ``weighted_share`` (the batch share of the variance of the top components: R² weighted
        by each component's variance), ``silhouette`` (the mean silhouette width of the batches
        in the space of the top components) and ``n_components``.
    """
    result = pca(expression, genes=genes)
    k = min(n_components, result.scores.shape[1])
    top = result.scores.iloc[:, :k]
    share = batch_variance_share(top, batch)
    weights = result.variance_ratio.iloc[:k]
    weighted = float(np.nansum(share * weights) / weights.sum()) if weights.sum() > 0 else float("nan")
    labels = batch.reindex(top.index).astype(str).to_numpy()
    silhouette = float(np.mean(silhouette_widths(top.to_numpy(), labels))) if k > 0 else float("nan")
    return {"pca": result, "share": share, "weighted_share": weighted, "silhouette": silhouette, "n_components": k}


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN stay NaN and are not counted)."""
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return q
    order = np.argsort(p[ok], kind="stable")
    ranked = p[ok][order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(ranked, 1.0)
    q[ok] = adjusted
    return q


def model_comparison(gene_fits: pd.DataFrame, alpha: float = LRT_ALPHA) -> pd.DataFrame:
    """How many fitted genes the LMM fits better than OLS, by AIC, BIC and the likelihood-ratio test.

    Parameters
    ----------
    gene_fits : pandas.DataFrame
        With ``status``, ``aic``, ``ols_aic``, ``bic``, ``ols_bic`` and ``lrt_p``.
    alpha : float
        Level for the likelihood-ratio test, raw and after Benjamini-Hochberg over the genes.

    Returns
    -------
    pandas.DataFrame
        One row per criterion (``AIC``, ``BIC``, ``LRT p < alpha``, ``LRT BH q < alpha``) with
        ``lmm_better``, ``ols_better`` (for the LRT: not rejected), ``not_available`` (no value)
        and ``n_genes`` (fitted genes, the sum of the three).
    """
    fitted = gene_fits[gene_fits["status"].isin(FITTED_STATUSES)]
    n = len(fitted)
    rows = []
    for name, lmm_col, ols_col in (("AIC", "aic", "ols_aic"), ("BIC", "bic", "ols_bic")):
        lmm_value = fitted[lmm_col].to_numpy(dtype=float)
        ols_value = fitted[ols_col].to_numpy(dtype=float)
        both = np.isfinite(lmm_value) & np.isfinite(ols_value)
        better = int(np.sum(both & (lmm_value < ols_value)))
        rows.append({"criterion": f"{name} (lower is better)", "lmm_better": better,
                     "ols_better": int(both.sum()) - better, "not_available": n - int(both.sum()), "n_genes": n})
    p = fitted["lrt_p"].to_numpy(dtype=float)
    available = np.isfinite(p)
    for name, values in ((f"LRT p < {alpha:g}", p), (f"LRT BH q < {alpha:g}", _bh(p))):
        better = int(np.sum(available & (values < alpha)))
        rows.append({"criterion": name, "lmm_better": better, "ols_better": int(available.sum()) - better,
                     "not_available": n - int(available.sum()), "n_genes": n})
    return pd.DataFrame(rows, columns=["criterion", "lmm_better", "ols_better", "not_available", "n_genes"])


def fraction_columns(gene_fits: pd.DataFrame) -> list[str]:
    """The variance-fraction columns of a gene-fit table.

    Parameters
    ----------
    gene_fits : pandas.DataFrame
        ``results/lmm/gene_fits.tsv``.

    Returns
    -------
    list of str
        The ``frac_*`` columns in table order, ``frac_residual`` last.
    """
    columns = [c for c in gene_fits.columns if c.startswith("frac_") and c != "frac_residual"]
    if "frac_residual" in gene_fits.columns:
        columns.append("frac_residual")
    return columns


def top_batch_genes(gene_fits: pd.DataFrame, batch: str, n: int = SHOWN_ROWS) -> pd.DataFrame:
    """The fitted genes with the largest share of variance explained by the batch.

    Parameters
    ----------
    gene_fits : pandas.DataFrame
        With ``gene_id``, ``status`` and ``frac_*`` columns.
    batch : str
        The batch column of the sample sheet; its fraction is ``frac_<sanitised batch>``.
    n : int
        Number of genes (all fitted genes with ``n`` ≤ 0).

    Returns
    -------
    pandas.DataFrame
        ``gene_id``, ``status`` and the ``frac_*`` columns, by decreasing batch fraction
        (ties by input order); empty when there is no batch fraction column.
    """
    column = f"frac_{sanitize_name(batch)}"
    fractions = fraction_columns(gene_fits)
    if column not in gene_fits.columns:
        return pd.DataFrame(columns=["gene_id", "status", *fractions])
    fitted = gene_fits[gene_fits["status"].isin(FITTED_STATUSES) & gene_fits[column].notna()]
    ordered = fitted.sort_values(column, ascending=False, kind="mergesort")
    if n > 0:
        ordered = ordered.head(n)
    return ordered[["gene_id", "status", *fractions]].reset_index(drop=True)


def condition_column(model: str, samples: pd.DataFrame) -> str | None:
    """The first fixed-effect factor (non-numeric column) of the model: the PCA's marker shape.

    Parameters
    ----------
    model : str
        lme4-style formula.
    samples : pandas.DataFrame
        Sample sheet as read by :func:`batchmix.io.read_samples` (numeric columns are floats).

    Returns
    -------
    str or None
        The column name, or None when the fixed part has no factor.
    """
    fixed = parse_formula(model).fixed
    if fixed.strip() in ("1", "0", "-1"):
        return None
    for column in formula_columns("~ " + fixed):
        if column in samples.columns and not pd.api.types.is_numeric_dtype(samples[column]):
            return column
    return None


def _first_numeric_column(model: str, samples: pd.DataFrame) -> str | None:
    fixed = parse_formula(model).fixed
    if fixed.strip() in ("1", "0", "-1"):
        return None
    for column in formula_columns("~ " + fixed):
        if column in samples.columns and pd.api.types.is_numeric_dtype(samples[column]):
            return column
    return None


def shrinkage_group(model: str, batch: str) -> str | None:
    """The grouping factor whose BLUPs the shrinkage figure draws.

    Parameters
    ----------
    model : str
        lme4-style formula.
    batch : str
        The config's batch column.

    Returns
    -------
    str or None
        ``batch`` when it groups a random term, else the first grouping factor, else None
        (no random term: nothing is shrunk).
    """
    groups = [term.group for term in parse_formula(model).random]
    if not groups:
        return None
    return batch if batch in groups else groups[0]


def choose_shrinkage_genes(
    gene_fits: pd.DataFrame, requested: list[str], group: str,
    percentiles: tuple[float, ...] = SHRINKAGE_PERCENTILES,
) -> tuple[list[str], list[str]]:
    """Genes for the shrinkage figure.

    With no request, one gene at each percentile of the group's share of variance among the
    genes fitted without singularity: from a gene the group dominates (its BLUPs barely differ
    from the per-group estimates) down to one where the group explains little (strong shrinkage).
    The genes with the very largest share show no visible shrinkage, so they are not the default.

    Parameters
    ----------
    gene_fits : pandas.DataFrame
        With ``gene_id``, ``status`` and ``frac_<group>``.
    requested : list of str
        The config's ``report.genes``; used when not empty.
    group : str
        The grouping factor.
    percentiles : tuple of float
        Percentiles (0-100) of ``frac_<group>`` at which genes are picked when none is requested;
        the gene of rank ``round(p / 100 * (m - 1))`` among ``m`` genes sorted by increasing share
        (ties in input order). A gene picked twice is drawn once.

    Returns
    -------
    chosen : list of str
        Fitted genes to draw, in the requested order or by decreasing percentile.
    skipped : list of str
        Requested genes that are not in the table or were not fitted, with the reason.
    """
    status = gene_fits.set_index("gene_id")["status"]
    if requested:
        chosen, skipped = [], []
        for gene in requested:
            if gene not in status.index:
                skipped.append(f"{gene} (not in the expression table)")
            elif status[gene] not in FITTED_STATUSES:
                skipped.append(f"{gene} ({status[gene]})")
            else:
                chosen.append(gene)
        return chosen, skipped
    column = f"frac_{sanitize_name(group)}"
    if column not in gene_fits.columns:
        return [], []
    candidates = gene_fits[(gene_fits["status"] == "ok") & np.isfinite(gene_fits[column].to_numpy(dtype=float))]
    ordered = candidates.sort_values(column, kind="mergesort")["gene_id"].tolist()
    chosen = []
    for p in percentiles:
        if not ordered:
            break
        gene = ordered[int(round(p / 100 * (len(ordered) - 1)))]
        if gene not in chosen:
            chosen.append(gene)
    return chosen, []


def _random_covariance(row: pd.Series, group: str, terms: list[str]) -> np.ndarray | None:
    """Covariance matrix of one random term's effects for one gene, from its ``var_``/``cor_`` columns.

    Returns None when a needed column is missing.
    """
    g = sanitize_name(group)
    s = len(terms)
    cov = np.zeros((s, s))
    for i, term in enumerate(terms):
        # The names batchmix.lmm writes: var_<group> for a lone intercept, else var_<group>_<term>.
        column = f"var_{g}" if s == 1 and term == "Intercept" else f"var_{g}_{term}"
        value = row[column] if column in row.index and pd.notna(row[column]) else None
        if value is None:
            return None
        cov[i, i] = float(value)
    for i in range(s):
        for j in range(i + 1, s):
            ti, tj = terms[i], terms[j]
            names = [f"cor_{g}_{ti}_{tj}", f"cor_{g}_{tj}_{ti}"]
            value = next((row[c] for c in names if c in row.index and pd.notna(row[c])), None)
            if value is None:
                return None
            cov[i, j] = cov[j, i] = float(value) * math.sqrt(cov[i, i] * cov[j, j])
    return cov


def _fixed_effect_covariance(row: pd.Series, X: np.ndarray, samples: pd.DataFrame, model: str) -> np.ndarray | None:
    """``(X' V⁻¹ X)⁻¹`` with ``V = σ² I + Z G Z'`` from the gene's variance components, or None."""
    if "var_residual" not in row.index or not np.isfinite(row["var_residual"]):
        return None
    design = random_design(model, samples)
    V = float(row["var_residual"]) * np.eye(X.shape[0])
    for block in design.blocks:
        cov = _random_covariance(row, block.group, block.terms)
        if cov is None:
            return None
        G = np.kron(np.eye(block.n_levels), cov)
        V += block.Z @ G @ block.Z.T
    try:
        precision = X.T @ np.linalg.solve(V, X)
        return np.linalg.inv(precision)
    except np.linalg.LinAlgError:
        return None


@dataclass
class ShrinkageEstimates:
    """The numbers behind one gene's shrinkage figure.

    Attributes
    ----------
    gene : str
        The gene.
    kind : str
        ``"categorical"`` (x is a condition factor or absent) or ``"numeric"`` (x is a covariate).
    x : str or None
        The sample-sheet column on the x axis (None: intercept-only fixed part).
    group : str
        The grouping factor.
    observations : pandas.DataFrame
        One row per sample: ``sample``, ``group``, ``x``, ``y``, ``population`` (X β̂),
        ``population_se`` (its standard error, NaN when not available) and ``lmm`` (X β̂ plus
        the group's BLUP contribution).
    cells : pandas.DataFrame
        Categorical only: one row per group × x level with ``n``, ``ols`` (the cell mean, the
        per-group no-pooling estimate), ``lmm`` (mean LMM prediction of the cell) and
        ``population`` and ``population_se`` (mean population fit and its standard error).
    band_note : str
        Why the confidence band is missing, or empty.
    """

    gene: str
    kind: str
    x: str | None
    group: str
    observations: pd.DataFrame
    cells: pd.DataFrame
    band_note: str = ""


def _coefficients(row: pd.Series, names: list[str], prefix: str) -> np.ndarray | None:
    columns = [f"{prefix}{name}" for name in names]
    if not all(c in row.index for c in columns):
        return None
    return row[columns].to_numpy(dtype=float)


def shrinkage_estimates(
    gene: str, expression: pd.DataFrame, samples: pd.DataFrame, gene_fits: pd.DataFrame,
    blups: pd.DataFrame, model: str, group: str,
) -> ShrinkageEstimates:
    """Per-group OLS estimates against the LMM's per-group predictions and the population fit.

    The sleepstudy figure for any model: with a numeric fixed covariate ``x`` (the first
    numeric column of the fixed part, as ``Days``) each group gets its OLS line of ``y`` on
    ``x`` and its LMM line; otherwise each group × condition cell (the first fixed factor)
    gets its mean, which is the OLS estimate of the cell within the group, and its LMM
    prediction. The population fit is ``X β̂`` with its standard error
    ``sqrt(x' (X' V⁻¹ X)⁻¹ x)`` from the gene's variance components, checked against the
    standard errors the model reported.

    Parameters
    ----------
    gene : str
        A fitted gene.
    expression : pandas.DataFrame
        Genes × samples, the scale the model was fitted on.
    samples : pandas.DataFrame
        Sample sheet indexed by sample id.
    gene_fits : pandas.DataFrame
        With ``gene_id``, ``coef_<name>``, ``se_<name>``, ``var_*`` columns.
    blups : pandas.DataFrame
        ``gene_id``, ``group``, ``level``, ``term``, ``value``.
    model : str
        The model formula.
    group : str
        The grouping factor whose BLUPs make the per-group predictions.

    Returns
    -------
    ShrinkageEstimates
    """
    y_all = expression.loc[gene]
    observed = y_all.notna()
    sheet = samples.loc[expression.columns[observed.to_numpy()]]
    y = y_all[observed].to_numpy(dtype=float)
    row = gene_fits.set_index("gene_id").loc[gene]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X, names = fixed_design(model, sheet)
    beta = _coefficients(row, names, "coef_")
    if beta is None or not np.isfinite(beta).all():
        raise ValueError(f"{gene}: gene_fits has no finite coefficients for {names}")
    population = X @ beta

    band_note = ""
    cov = _fixed_effect_covariance(row, X, sheet, model)
    reported = _coefficients(row, names, "se_")
    if cov is None:
        band_note = "the variance components needed for the band are not in gene_fits"
    elif reported is not None and np.all(np.isfinite(reported)):
        recomputed = np.sqrt(np.diag(cov))
        if not np.allclose(recomputed, reported, rtol=SE_TOLERANCE, atol=1e-12):
            band_note = (
                "the standard errors recomputed from the variance components differ from the "
                "reported ones, so no band is drawn"
            )
            cov = None
    population_se = np.sqrt(np.einsum("ij,jk,ik->i", X, cov, X)) if cov is not None else np.full(len(y), np.nan)

    design = random_design(model, sheet)
    gene_blups = blups[(blups["gene_id"] == gene) & (blups["group"] == group)]
    lookup = {(str(r.level), str(r.term)): float(r.value) for r in gene_blups.itertuples(index=False)}
    random_part = np.zeros(len(y))
    blocks = [block for block in design.blocks if block.group == group]
    if not blocks:
        raise ValueError(f"{group} is not a grouping factor of {model}")
    for block in blocks:
        b = np.array([lookup.get((level, term), 0.0) for level in block.levels for term in block.terms])
        random_part += block.Z @ b
    # The group's labels as the BLUP table writes them (numbers without ".0", interactions joined by ":").
    group_labels = _group_labels(sheet, group).to_numpy()

    numeric = _first_numeric_column(model, samples)
    condition = condition_column(model, samples)
    kind = "numeric" if numeric is not None else "categorical"
    x_column = numeric if numeric is not None else condition
    x_values = sheet[x_column].to_numpy() if x_column is not None else np.array([""] * len(y), dtype=object)
    observations = pd.DataFrame({
        "sample": sheet.index, "group": group_labels, "x": x_values, "y": y,
        "population": population, "population_se": population_se, "lmm": population + random_part,
    })
    cells = pd.DataFrame(columns=["group", "x", "n", "ols", "lmm", "population", "population_se"])
    if kind == "categorical":
        observations["x"] = observations["x"].astype(str)
        cells = (
            observations.groupby(["group", "x"], sort=True)
            .agg(n=("y", "size"), ols=("y", "mean"), lmm=("lmm", "mean"), population=("population", "mean"))
            .reset_index()
        )
        # The cell's mean population fit is x̄' β̂ with x̄ the mean design row of the cell.
        se = []
        for cell in cells.itertuples(index=False):
            in_cell = ((observations["group"] == cell.group) & (observations["x"] == cell.x)).to_numpy()
            mean_row = X[in_cell].mean(axis=0)
            se.append(math.sqrt(float(mean_row @ cov @ mean_row)) if cov is not None else float("nan"))
        cells["population_se"] = se
    return ShrinkageEstimates(gene=gene, kind=kind, x=x_column, group=group, observations=observations,
                              cells=cells, band_note=band_note)


def uncertainty_intervals(bootstrap: pd.DataFrame | None, posterior: pd.DataFrame | None,
                          genes: list[str]) -> pd.DataFrame:
    """Bootstrap percentiles and posterior summaries of some genes, side by side.

    Parameters
    ----------
    bootstrap : pandas.DataFrame or None
        ``results/uncertainty/bootstrap.tsv`` (``gene_id, param, status, estimate, q2.5, q50,
        q97.5, boot_mean, boot_sd, …``); None or empty when the bootstrap was not run.
    posterior : pandas.DataFrame or None
        ``results/uncertainty/posterior.tsv`` (``gene_id, param, status, mean, sd, q2.5, q50,
        q97.5``); None or empty when the posterior was not computed.
    genes : list of str
        The genes, in the order of the result.

    Returns
    -------
    pandas.DataFrame
        One row per gene and parameter: ``gene_id``, ``param``, then, when the bootstrap was
        run, ``estimate`` (the REML/ML fit), ``boot_q2.5``, ``boot_q50``, ``boot_q97.5``,
        ``boot_sd``, and when the posterior was computed ``post_mean``, ``post_q2.5``,
        ``post_q50``, ``post_q97.5``, ``post_sd``. Parameters in the bootstrap's order, then
        those only the posterior has; a value a method does not give is NaN (e.g. every
        posterior column of a model with more than one variance component).
    """
    parts = []
    if bootstrap is not None and len(bootstrap):
        boot = bootstrap[bootstrap["gene_id"].isin(genes)][["gene_id", "param", "estimate", "q2.5", "q50", "q97.5",
                                                            "boot_sd"]]
        parts.append(boot.rename(columns={"q2.5": "boot_q2.5", "q50": "boot_q50", "q97.5": "boot_q97.5"}))
    if posterior is not None and len(posterior):
        post = posterior[posterior["gene_id"].isin(genes)][["gene_id", "param", "mean", "q2.5", "q50", "q97.5", "sd"]]
        parts.append(post.rename(columns={"mean": "post_mean", "q2.5": "post_q2.5", "q50": "post_q50",
                                          "q97.5": "post_q97.5", "sd": "post_sd"}))
    if not parts:
        return pd.DataFrame(columns=["gene_id", "param"])
    table = parts[0]
    for part in parts[1:]:
        table = table.merge(part, on=["gene_id", "param"], how="outer", sort=False)
    # Rows in a fixed order whatever the merge did: by the requested genes, then by each gene's
    # parameters as the first table lists them, then the second's.
    order = {}
    for part in parts:
        for gene, param in zip(part["gene_id"], part["param"]):
            order.setdefault((gene, param), len(order))
    table["_gene"] = table["gene_id"].map({g: i for i, g in enumerate(genes)})
    table["_param"] = [order[(g, p)] for g, p in zip(table["gene_id"], table["param"])]
    table = table.sort_values(["_gene", "_param"], kind="mergesort").drop(columns=["_gene", "_param"])
    return table.reset_index(drop=True)


def describe_prior(prior: str, prior_scale: float = 1.0) -> str:
    """The exact grid posterior's priors in words, for the page.

    Parameters
    ----------
    prior : {"unif_icc", "half_cauchy"}
        The prior on the variance ratio λ = σ_b²/σ² (config ``uncertainty: prior``).
    prior_scale : float
        Scale of the half-Cauchy prior on σ_b/σ (config ``uncertainty: prior_scale``).

    Returns
    -------
    str
        E.g. ``"a flat prior on the fixed effects, p(σ²) ∝ 1/σ² and the intraclass correlation
        ICC = σ_b²/(σ_b² + σ²) uniform on (0, 1)"``; an unknown prior is named as given.
    """
    on_ratio = PRIOR_DESCRIPTIONS.get(prior, f"the prior {prior!r} on σ_b²/σ²").format(scale=prior_scale)
    return f"a flat prior on the fixed effects, p(σ²) ∝ 1/σ² and {on_ratio}"


def software_versions() -> dict[str, str]:
    """Versions of Python and the packages the run used, from the installed distributions.

    Returns
    -------
    dict of str to str
        ``python`` and each package of the pinned stack (``"not installed"`` when missing),
        read with :mod:`importlib.metadata`.
    """
    versions = {"python": platform.python_version()}
    for name in SOFTWARE:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# --------------------------------------------------------------------------------------------
# Figures


def _palette(n: int) -> list:
    import seaborn as sns

    return sns.color_palette("tab10" if n <= 10 else "husl", n)


def _markers(n: int) -> list[str]:
    base = ["o", "^", "s", "D", "v", "P", "X", "*", "<", ">"]
    return [base[i % len(base)] for i in range(n)]


def _label(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _group_labels(samples: pd.DataFrame, group: str) -> pd.Series:
    """Labels of a grouping factor (``a:b`` for an interaction), integers printed without ``.0``."""
    columns = group.split(":")
    labels = samples[columns[0]].map(_label)
    for column in columns[1:]:
        labels = labels + ":" + samples[column].map(_label)
    return labels


def _batch_labels(samples: pd.DataFrame, column: str) -> pd.Series:
    """Batch labels as strings, integers printed without ``.0``."""
    return samples[column].map(_label)


def plot_pca(
    panels: dict[str, PCAResult], batch: pd.Series, condition: pd.Series | None = None,
    condition_name: str | None = None,
):
    """PC1 against PC2 for each panel (e.g. before and after correction).

    Parameters
    ----------
    panels : dict of str to PCAResult
        Title → PCA, drawn left to right.
    batch : pandas.Series
        Sample id → batch label (colour).
    condition : pandas.Series, optional
        Sample id → condition label (marker shape).
    condition_name : str, optional
        Legend title of the condition.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    batch_levels = sorted(batch.astype(str).unique(), key=_natural_key)
    colours = dict(zip(batch_levels, _palette(len(batch_levels))))
    cond_levels = sorted(condition.astype(str).unique(), key=_natural_key) if condition is not None else []
    shapes = dict(zip(cond_levels, _markers(len(cond_levels))))
    fig = Figure(figsize=(5.2 * len(panels) + 2.2, 4.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, result) in zip(axes, panels.items()):
        scores = result.scores
        labels = batch.reindex(scores.index).astype(str)
        conds = condition.reindex(scores.index).astype(str) if condition is not None else None
        for sample in scores.index:
            pc2 = scores.loc[sample, "PC2"] if "PC2" in scores.columns else 0.0
            ax.scatter(
                scores.loc[sample, "PC1"], pc2, s=42, color=colours[labels[sample]],
                marker=shapes[conds[sample]] if conds is not None else "o", edgecolors="white", linewidths=0.5,
            )
        ratio = result.variance_ratio
        ax.set_xlabel(f"PC1 ({100 * ratio.iloc[0]:.1f}% of variance)" if len(ratio) else "PC1")
        ax.set_ylabel(f"PC2 ({100 * ratio.iloc[1]:.1f}% of variance)" if len(ratio) > 1 else "PC2")
        ax.set_title(title)
        ax.grid(True, color="0.92", linewidth=0.6)
        ax.set_axisbelow(True)
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[b], label=b) for b in batch_levels]
    legend = axes[-1].legend(handles=handles, title="batch", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                             frameon=False, fontsize=8, title_fontsize=9)
    if cond_levels:
        axes[-1].add_artist(legend)
        cond_handles = [Line2D([], [], marker=shapes[c], linestyle="", color="0.3", label=c) for c in cond_levels]
        axes[-1].legend(handles=cond_handles, title=condition_name or "condition", loc="lower left",
                        bbox_to_anchor=(1.02, 0.0), frameon=False, fontsize=8, title_fontsize=9)
    return fig


def plot_batch_share(diagnostics: dict[str, dict]):
    """Batch R² of each top principal component, one bar per panel (before/after).

    Parameters
    ----------
    diagnostics : dict of str to dict
        Title → the output of :func:`batch_diagnostics`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    n_panels = len(diagnostics)
    width = 0.8 / n_panels
    colours = ["#4c72b0", "#dd8452", "#55a868"]
    k_max = max(d["n_components"] for d in diagnostics.values())
    for i, (title, d) in enumerate(diagnostics.items()):
        share = d["share"].to_numpy()
        ratio = d["pca"].variance_ratio.iloc[: len(share)].to_numpy()
        positions = np.arange(len(share)) + (i - (n_panels - 1) / 2) * width
        bars = ax.bar(positions, share, width=width * 0.95, color=colours[i % len(colours)],
                      label=f"{title}: silhouette {d['silhouette']:+.2f}, batch share {100 * d['weighted_share']:.0f}%")
        for bar, r in zip(bars, ratio):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, f"{100 * r:.0f}%",
                    ha="center", va="bottom", fontsize=6.5, color="0.3")
    ax.set_xticks(np.arange(k_max), [f"PC{k + 1}" for k in range(k_max)])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("variance explained by batch (R²)")
    ax.legend(frameon=False, fontsize=8, loc="upper right")
    ax.grid(True, axis="y", color="0.92", linewidth=0.6)
    ax.set_axisbelow(True)
    return fig


def _component_label(column: str) -> str:
    name = column.removeprefix("frac_")
    return "Residuals" if name == "residual" else name


def _component_order(gene_fits: pd.DataFrame) -> list[str]:
    """Fraction columns by decreasing median across fitted genes, residual last (variancePartition's sortCols)."""
    fitted = gene_fits[gene_fits["status"].isin(FITTED_STATUSES)]
    columns = [c for c in fraction_columns(gene_fits) if c != "frac_residual"]
    medians = [float(np.nanmedian(fitted[c].to_numpy(dtype=float))) if fitted[c].notna().any() else -1.0 for c in columns]
    order = [columns[i] for i in np.argsort(-np.asarray(medians), kind="stable")]
    return order + (["frac_residual"] if "frac_residual" in gene_fits.columns else [])


def _component_colours(columns: list[str]) -> dict[str, object]:
    import seaborn as sns

    others = [c for c in columns if c != "frac_residual"]
    colours = dict(zip(others, sns.color_palette("husl", max(len(others), 1))))
    colours["frac_residual"] = RESIDUAL_COLOUR
    return colours


def plot_variance_fractions(gene_fits: pd.DataFrame):
    """Violin plot of the variance fractions per component across fitted genes (variancePartition's plotVarPart).

    Parameters
    ----------
    gene_fits : pandas.DataFrame
        With ``status`` and ``frac_*`` columns (fractions in [0, 1]).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import seaborn as sns
    from matplotlib.figure import Figure

    order = _component_order(gene_fits)
    fitted = gene_fits[gene_fits["status"].isin(FITTED_STATUSES)]
    long = fitted[order].melt(var_name="column", value_name="fraction").dropna()
    long["percent"] = 100 * long["fraction"]
    long["component"] = long["column"].map(_component_label)
    labels = [_component_label(c) for c in order]
    colours = _component_colours(order)
    palette = {_component_label(c): colours[c] for c in order}
    fig = Figure(figsize=(1.3 * len(order) + 2.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    sns.violinplot(data=long, x="component", y="percent", hue="component", order=labels, hue_order=labels,
                   palette=palette, density_norm="width", cut=0, inner=None, linewidth=0.8, legend=False, ax=ax)
    boxes = [long.loc[long["component"] == label, "percent"].to_numpy() for label in labels]
    ax.boxplot(boxes, positions=range(len(labels)), widths=0.07, patch_artist=True, manage_ticks=False,
               boxprops={"facecolor": "0.55", "linewidth": 0.8}, medianprops={"color": "white", "linewidth": 1.0},
               whiskerprops={"linewidth": 0.8}, capprops={"linewidth": 0}, flierprops={"markersize": 1.5})
    ax.set_ylim(-2, 102)
    ax.set_xlabel("")
    ax.set_ylabel("Variance explained (%)")
    ax.grid(True, axis="y", color="0.92", linewidth=0.6)
    ax.set_axisbelow(True)
    return fig


def plot_top_batch_genes(top: pd.DataFrame, gene_fits: pd.DataFrame):
    """Stacked bars of every component's share for the most batch-driven genes (plotPercentBars).

    Parameters
    ----------
    top : pandas.DataFrame
        From :func:`top_batch_genes`.
    gene_fits : pandas.DataFrame
        For the order and colours of the components.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    order = _component_order(gene_fits)
    colours = _component_colours(order)
    fig = Figure(figsize=(8.0, 0.26 * len(top) + 1.3), layout="constrained")
    ax = fig.add_subplot()
    genes = top["gene_id"].astype(str).tolist()[::-1]
    left = np.zeros(len(genes))
    for column in order:
        values = 100 * top[column].to_numpy(dtype=float)[::-1]
        values = np.nan_to_num(values)
        ax.barh(genes, values, left=left, color=colours[column], label=_component_label(column), height=0.8)
        left += values
    ax.set_xlim(0, 100)
    ax.set_xlabel("Variance explained (%)")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    return fig


def plot_shrinkage(estimates: ShrinkageEstimates):
    """One gene's shrinkage figure (see :func:`shrinkage_estimates`).

    Categorical: groups along the x axis, one colour per condition; open circles the
    per-group OLS estimates, filled circles the LMM predictions, an arrow from one to the
    other, horizontal lines and bands the population fit ± 95 % Wald interval, small grey
    dots the samples. Numeric: one panel per group, points, the group's OLS line (dashed),
    the LMM line (solid) and the population line with its band (grey).

    Parameters
    ----------
    estimates : ShrinkageEstimates

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    obs = estimates.observations
    groups = sorted(obs["group"].unique(), key=_natural_key)
    if estimates.kind == "numeric":
        n_cols = min(6, len(groups))
        n_rows = math.ceil(len(groups) / n_cols)
        fig = Figure(figsize=(2.1 * n_cols + 0.5, 2.0 * n_rows + 0.9), layout="constrained")
        axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True, sharey=True)
        order = np.argsort(obs["x"].to_numpy(dtype=float), kind="stable")
        ordered = obs.iloc[order]
        for ax, group in zip(axes.flat, groups):
            part = ordered[ordered["group"] == group]
            x = part["x"].to_numpy(dtype=float)
            pop = ordered.drop_duplicates("x")
            px = pop["x"].to_numpy(dtype=float)
            if np.isfinite(pop["population_se"]).all():
                ax.fill_between(px, pop["population"] - BAND_Z * pop["population_se"],
                                pop["population"] + BAND_Z * pop["population_se"], color="0.85", linewidth=0)
            ax.plot(px, pop["population"], color="0.45", linewidth=1.2)
            ax.scatter(x, part["y"], s=10, color="#4c72b0", zorder=3)
            if x.size >= 2 and np.ptp(x) > 0:
                slope, intercept = np.polyfit(x, part["y"].to_numpy(dtype=float), 1)
                # Drawn over the LMM line: where the two coincide (little shrinkage) both stay visible.
                ax.plot(x, intercept + slope * x, color="#dd8452", linestyle="--", linewidth=1.4, zorder=5)
            ax.plot(x, part["lmm"], color="#c44e52", linewidth=1.6, zorder=4)
            ax.set_title(str(group), fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(groups):]:
            ax.axis("off")
        handles = [
            Line2D([], [], color="#dd8452", linestyle="--", label=f"per-{estimates.group} OLS (no pooling)"),
            Line2D([], [], color="#c44e52", label="LMM prediction (partial pooling)"),
            Line2D([], [], color="0.45", label="population fit (complete pooling)"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False, fontsize=8)
        for ax in axes[-1]:
            ax.set_xlabel(str(estimates.x), fontsize=8)
        fig.supylabel(f"{estimates.gene} (stabilised)", fontsize=9)
        fig.suptitle(f"{estimates.gene}: per-{estimates.group} OLS against LMM predictions", fontsize=10)
        return fig

    cells = estimates.cells
    levels = sorted(cells["x"].unique(), key=_natural_key)
    colours = dict(zip(levels, _palette(len(levels))))
    position = {g: i for i, g in enumerate(groups)}
    n_cols = min(3, len(levels))
    n_rows = math.ceil(len(levels) / n_cols)
    width = max(3.2, 0.42 * len(groups) + 1.2)
    fig = Figure(figsize=(width * n_cols + 0.3, 3.1 * n_rows + 0.9), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey=True)
    jitter = np.random.default_rng(0)
    for ax, level in zip(axes.flat, levels):
        colour = colours[level]
        in_level = obs[obs["x"] == level]
        xs = in_level["group"].map(position).to_numpy(dtype=float)
        ax.scatter(xs + jitter.uniform(-0.12, 0.12, len(xs)), in_level["y"], s=7, color="0.6", zorder=2,
                   linewidths=0)
        level_cells = cells[cells["x"] == level]
        population = level_cells["population"].to_numpy(dtype=float)
        population_se = level_cells["population_se"].to_numpy(dtype=float)
        # One population line across the panel when the fit is the same in every group (the
        # condition is the only fixed effect); otherwise a segment per cell.
        constant = np.ptp(population) <= 1e-9 * max(1.0, np.abs(population).max()) and (
            np.all(np.isnan(population_se)) or np.ptp(population_se) <= 1e-9 * max(1.0, np.nanmax(population_se)))
        spans = ([(-0.6, len(groups) - 0.4, population[0], population_se[0])] if constant else
                 [(position[g] - 0.5, position[g] + 0.5, p, se)
                  for g, p, se in zip(level_cells["group"], population, population_se)])
        for left, right, value, se in spans:
            ax.hlines(value, left, right, color=colour, linewidth=1.1, zorder=1)
            if np.isfinite(se):
                ax.fill_between([left, right], value - BAND_Z * se, value + BAND_Z * se, color=colour,
                                alpha=0.16, linewidth=0, zorder=0)
        for cell in level_cells.itertuples(index=False):
            x = position[cell.group]
            ax.scatter([x], [cell.ols], s=44, facecolors="white", edgecolors=[colour], linewidths=1.4, zorder=4)
            ax.scatter([x], [cell.lmm], s=30, color=colour, zorder=5)
            if abs(cell.lmm - cell.ols) > 1e-12:
                ax.annotate("", xy=(x, cell.lmm), xytext=(x, cell.ols),
                            arrowprops={"arrowstyle": "->", "color": colour, "linewidth": 0.9,
                                        "shrinkA": 3, "shrinkB": 3}, zorder=4)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_xticks(range(len(groups)), [str(g) for g in groups], rotation=45 if len(groups) > 4 else 0,
                      ha="right" if len(groups) > 4 else "center", fontsize=7.5)
        ax.set_title(f"{estimates.x} = {level}" if estimates.x is not None else "all samples", fontsize=9)
        ax.grid(True, axis="y", color="0.92", linewidth=0.6)
        ax.set_axisbelow(True)
    for ax in list(axes.flat)[len(levels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{estimates.gene} (stabilised)", fontsize=9)
    handles = [
        Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="0.3",
               label=f"{estimates.group}'s own estimate (cell mean: no pooling)"),
        Line2D([], [], marker="o", linestyle="", color="0.3", label="LMM prediction (partial pooling)"),
        Patch(color="0.75", label="population fit ± 95% CI (complete pooling)"),
        Line2D([], [], marker="o", linestyle="", color="0.6", markersize=3, label="samples"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False, fontsize=8)
    fig.suptitle(f"{estimates.gene}: per-{estimates.group} estimates shrunk towards the population fit", fontsize=10)
    return fig


def _natural_key(value) -> tuple:
    """Sort key that orders Series2 before Series10."""
    import re

    parts = re.split(r"(\d+)", str(value))
    return tuple(int(p) if p.isdigit() else p for p in parts)


def plot_mean_sd(mean_sd: pd.DataFrame, before_label: str = "before", after_label: str = "after"):
    """Standard deviation against the rank of the mean, before and after stabilisation (vsn's meanSdPlot).

    Parameters
    ----------
    mean_sd : pandas.DataFrame
        ``rank_of_mean``, ``sd``, ``running_median_sd`` and ``scale`` (``before``/``after``).
    before_label, after_label : str
        Panel titles.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 3.9), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, scale, title in zip(axes, ("before", "after"), (before_label, after_label)):
        part = mean_sd[mean_sd["scale"] == scale].sort_values("rank_of_mean", kind="mergesort")
        if part.empty:
            ax.axis("off")
            ax.text(0.5, 0.5, f"no {scale} values", ha="center", va="center")
            continue
        if len(part) >= HEXBIN_MIN_GENES:
            ax.hexbin(part["rank_of_mean"], part["sd"], gridsize=60, cmap="Blues", mincnt=1, linewidths=0.2)
        else:
            ax.scatter(part["rank_of_mean"], part["sd"], s=7, color="#4c72b0", alpha=0.7, linewidths=0)
        ax.plot(part["rank_of_mean"], part["running_median_sd"], color="#c44e52", linewidth=1.6)
        ax.set_xlabel("rank of mean")
        ax.set_ylabel("standard deviation")
        ax.set_title(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# HTML


def _png_bytes(fig) -> bytes:
    buffer = _io.BytesIO()
    # No "Software" tag: the same figure gives the same bytes.
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def table_to_tsv(table: pd.DataFrame) -> str:
    """A table as tab-separated text, as the page's download links carry it.

    Parameters
    ----------
    table : pandas.DataFrame
        Written without its index.

    Returns
    -------
    str
        Tab-separated, ``\n`` line ends, floats with 6 significant digits, missing values ``NA``.
    """
    return table.to_csv(sep="\t", index=False, lineterminator="\n", float_format="%.6g", na_rep="NA")


def _format_cell(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "NA"
    if isinstance(value, (float, np.floating)):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


def _table(table: pd.DataFrame, name: str, caption: str, shown: int | None = SHOWN_ROWS,
           download_rows: int = DOWNLOAD_ROWS, sortable: bool = False, full_path: str | None = None,
           hidden_columns: tuple[str, ...] = ()) -> dict:
    """A table for the template: header, formatted rows (without ``hidden_columns``), and a TSV download of all columns."""
    download = table.head(download_rows)
    note = ""
    if len(table) > download_rows:
        note = f"The download holds the first {download_rows:,} of {len(table):,} rows"
        note += f"; the full table is {full_path}." if full_path else "."
    rows = table if shown is None else table.head(shown)
    rows = rows.drop(columns=[c for c in hidden_columns if c in rows.columns])
    return {
        "name": name,
        "caption": caption,
        "columns": list(rows.columns),
        "rows": [[_format_cell(v) for v in r] for r in rows.itertuples(index=False)],
        "sort_values": [[("" if isinstance(v, str) else _format_cell(v)) for v in r] for r in rows.itertuples(index=False)],
        "n_rows": len(table),
        "n_shown": len(rows),
        "download": _data_uri(table_to_tsv(download).encode(), "text/tab-separated-values"),
        "filename": f"{name}.tsv",
        "note": note,
        "sortable": sortable,
    }


class _Figures:
    """Collects the report's figures: writes each PNG and keeps its data URI for the page."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, fig, caption: str, alt: str) -> dict:
        return self.add_png(name, _png_bytes(fig), caption, alt)

    def add_png(self, name: str, data: bytes, caption: str, alt: str) -> dict:
        """A figure drawn by another stage: its bytes copied unchanged, so that snakemake --report carries it."""
        (self.directory / f"{name}.png").write_bytes(data)
        return {"name": name, "src": _data_uri(data, "image/png"), "caption": caption, "alt": alt}


def _run_section(config: dict, tables: dict, inputs: dict[str, str]) -> dict:
    import yaml

    gene_fits = tables["gene_fits"]
    accounting = gene_accounting(gene_fits)
    totals = accounting.groupby("outcome")["n_genes"].sum()
    n_in = int(tables["vst_info"].get("n_genes", len(gene_fits)))
    n_rows = len(gene_fits)
    counts = {
        "in": n_in,
        "fitted": int(totals.get("fitted", 0)),
        "singular": int(accounting.loc[accounting["status"] == "singular", "n_genes"].sum()),
        "filtered": int(totals.get("filtered", 0)),
        "failed": int(totals.get("failed", 0)),
    }
    accounted = counts["fitted"] + counts["filtered"] + counts["failed"]
    files = []
    for role, key in (("expression table", "expression"), ("sample sheet", "samples")):
        path = Path(inputs[key])
        files.append({"role": role, "path": str(inputs[key]), "bytes": f"{path.stat().st_size:,}", "md5": file_md5(path)})
    parsed = parse_formula(config["model"])
    not_fitted = gene_fits.loc[~gene_fits["status"].isin(FITTED_STATUSES), ["gene_id", "status"]]
    plain_config = json.loads(json.dumps(config, default=str))
    return {
        "moderation": _moderation_note(gene_fits),
        "counts": counts,
        "n_rows": n_rows,
        "all_accounted": accounted == n_in == n_rows,
        "accounting": _table(accounting, "gene_accounting", "Genes by outcome", shown=None),
        "not_fitted": _table(not_fitted, "genes_not_fitted", "Genes not fitted, with the reason", shown=0,
                             full_path="results/lmm/gene_fits.tsv") if len(not_fitted) else None,
        "files": files,
        "config_yaml": yaml.safe_dump(plain_config, sort_keys=False, default_flow_style=False),
        "model": config["model"],
        "fixed": parsed.fixed,
        "random": [f"({t.expr} | {t.group})" for t in parsed.random],
        "method": "REML" if config.get("reml", True) else "ML",
        "versions": software_versions(),
        "notes": list(tables["vst_info"].get("notes", []) or []),
    }


def _moderation_note(gene_fits: pd.DataFrame) -> str:
    """The empirical-Bayes prior of the residual variances (limma's d0 and s0), or empty when not moderated."""
    if "d0" not in gene_fits.columns or "s0" not in gene_fits.columns:
        return ""
    fitted = gene_fits[gene_fits["status"].isin(FITTED_STATUSES)]
    d0 = fitted["d0"].to_numpy(dtype=float)
    s0 = fitted["s0"].to_numpy(dtype=float)
    d0, s0 = d0[~np.isnan(d0)], s0[np.isfinite(s0)]
    if d0.size == 0:
        return ""
    prior = f"prior degrees of freedom d0 = {d0[0]:.3g}" if np.ptp(d0) == 0 else f"median prior degrees of freedom d0 = {np.median(d0):.3g}"
    if s0.size:
        prior += f", prior sd s0 = {s0[0]:.3g}" if np.ptp(s0) == 0 else f", prior sd s0 from {s0.min():.3g} to {s0.max():.3g} (trend)"
    return f"limma-style empirical Bayes ({prior}): columns se_mod_*, t_mod_*, p_mod_* of gene_fits.tsv"


def _batch_section(config: dict, tables: dict, figures: _Figures) -> dict:
    samples = tables["samples"]
    expression = tables["vst_expression"]
    samples = samples.loc[expression.columns]
    batch = _batch_labels(samples, config["batch"])
    condition_name = condition_column(config["model"], samples)
    condition = samples[condition_name].astype(str) if condition_name else None
    status = tables["gene_status"].set_index("gene_id")["status"]
    usable = expression.loc[status.reindex(expression.index).eq("ok").to_numpy()].dropna(how="any")
    corrected = tables["corrected"]
    if corrected is not None:
        corrected = corrected.reindex(columns=expression.columns)
        usable = usable.loc[usable.index.isin(corrected.dropna(how="any").index)]
    section = {"has_corrected": corrected is not None, "condition": condition_name, "figures": [], "note": "",
               "metrics": None, "share_table": None}
    if usable.shape[0] < 2 or usable.shape[1] < 3:
        section["note"] = "Too few genes or samples for a PCA."
        return section
    genes = pca(usable).genes
    before = "before correction" if corrected is not None else "stabilised expression"
    diagnostics = {before: batch_diagnostics(usable, batch, genes=genes)}
    if corrected is not None:
        diagnostics["after correction"] = batch_diagnostics(corrected.loc[usable.index], batch, genes=genes)
    n_genes = len(genes)
    after = AFTER_CORRECTION if corrected is not None else {"pca": "", "batch_share": ""}
    caption = FIGURE_CAPTIONS["pca"].format(n_genes=n_genes, condition=condition_name or "(no fixed factor)",
                                            after=after["pca"])
    fig = plot_pca({k: d["pca"] for k, d in diagnostics.items()}, batch, condition, condition_name)
    section["figures"].append(figures.add("pca", fig, caption, "PCA of the samples coloured by batch"))
    fig = plot_batch_share(diagnostics)
    section["figures"].append(figures.add("batch_share", fig, FIGURE_CAPTIONS["batch_share"].format(after=after["batch_share"]),
                                          "Batch R² of the top principal components"))
    metrics = pd.DataFrame({
        "metric": [
            f"batch share of the variance of the top {min(d['n_components'] for d in diagnostics.values())} PCs",
            "mean silhouette width of the batches (top PCs)",
            "batch R² of PC1",
        ],
        **{
            title: [d["weighted_share"], d["silhouette"], float(d["share"].iloc[0]) if len(d["share"]) else np.nan]
            for title, d in diagnostics.items()
        },
    })
    section["metrics"] = _table(metrics.round(3), "batch_metrics", "Batch diagnostics", shown=None)
    share = pd.concat(
        {title: pd.DataFrame({"variance_ratio": d["pca"].variance_ratio.iloc[: d["n_components"]], "batch_r2": d["share"]})
         for title, d in diagnostics.items()}, names=["data", "component"],
    ).reset_index()
    section["share_table"] = _table(share, "batch_share_by_component", "Batch R² by principal component", shown=0)
    section["n_genes"] = n_genes
    section["batch_name"] = config["batch"]
    section["n_batches"] = int(batch.nunique())
    return section


def _lmm_section(config: dict, tables: dict, figures: _Figures) -> dict:
    gene_fits = tables["gene_fits"]
    parsed = parse_formula(config["model"])
    fitted = gene_fits[gene_fits["status"].isin(FITTED_STATUSES)]
    section: dict = {"has_random": bool(parsed.random), "figures": [], "n_fitted": len(fitted), "top_genes": None,
                     "comparison": None, "lmm_better_aic": 0}
    if fraction_columns(gene_fits) and len(fitted):
        fig = plot_variance_fractions(gene_fits)
        caption = FIGURE_CAPTIONS["variance_fractions"].format(n_genes=f"{len(fitted):,}")
        section["figures"].append(figures.add("variance_fractions", fig, caption, "Violin plot of variance fractions"))
    top = top_batch_genes(gene_fits, config["batch"], n=0)
    if len(top):
        fig = plot_top_batch_genes(top.head(SHOWN_ROWS), gene_fits)
        section["figures"].append(figures.add("top_batch_genes", fig, FIGURE_CAPTIONS["top_batch_genes"],
                                              "Variance split of the most batch-driven genes"))
        section["top_genes"] = _table(
            top, "top_batch_genes",
            f"Fitted genes by decreasing share of variance explained by {config['batch']}",
            download_rows=1000, full_path="results/lmm/gene_fits.tsv", sortable=True,
        )
    if parsed.random and len(fitted):
        comparison = model_comparison(gene_fits)
        section["comparison"] = _table(comparison, "lmm_vs_ols", "LMM against OLS (the same fixed effects, no random term)",
                                       shown=None)
        section["lmm_better_aic"] = int(comparison.loc[0, "lmm_better"])
    return section


def _shrinkage_section(config: dict, tables: dict, figures: _Figures) -> dict:
    group = shrinkage_group(config["model"], config["batch"])
    section: dict = {"group": group, "figures": [], "skipped": [], "note": "", "requested": False}
    if group is None:
        section["note"] = "The model has no random term, so nothing is shrunk: every batch estimate is its own OLS fit."
        return section
    requested = list(config.get("report", {}).get("genes", []) or [])
    chosen, skipped = choose_shrinkage_genes(tables["gene_fits"], requested, group)
    section["skipped"] = skipped
    section["requested"] = bool(requested)
    for i, gene in enumerate(chosen, start=1):
        try:
            estimates = shrinkage_estimates(gene, tables["vst_expression"], tables["samples"], tables["gene_fits"],
                                            tables["blups"], config["model"], group)
        except (ValueError, KeyError) as err:
            section["skipped"].append(f"{gene} ({err})")
            continue
        key = "shrinkage_numeric" if estimates.kind == "numeric" else "shrinkage"
        caption = FIGURE_CAPTIONS[key].format(group=group)
        if estimates.band_note:
            caption += f" No band: {estimates.band_note}."
        fig = plot_shrinkage(estimates)
        share = _share_note(tables["gene_fits"], gene, group)
        section["figures"].append(figures.add(f"shrinkage_{i}", fig, f"{gene}{share}. {caption}",
                                              f"Shrinkage figure of {gene}"))
    if not chosen and not section["skipped"]:
        section["note"] = f"No gene was fitted without singularity with a {group} share of variance to choose from."
    return section


def _share_note(gene_fits: pd.DataFrame, gene: str, group: str) -> str:
    """``" (Batch: 62% of its variance, 70th percentile of the fitted genes)"``, or empty."""
    column = f"frac_{sanitize_name(group)}"
    if column not in gene_fits.columns:
        return ""
    fitted = gene_fits[gene_fits["status"].isin(FITTED_STATUSES)][column].to_numpy(dtype=float)
    fitted = fitted[np.isfinite(fitted)]
    value = float(gene_fits.loc[gene_fits["gene_id"] == gene, column].iloc[0])
    if not np.isfinite(value) or fitted.size == 0:
        return ""
    percentile = 100 * float(np.mean(fitted <= value))
    return f" ({group}: {100 * value:.0f}% of its variance; {percentile:.0f}th percentile of the fitted genes)"


def _vst_section(config: dict, tables: dict, figures: _Figures) -> dict:
    info = tables["vst_info"]
    rows = [
        ("input type", info.get("input_type", config.get("input_type"))),
        ("dispersion trend used", info.get("vst_fit_type_used", "")),
        ("dispersion trend requested", info.get("vst_fit_type_requested", "")),
        ("blind to the design", info.get("vst_blind", "")),
        ("genes for the trend (nsub)", info.get("vst_nsub", "")),
        ("size factors", info.get("size_factor_method", "")),
        ("scale before", info.get("before_scale", "")),
        ("genes / samples", f"{info.get('n_genes', '')} / {info.get('n_samples', '')}"),
    ]
    settings = [(k, "" if v is None else str(v)) for k, v in rows if v not in ("", None)]
    section: dict = {"settings": settings, "figures": [], "size_factors": None, "size_factor_range": ""}
    mean_sd = tables["mean_sd"]
    if len(mean_sd):
        after = (f"after: VST, {info['vst_fit_type_used']} dispersion trend" if info.get("vst_fit_type_requested")
                 else "after: input used as given")
        fig = plot_mean_sd(mean_sd, f"before: {info.get('before_scale', 'input')}", after)
        section["figures"].append(figures.add("mean_sd", fig, FIGURE_CAPTIONS["mean_sd"], "Mean-sd plot before and after"))
    size_factors = tables["size_factors"]
    if size_factors["size_factor"].notna().any():
        section["size_factors"] = _table(size_factors, "size_factors", "Size factors", shown=0)
        values = size_factors["size_factor"].to_numpy(dtype=float)
        section["size_factor_range"] = f"{np.nanmin(values):.3g} to {np.nanmax(values):.3g} (median {np.nanmedian(values):.3g})"
    return section


def _simpson_section(config: dict, tables: dict) -> dict:
    scfg = config.get("simpson", {})
    section: dict = {"enabled": bool(scfg.get("enabled", False)) and tables["reversals"] is not None,
                     "figure": None, "table": None, "permutation": None, "adjust_for": []}
    if not section["enabled"]:
        return section
    summary = tables["simpson_summary"] or {}
    reversals = tables["reversals"]
    section.update({
        "n_reversals": int(summary.get("n_reversals", len(reversals))),
        "n_pairs": int(summary.get("n_pairs", 0)),
        "n_genes": int(summary.get("n_genes_scanned", 0)),
        "fdr": summary.get("fdr", scfg.get("fdr")),
        "method": {"bh": "Benjamini-Hochberg", "by": "Benjamini-Yekutieli"}.get(summary.get("method"), summary.get("method")),
        "adjust_for": summary.get("adjust_for") or [],
        "permutation": summary.get("permutation_check"),
    })
    if len(reversals):
        # The page leaves out the per-batch correlations (one long string per pair); the download keeps them.
        section["table"] = _table(reversals, "simpson_reversals", "Gene pairs whose correlation reverses within batches",
                                  shown=100, download_rows=REVERSAL_DOWNLOAD_ROWS,
                                  full_path="results/simpson/reversals.tsv", sortable=True,
                                  hidden_columns=("per_batch_r",))
        figure_path = tables["simpson_figure"]
        if figure_path and Path(figure_path).exists():
            section["figure"] = {
                "name": "simpson_top_pairs",
                "src": _data_uri(Path(figure_path).read_bytes(), "image/png"),
                "alt": "Pooled against per-batch scatter of the strongest reversals",
                "caption": (
                    f"The {min(len(reversals), int(config.get('report', {}).get('top_pairs', 4)))} strongest reversals. "
                    "Left: all samples pooled with one regression line; right: the same samples coloured by batch "
                    "with one line per batch. A reversal is a pair whose lines slope one way pooled and the other "
                    "way inside the batches: the pooled correlation is made by differences between batches."
                ),
            }
    return section


def _uncertainty_section(config: dict, tables: dict, figures: _Figures) -> dict:
    """The bootstrap and posterior of the figure genes; ``enabled`` is False without the stage's outputs."""
    summary = tables["uncertainty_summary"]
    section: dict = {"enabled": summary is not None}
    if summary is None:
        return section
    model = summary.get("formula", config["model"])
    parsed = parse_formula(model)
    group = parsed.random[0].group if parsed.random else config["batch"]
    boot_settings = summary.get("bootstrap", {}) or {}
    post_settings = summary.get("posterior", {}) or {}
    nsim = int(boot_settings.get("nsim", 0) or 0)
    bootstrap = tables["uncertainty_bootstrap"] if nsim > 0 else None
    posterior = tables["uncertainty_posterior"] if post_settings.get("enabled") else None
    section.update({"formula": model, "group": group, "bootstrap": None, "posterior": None, "genes": [],
                    "intervals": None})
    if bootstrap is not None:
        section["bootstrap"] = {
            "nsim": nsim, "seed": boot_settings.get("seed"), "n_genes": int(boot_settings.get("n_genes", 0)),
            "n_singular": int(boot_settings.get("n_singular", 0)), "n_fail": int(boot_settings.get("n_fail", 0)),
        }
    if posterior is not None:
        counts = post_settings.get("status_counts", {}) or {}
        section["posterior"] = {
            "prior": post_settings.get("prior", "unif_icc"),
            "prior_text": describe_prior(post_settings.get("prior", "unif_icc"),
                                         float(post_settings.get("prior_scale", 1.0))),
            "n_ok": int(counts.get("ok", 0)),
            "unavailable": [{"status": status, "reason": reason, "n_genes": int(counts[status])}
                            for status, reason in POSTERIOR_UNAVAILABLE.items() if counts.get(status)],
        }
    samples = tables["samples"]
    numeric = _first_numeric_column(model, samples)
    figure_dir = Path(tables["uncertainty_figures"]) if tables["uncertainty_figures"] else None
    genes = list((summary.get("figures") or {}).keys())
    for i, gene in enumerate(genes, start=1):
        entry: dict = {"gene": gene, "comparison": None, "figures": [], "notes": [], "boot_counts": None}
        records = (summary.get("ols_vs_lmm") or {}).get(gene)
        if records:
            comparison = pd.DataFrame(records, columns=["model", "logLik", "AIC", "BIC", "LRT", "df", "p"])
            entry["comparison"] = _table(comparison, f"ols_vs_lmm_{sanitize_name(gene)}",
                                         f"{gene}: OLS against the LMM (the same fixed effects)", shown=None)
        if bootstrap is not None:
            rows = bootstrap[bootstrap["gene_id"] == gene]
            if len(rows) and (rows["status"] == "ok").all():
                entry["boot_counts"] = {"n_singular": int(rows["n_singular"].max()),
                                        "n_fail": int(rows["n_fail"].max())}
            elif len(rows):
                entry["notes"].append(f"No bootstrap for {gene}: {rows['status'].iloc[0]}.")
        if posterior is not None:
            rows = posterior[posterior["gene_id"] == gene]
            status = rows["status"].iloc[0] if len(rows) else "missing from posterior.tsv"
            # The model-wide reasons are said once for the section; a gene's own reason here.
            if status != "ok" and status not in POSTERIOR_UNAVAILABLE:
                entry["notes"].append(f"No posterior for {gene}: {status}.")
        names = (summary.get("figures") or {}).get(gene) or {}
        for kind in ("bootstrap_band", "posterior"):
            filename = names.get(kind)
            # A posterior figure without posterior.tsv values (bayes off) would have no caption to give.
            if not filename or (kind == "posterior" and posterior is None):
                continue
            path = figure_dir / filename if figure_dir is not None else None
            if path is None or not path.exists():
                entry["notes"].append(f"The figure {filename} named in summary.json is missing.")
                continue
            if kind == "bootstrap_band":
                key = "bootstrap_band" if numeric else "bootstrap_band_levels"
                caption = FIGURE_CAPTIONS[key].format(x=numeric, nsim=f"{nsim:,}", group=group)
                alt = f"Bootstrap band of the population fit of {gene}"
            else:
                params = posterior.loc[posterior["gene_id"] == gene, "param"].astype(str)
                sd_name = next((p for p in params if p.startswith("sd_")), f"sd_{group}")
                prior_text = section["posterior"]["prior_text"]
                caption = FIGURE_CAPTIONS["posterior"].format(prior=prior_text, group=group, sd_name=sd_name)
                alt = f"Marginal posteriors of {gene}"
            entry["figures"].append(figures.add_png(f"{kind}_{i}", path.read_bytes(), f"{gene}. {caption}", alt))
        section["genes"].append(entry)
    intervals = uncertainty_intervals(bootstrap, posterior, genes)
    if len(intervals):
        section["intervals"] = _table(intervals, "uncertainty_intervals",
                                      "Bootstrap percentiles and posterior summaries of the genes above", shown=None)
        section["intervals"]["compact"] = True  # twelve columns: tighter cells to fit the page
    return section


def build_report(config: dict, inputs: dict[str, str], html_path: str | Path, figures_dir: str | Path) -> None:
    """Write the self-contained HTML report and its figures.

    Parameters
    ----------
    config : dict
        The workflow config with defaults filled in (``model``, ``batch``, ``reml``,
        ``simpson``, ``report``, …).
    inputs : dict of str to str
        Paths of the report's inputs, keyed as in :func:`load_tables`.
    html_path : str or Path
        The page to write (``results/report.html``).
    figures_dir : str or Path
        Directory for the PNG figures (``results/figures``), one file per figure of the page.

    Returns
    -------
    None
        The page and the figures are written to disk.
    """
    import jinja2

    tables = load_tables(inputs)
    figures = _Figures(figures_dir)
    context = {
        "title": "batchmix report",
        "config": config,
        "run": _run_section(config, tables, inputs),
        "batch": _batch_section(config, tables, figures),
        "lmm": _lmm_section(config, tables, figures),
        "shrinkage": _shrinkage_section(config, tables, figures),
        "vst": _vst_section(config, tables, figures),
        "simpson": _simpson_section(config, tables),
        "uncertainty": _uncertainty_section(config, tables, figures),
    }
    templates = Path(__file__).resolve().parent / "templates"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates), autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["thousands"] = lambda n: f"{int(n):,}"
    page = env.get_template("report.html").render(css=(templates / "report.css").read_text(), **context)
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(page)
    log.info("wrote %s and %d figures in %s", html_path, len(list(Path(figures_dir).glob("*.png"))), figures_dir)
