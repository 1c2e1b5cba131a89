"""The statistics the report shows, taken from the stages' outputs.

Gene accounting, the PCA of the most variable genes with the batch R² and silhouette width of
its top components, the LMM-against-OLS counts, the most batch-driven genes, the genes and numbers
of the shrinkage figure, and the uncertainty intervals side by side. Nothing here draws or renders;
every function works on tables the workflow wrote (or on the same tables built in memory).
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import platform
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from batchmix.design import fixed_design, formula_columns, parse_formula, random_design
from batchmix.diagnostics import (  # noqa: F401 (moved to the diagnostics stage; kept importable here)
    DIAGNOSTIC_COMPONENTS,
    PCA_TOP_GENES,
    PCAResult,
    batch_diagnostics,
    batch_variance_share,
    pca,
    silhouette_widths,
)
from batchmix.distributions import bh_qvalues
from batchmix.lmm.results import ModelMetadata, coefficient_column

log = logging.getLogger(__name__)

#: Statuses of a gene whose model was fitted (``singular``: a variance on the boundary, still a fit).
FITTED_STATUSES = ("ok", "singular")

# Genes in the top-batch-genes table by default.
TOP_GENES = 20
# Significance level of the likelihood-ratio test count.
LRT_ALPHA = 0.05
# Percentiles of the batch share of variance at which the shrinkage figure picks its genes.
SHRINKAGE_PERCENTILES = (90.0, 70.0, 50.0, 30.0)
SOFTWARE = [
    "batchmix",
    "snakemake",
    "numpy",
    "scipy",
    "pandas",
    "statsmodels",
    "matplotlib",
    "seaborn",
    "formulaic",
    "jinja2",
]


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
        rows.append(
            {
                "criterion": f"{name} (lower is better)",
                "lmm_better": better,
                "ols_better": int(both.sum()) - better,
                "not_available": n - int(both.sum()),
                "n_genes": n,
            }
        )
    p = fitted["lrt_p"].to_numpy(dtype=float)
    available = np.isfinite(p)
    for name, values in ((f"LRT p < {alpha:g}", p), (f"LRT BH q < {alpha:g}", bh_qvalues(p))):
        better = int(np.sum(available & (values < alpha)))
        rows.append(
            {
                "criterion": name,
                "lmm_better": better,
                "ols_better": int(available.sum()) - better,
                "not_available": n - int(available.sum()),
                "n_genes": n,
            }
        )
    return pd.DataFrame(rows, columns=["criterion", "lmm_better", "ols_better", "not_available", "n_genes"])


def fraction_columns(gene_fits: pd.DataFrame, metadata: ModelMetadata) -> list[str]:
    """The variance-fraction columns of a gene-fit table, as the model's metadata names them.

    Parameters
    ----------
    gene_fits : pandas.DataFrame
        ``results/lmm/gene_fits.tsv``.
    metadata : batchmix.lmm.results.ModelMetadata
        The model's structure (``results/lmm/model.json``).

    Returns
    -------
    list of str
        The fixed terms' fractions, the random terms' and the residual's last, those present in
        ``gene_fits``.
    """
    return [c for c in metadata.fraction_columns() if c in gene_fits.columns]


def group_fraction_column(metadata: ModelMetadata, group: str) -> str | None:
    """The variance-fraction column of a grouping factor (its first random term), or None.

    Parameters
    ----------
    metadata : batchmix.lmm.results.ModelMetadata
    group : str
        A grouping factor of the model, e.g. the config's batch.

    Returns
    -------
    str or None
        ``GroupMetadata.fraction_column`` of the first random term grouped by ``group``; None when
        ``group`` groups no random term.
    """
    return next((g.fraction_column for g in metadata.groups if g.group == group), None)


def component_labels(metadata: ModelMetadata) -> dict[str, str]:
    """The figures' name of every variance-fraction column.

    Parameters
    ----------
    metadata : batchmix.lmm.results.ModelMetadata

    Returns
    -------
    dict of str to str
        Fixed fractions by their term; random ones by their grouping factor, followed by the
        term's names in brackets when the factor groups several random terms (``Subject
        (Intercept)``, ``Subject (Days)`` for ``(Days || Subject)``); the residual ``Residuals``.
    """
    labels = {column: term for term, column in metadata.fixed_fraction_columns.items()}
    groups = [g.group for g in metadata.groups]
    for group in metadata.groups:
        shared = groups.count(group.group) > 1
        labels[group.fraction_column] = f"{group.group} ({' + '.join(group.terms)})" if shared else group.group
    labels[metadata.residual["fraction_column"]] = "Residuals"
    return labels


def component_order(gene_fits: pd.DataFrame, metadata: ModelMetadata) -> list[str]:
    """Fraction columns by decreasing median across fitted genes, residual last (variancePartition's sortCols).

    Parameters
    ----------
    gene_fits : pandas.DataFrame
    metadata : batchmix.lmm.results.ModelMetadata

    Returns
    -------
    list of str
        The columns of :func:`fraction_columns`, ties in table order.
    """
    residual = metadata.residual["fraction_column"]
    fitted = gene_fits[gene_fits["status"].isin(FITTED_STATUSES)]
    columns = [c for c in fraction_columns(gene_fits, metadata) if c != residual]
    medians = [
        float(np.nanmedian(fitted[c].to_numpy(dtype=float))) if fitted[c].notna().any() else -1.0 for c in columns
    ]
    order = [columns[i] for i in np.argsort(-np.asarray(medians), kind="stable")]
    return order + ([residual] if residual in gene_fits.columns else [])


def top_batch_genes(
    gene_fits: pd.DataFrame,
    metadata: ModelMetadata,
    batch: str,
    *,
    n: int = TOP_GENES,
) -> pd.DataFrame:
    """The fitted genes with the largest share of variance explained by the batch.

    Parameters
    ----------
    gene_fits : pandas.DataFrame
        With ``gene_id``, ``status`` and the fraction columns.
    metadata : batchmix.lmm.results.ModelMetadata
        Names the batch's fraction column (:func:`group_fraction_column`).
    batch : str
        The batch column of the sample sheet.
    n : int
        Number of genes (all fitted genes with ``n`` ≤ 0).

    Returns
    -------
    pandas.DataFrame
        ``gene_id``, ``status`` and the fraction columns, by decreasing batch fraction (ties by
        input order); empty when the batch groups no random term.
    """
    column = group_fraction_column(metadata, batch)
    fractions = fraction_columns(gene_fits, metadata)
    if column is None or column not in gene_fits.columns:
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


def first_numeric_column(model: str, samples: pd.DataFrame) -> str | None:
    """The first numeric column of the model's fixed part (the shrinkage figure's x axis), or None."""
    fixed = parse_formula(model).fixed
    if fixed.strip() in ("1", "0", "-1"):
        return None
    for column in formula_columns("~ " + fixed):
        if column in samples.columns and pd.api.types.is_numeric_dtype(samples[column]):
            return column
    return None


def shrinkage_group(metadata: ModelMetadata, batch: str) -> str | None:
    """The grouping factor whose BLUPs the shrinkage figure draws.

    Parameters
    ----------
    metadata : batchmix.lmm.results.ModelMetadata
        The model's random terms.
    batch : str
        The config's batch column.

    Returns
    -------
    str or None
        ``batch`` when it groups a random term, else the first grouping factor, else None
        (no random term: nothing is shrunk).
    """
    groups = [g.group for g in metadata.groups]
    if not groups:
        return None
    return batch if batch in groups else groups[0]


def choose_shrinkage_genes(
    gene_fits: pd.DataFrame,
    requested: list[str],
    column: str | None,
    *,
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
        With ``gene_id``, ``status`` and ``column``.
    requested : list of str
        The config's ``report.genes``; used when not empty.
    column : str or None
        The group's variance-fraction column (:func:`group_fraction_column`); None: no default genes.
    percentiles : tuple of float
        Percentiles (0-100) of ``column`` at which genes are picked when none is requested;
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
    if column is None or column not in gene_fits.columns:
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


def fixed_effect_covariance(fixed_vcov: pd.DataFrame, gene: str, coefficients: list[str]) -> np.ndarray | None:
    """One gene's Cov(β̂) as a matrix, from the long table the lmm stage wrote.

    Parameters
    ----------
    fixed_vcov : pandas.DataFrame
        ``results/lmm/fixed_vcov.tsv``: ``gene_id, coef_a, coef_b, value``, the upper triangle with
        the diagonal of every fitted gene.
    gene : str
        The gene.
    coefficients : list of str
        The coefficients in the order wanted (e.g. X's columns).

    Returns
    -------
    numpy.ndarray or None
        The symmetric ``p × p`` matrix; None when the table lacks an entry or holds a non-finite one.
    """
    rows = fixed_vcov[fixed_vcov["gene_id"] == gene]
    index = {name: i for i, name in enumerate(coefficients)}
    cov = np.full((len(coefficients), len(coefficients)), np.nan)
    for a, b, value in zip(rows["coef_a"], rows["coef_b"], rows["value"].to_numpy(dtype=float)):
        if a in index and b in index:
            cov[index[a], index[b]] = cov[index[b], index[a]] = value
    return cov if np.isfinite(cov).all() else None


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


def shrinkage_estimates(
    gene: str,
    expression: pd.DataFrame,
    samples: pd.DataFrame,
    gene_fits: pd.DataFrame,
    blups: pd.DataFrame,
    metadata: ModelMetadata,
    group: str,
    *,
    fixed_vcov: pd.DataFrame | None,
) -> ShrinkageEstimates:
    """Per-group OLS estimates against the LMM's per-group predictions and the population fit.

    The sleepstudy figure for any model: with a numeric fixed covariate ``x`` (the first
    numeric column of the fixed part, as ``Days``) each group gets its OLS line of ``y`` on
    ``x`` and its LMM line; otherwise each group × condition cell (the first fixed factor)
    gets its mean, which is the OLS estimate of the cell within the group, and its LMM
    prediction. The population fit is ``X β̂`` with its standard error ``sqrt(x' Cov(β̂) x)``,
    Cov(β̂) the matrix the lmm stage wrote (``fixed_vcov.tsv``), whose diagonal gives ``se_*``².

    Parameters
    ----------
    gene : str
        A fitted gene.
    expression : pandas.DataFrame
        Genes × samples, the scale the model was fitted on.
    samples : pandas.DataFrame
        Sample sheet indexed by sample id.
    gene_fits : pandas.DataFrame
        With ``gene_id`` and the ``coef_<name>`` columns of ``metadata``.
    blups : pandas.DataFrame
        ``gene_id``, ``group``, ``level``, ``term``, ``value``.
    metadata : batchmix.lmm.results.ModelMetadata
        The model: its formula and coefficient names.
    group : str
        The grouping factor whose BLUPs make the per-group predictions.
    fixed_vcov : pandas.DataFrame or None
        ``gene_id, coef_a, coef_b, value`` (``results/lmm/fixed_vcov.tsv``); None or without the
        gene: no band, and ``band_note`` says why.

    Returns
    -------
    ShrinkageEstimates
    """
    y_all = expression.loc[gene]
    observed = y_all.notna()
    sheet = samples.loc[expression.columns[observed.to_numpy()]]
    y = y_all[observed].to_numpy(dtype=float)
    row = gene_fits.set_index("gene_id").loc[gene]
    model = metadata.formula
    with warnings.catch_warnings():
        # An aliased column dropped from X was reported by the lmm stage, which fitted without it.
        warnings.filterwarnings("ignore", message="fixed-effect model matrix is rank deficient", category=UserWarning)
        X, names = fixed_design(model, sheet)
    unknown = [name for name in names if name not in metadata.coefficients]
    if unknown:
        raise ValueError(f"{gene}: the model's coefficients {list(metadata.coefficients)} lack {unknown}")
    beta = row[[coefficient_column("coef", name) for name in names]].to_numpy(dtype=float)
    if not np.isfinite(beta).all():
        raise ValueError(f"{gene}: gene_fits has no finite coefficients for {names}")
    population = X @ beta

    band_note = ""
    cov = fixed_effect_covariance(fixed_vcov, gene, names) if fixed_vcov is not None else None
    if fixed_vcov is None:
        band_note = "the covariance of the fixed effects (results/lmm/fixed_vcov.tsv) was not given"
    elif cov is None:
        band_note = "fixed_vcov.tsv has no finite covariance of the fixed effects for this gene"
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
    labels = group_labels(sheet, group).to_numpy()

    numeric = first_numeric_column(model, samples)
    condition = condition_column(model, samples)
    kind = "numeric" if numeric is not None else "categorical"
    x_column = numeric if numeric is not None else condition
    x_values = sheet[x_column].to_numpy() if x_column is not None else np.array([""] * len(y), dtype=object)
    observations = pd.DataFrame(
        {
            "sample": sheet.index,
            "group": labels,
            "x": x_values,
            "y": y,
            "population": population,
            "population_se": population_se,
            "lmm": population + random_part,
        }
    )
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
    return ShrinkageEstimates(
        gene=gene, kind=kind, x=x_column, group=group, observations=observations, cells=cells, band_note=band_note
    )


def uncertainty_intervals(
    bootstrap: pd.DataFrame | None, posterior: pd.DataFrame | None, genes: list[str]
) -> pd.DataFrame:
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
        boot = bootstrap[bootstrap["gene_id"].isin(genes)][
            ["gene_id", "param", "estimate", "q2.5", "q50", "q97.5", "boot_sd"]
        ]
        parts.append(boot.rename(columns={"q2.5": "boot_q2.5", "q50": "boot_q50", "q97.5": "boot_q97.5"}))
    if posterior is not None and len(posterior):
        post = posterior[posterior["gene_id"].isin(genes)][["gene_id", "param", "mean", "q2.5", "q50", "q97.5", "sd"]]
        parts.append(
            post.rename(
                columns={
                    "mean": "post_mean",
                    "q2.5": "post_q2.5",
                    "q50": "post_q50",
                    "q97.5": "post_q97.5",
                    "sd": "post_sd",
                }
            )
        )
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


def level_label(value) -> str:
    """A label as the BLUP table writes it: integers (read as floats) printed without ``.0``."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def group_labels(samples: pd.DataFrame, group: str) -> pd.Series:
    """Labels of a grouping factor (``a:b`` for an interaction), integers printed without ``.0``."""
    columns = group.split(":")
    labels = samples[columns[0]].map(level_label)
    for column in columns[1:]:
        labels = labels + ":" + samples[column].map(level_label)
    return labels


def batch_labels(samples: pd.DataFrame, column: str) -> pd.Series:
    """Batch labels as strings, integers printed without ``.0``."""
    return samples[column].map(level_label)
