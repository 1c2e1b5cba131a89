"""The report's sections: each gathers, from the stages' outputs, what its part of the page shows.

Every ``*_section`` function takes the config, the tables read by :func:`batchmix.report.load_tables`
and (when it has figures) a :class:`batchmix.report.render.Figures`, and returns the dict that
``templates/report.html`` renders. Statistics come from :mod:`batchmix.report.summaries`, figures
from :mod:`batchmix.plots`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from batchmix.config import load_schema
from batchmix.de import bh
from batchmix.design import parse_formula, sanitize_name
from batchmix.diagnostics import PCAResult
from batchmix.io import file_md5
from batchmix.plots.batch import plot_batch_share, plot_pca
from batchmix.plots.lmm import plot_top_batch_genes, plot_variance_fractions
from batchmix.plots.shrinkage import plot_shrinkage
from batchmix.plots.uncertainty import plot_heritability
from batchmix.plots.vst import plot_mean_sd
from batchmix.report.render import SHOWN_ROWS, Figures, data_uri, table
from batchmix.report.summaries import (
    FITTED_STATUSES,
    batch_labels,
    choose_shrinkage_genes,
    component_labels,
    component_order,
    condition_column,
    first_numeric_column,
    fraction_columns,
    gene_accounting,
    group_fraction_column,
    model_comparison,
    shrinkage_estimates,
    shrinkage_group,
    software_versions,
    top_batch_genes,
    uncertainty_intervals,
)

__all__ = [
    "FIGURE_CAPTIONS",
    "describe_prior",
    "posterior_unavailable",
    "run_section",
    "batch_section",
    "lmm_section",
    "shrinkage_genes",
    "shrinkage_section",
    "vst_section",
    "simpson_section",
    "uncertainty_section",
]

log = logging.getLogger(__name__)

# The reversal table can hold millions of pairs, each with its per-batch correlations: the page
# carries the strongest ones (about 300 bytes each) and points to the full file.
REVERSAL_DOWNLOAD_ROWS = 2_000

# Appended to the batch captions when there is a corrected expression.
AFTER_CORRECTION = {
    "pca": (
        " After removing the batch BLUPs (right) the colours should mix while the shapes, the biology "
        "the model keeps, stay apart."
    ),
    "batch_share": " After correction they should drop, and the silhouette width of the batches fall to 0 or below.",
}

#: What to look for in each figure; keys are figure names (``shrinkage_1`` … share ``shrinkage``).
#: ``workflow/report/figures.rst`` repeats them for ``snakemake --report``.
FIGURE_CAPTIONS = {
    "heritability": "Per-gene heritability h² of (1|kinship); right: h² against its SE",
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
    "mean_sd_as_given": (
        "Standard deviation of each gene that passed the filter, across samples, against the rank of its "
        "mean (vsn's meanSdPlot), on the input's own scale: with input_type: log the values are used as "
        "given, so there is no before and after. The red line is the running median; a roughly flat line "
        "means the variance does not depend on the mean."
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


def posterior_unavailable() -> dict[str, str]:
    """Why a gene has no posterior, for the statuses of posterior.tsv that are not ok.

    A function, not a constant: the thresholds come from :mod:`batchmix.uncertainty.multicomp`,
    whose import (scipy.stats) a report without the uncertainty stage need not pay.
    """
    from batchmix.uncertainty.multicomp import MAX_KHAT, MIN_ESS

    return {
        "failed:importance_khat": (
            "the importance sampling over the variance parameters (used for several variance components, "
            "random slopes and prior: brms_default) is unreliable for it: the Pareto k̂ of its importance "
            f"weights exceeds {MAX_KHAT:g}, so a few draws dominate and the posterior summaries would not be "
            "trustworthy"
        ),
        "failed:importance_ess": (
            "the importance sampling over the variance parameters (used for several variance components, "
            "random slopes and prior: brms_default) left too few effective draws: the effective sample size "
            f"of its importance weights is below {MIN_ESS:g}, so the quantiles would be Monte Carlo noise; "
            "results/uncertainty/posterior_diagnostics.tsv gives each gene's k̂ and ESS"
        ),
        "not_available:no_random_effect": (
            "the model has no random term, so there is no variance component to integrate over"
        ),
    }


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


def run_section(config: dict, tables: dict, inputs: dict[str, str]) -> dict:
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
        files.append(
            {"role": role, "path": str(inputs[key]), "bytes": f"{path.stat().st_size:,}", "md5": file_md5(path)}
        )
    parsed = parse_formula(config["model"])
    not_fitted = gene_fits.loc[~gene_fits["status"].isin(FITTED_STATUSES), ["gene_id", "status"]]
    plain_config = json.loads(json.dumps(config, default=str))
    # In the schema's order: Snakemake and the command line fill the defaults in different orders.
    order = {key: i for i, key in enumerate(load_schema()["properties"])}
    plain_config = {k: plain_config[k] for k in sorted(plain_config, key=lambda k: (order.get(k, len(order)), k))}
    return {
        "moderation": _moderation_note(gene_fits),
        "counts": counts,
        "n_rows": n_rows,
        "all_accounted": accounted == n_in == n_rows,
        "accounting": table(accounting, "gene_accounting", "Genes by outcome", shown=None),
        "not_fitted": table(
            not_fitted,
            "genes_not_fitted",
            "Genes not fitted, with the reason",
            shown=0,
            full_path="results/lmm/gene_fits.tsv",
        )
        if len(not_fitted)
        else None,
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
    prior = (
        f"prior degrees of freedom d0 = {d0[0]:.3g}"
        if np.ptp(d0) == 0
        else f"median prior degrees of freedom d0 = {np.median(d0):.3g}"
    )
    if s0.size:
        prior += (
            f", prior sd s0 = {s0[0]:.3g}"
            if np.ptp(s0) == 0
            else f", prior sd s0 from {s0.min():.3g} to {s0.max():.3g} (trend)"
        )
    return f"limma-style empirical Bayes ({prior}): columns se_mod_*, t_mod_*, p_mod_* of gene_fits.tsv"


def _stored_diagnostics(tables: dict) -> dict[str, dict]:
    """The diagnostics stage's PCA per data set (``before``, ``after``) as the batch figures take them."""
    stored, scores = tables["pca"], tables["pca_scores"]
    out = {}
    for key, entry in stored["data"].items():
        k = entry["n_components"]
        components = [f"PC{i + 1}" for i in range(k)]
        part = scores[scores["data"] == key].set_index("sample_id")[components].astype(float)
        ratio = pd.Series(entry["variance_ratio"], index=components, dtype=float)
        share = pd.Series(entry["batch_r2"] if entry["batch_r2"] is not None else [np.nan] * k, index=components)
        out[key] = {
            "pca": PCAResult(scores=part, variance_ratio=ratio),
            "share": share.astype(float),
            "weighted_share": np.nan if entry["weighted_share"] is None else entry["weighted_share"],
            "silhouette": np.nan if entry["silhouette"] is None else entry["silhouette"],
            "n_components": k,
        }
    return out


def batch_section(config: dict, tables: dict, figures: Figures) -> dict:
    """The batch diagnostics, drawn from the diagnostics stage's PCA (``results/diagnostics/``)."""
    samples = tables["samples"]
    expression = tables["vst_expression"]
    samples = samples.loc[expression.columns]
    batch_name = config.get("batch")
    section = {
        "has_batch": bool(batch_name),
        "has_corrected": tables["corrected"] is not None,
        "condition": None,
        "figures": [],
        "note": "",
        "metrics": None,
        "share_table": None,
    }
    if not batch_name:
        return section
    batch = batch_labels(samples, batch_name)
    condition_name = condition_column(config["model"], samples)
    condition = samples[condition_name].astype(str) if condition_name else None
    section["condition"] = condition_name
    stored = tables["pca"]
    if not stored["data"]:
        section["note"] = stored.get("note") or "Too few genes or samples for a PCA."
        return section
    by_key = _stored_diagnostics(tables)
    corrected = "after" in by_key
    before = "before correction" if corrected else "stabilised expression"
    diagnostics = {before: by_key["before"]}
    if corrected:
        diagnostics["after correction"] = by_key["after"]
    n_genes = stored["n_genes"]
    after = AFTER_CORRECTION if corrected else {"pca": "", "batch_share": ""}
    caption = FIGURE_CAPTIONS["pca"].format(
        n_genes=n_genes, condition=condition_name or "(no fixed factor)", after=after["pca"]
    )
    fig = plot_pca({k: d["pca"] for k, d in diagnostics.items()}, batch, condition, condition_name)
    section["figures"].append(figures.add("pca", fig, caption, "PCA of the samples coloured by batch"))
    fig = plot_batch_share(diagnostics)
    section["figures"].append(
        figures.add(
            "batch_share",
            fig,
            FIGURE_CAPTIONS["batch_share"].format(after=after["batch_share"]),
            "Batch R² of the top principal components",
        )
    )
    metrics = pd.DataFrame(
        {
            "metric": [
                f"batch share of the variance of the top {min(d['n_components'] for d in diagnostics.values())} PCs",
                "mean silhouette width of the batches (top PCs)",
                "batch R² of PC1",
            ],
            **{
                title: [d["weighted_share"], d["silhouette"], float(d["share"].iloc[0]) if len(d["share"]) else np.nan]
                for title, d in diagnostics.items()
            },
        }
    )
    section["metrics"] = table(metrics.round(3), "batch_metrics", "Batch diagnostics", shown=None)
    share = pd.concat(
        {
            title: pd.DataFrame(
                {"variance_ratio": d["pca"].variance_ratio.iloc[: d["n_components"]], "batch_r2": d["share"]}
            )
            for title, d in diagnostics.items()
        },
        names=["data", "component"],
    ).reset_index()
    section["share_table"] = table(share, "batch_share_by_component", "Batch R² by principal component", shown=0)
    section["n_genes"] = n_genes
    section["batch_name"] = batch_name
    section["n_batches"] = int(batch.nunique())
    return section


def lmm_section(config: dict, tables: dict, figures: Figures) -> dict:
    gene_fits = tables["gene_fits"]
    metadata = tables["model"]
    fitted = gene_fits[gene_fits["status"].isin(FITTED_STATUSES)]
    section: dict = {
        "has_random": bool(metadata.groups),
        "figures": [],
        "n_fitted": len(fitted),
        "top_genes": None,
        "comparison": None,
        "lmm_better_aic": 0,
    }
    order = component_order(gene_fits, metadata)
    labels = component_labels(metadata)
    residual = labels[metadata.residual["fraction_column"]]
    if fraction_columns(gene_fits, metadata) and len(fitted):
        fig = plot_variance_fractions(fitted[order].rename(columns=labels), residual=residual)
        caption = FIGURE_CAPTIONS["variance_fractions"].format(n_genes=f"{len(fitted):,}")
        section["figures"].append(figures.add("variance_fractions", fig, caption, "Violin plot of variance fractions"))
    top = top_batch_genes(gene_fits, metadata, config["batch"], n=0)
    if len(top):
        shown = top.head(SHOWN_ROWS).set_index("gene_id")[order].rename(columns=labels)
        fig = plot_top_batch_genes(shown, residual=residual)
        section["figures"].append(
            figures.add(
                "top_batch_genes",
                fig,
                FIGURE_CAPTIONS["top_batch_genes"],
                "Variance split of the most batch-driven genes",
            )
        )
        section["top_genes"] = table(
            top,
            "top_batch_genes",
            f"Fitted genes by decreasing share of variance explained by {config['batch']}",
            download_rows=1000,
            full_path="results/lmm/gene_fits.tsv",
            sortable=True,
        )
    heritability = _heritability_figure(fitted, figures)
    if heritability is not None:
        section["figures"].append(heritability)
    if metadata.groups and len(fitted):
        comparison = model_comparison(gene_fits)
        section["comparison"] = table(
            comparison, "lmm_vs_ols", "LMM against OLS (the same fixed effects, no random term)", shown=None
        )
        section["lmm_better_aic"] = int(comparison.loc[0, "lmm_better"])
    return section


def _heritability_figure(fitted: pd.DataFrame, figures: Figures) -> dict | None:
    """The h² distribution of a ``(1 | kinship)`` model (gene_fits has ``h2``), with one sentence; else None.

    The sentence gives the median h² over the fitted genes and how many have a kinship LRT
    Benjamini-Hochberg q < 0.05 (over the genes with a p-value).
    """
    if "h2" not in fitted.columns or not len(fitted):
        return None
    h2 = pd.to_numeric(fitted["h2"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(h2).any():
        return None
    se = pd.to_numeric(fitted["se_h2"], errors="coerce").to_numpy(dtype=float) if "se_h2" in fitted else None
    lrt_p = None
    if "lrt_kinship_p" in fitted:
        lrt_p = pd.to_numeric(fitted["lrt_kinship_p"], errors="coerce").to_numpy(dtype=float)
    n_significant = int(np.sum(bh(lrt_p) < 0.05)) if lrt_p is not None else 0
    n_genes = int(np.isfinite(h2).sum())
    sentence = (
        f"The median h² over the {n_genes:,} fitted genes is {np.nanmedian(h2):.3g}; "
        f"{n_significant:,} gene{'s' if n_significant != 1 else ''} "
        f"{'have' if n_significant != 1 else 'has'} a kinship likelihood-ratio test with q < 0.05 "
        "(Benjamini-Hochberg over the genes)."
    )
    fig = plot_heritability(h2, se, lrt_p=lrt_p)
    caption = f"{FIGURE_CAPTIONS['heritability']}. {sentence}"
    return figures.add("heritability", fig, caption, "Distribution of the per-gene heritability h²")


def _shrinkage_choice(config: dict, tables: dict) -> tuple[str | None, str | None, list[str], list[str]]:
    """The shrinkage figures' group, its variance-fraction column, the genes drawn and the requested genes skipped."""
    metadata = tables["model"]
    group = shrinkage_group(metadata, config["batch"])
    if group is None:
        return None, None, [], []
    requested = list(config.get("report", {}).get("genes", []) or [])
    column = group_fraction_column(metadata, group)
    chosen, skipped = choose_shrinkage_genes(tables["gene_fits"], requested, column)
    return group, column, chosen, skipped


def shrinkage_genes(config: dict, tables: dict) -> list[str]:
    """The genes :func:`shrinkage_section` draws: the only genes whose expression values the page needs.

    Parameters
    ----------
    config : dict
        The workflow config (``batch``, ``report.genes``).
    tables : dict
        With ``model`` (:class:`batchmix.lmm.results.ModelMetadata`) and ``gene_fits``.

    Returns
    -------
    list of str
    """
    return _shrinkage_choice(config, tables)[2]


def shrinkage_section(config: dict, tables: dict, figures: Figures) -> dict:
    group, column, chosen, skipped = _shrinkage_choice(config, tables)
    metadata = tables["model"]
    section: dict = {"group": group, "figures": [], "skipped": [], "note": "", "requested": False}
    if group is None:
        section["note"] = "The model has no random term, so nothing is shrunk: every batch estimate is its own OLS fit."
        return section
    requested = list(config.get("report", {}).get("genes", []) or [])
    section["skipped"] = skipped
    section["requested"] = bool(requested)
    for i, gene in enumerate(chosen, start=1):
        try:
            estimates = shrinkage_estimates(
                gene,
                tables["vst_expression"],
                tables["samples"],
                tables["gene_fits"],
                tables["blups"],
                metadata,
                group,
                fixed_vcov=tables["fixed_vcov"],
            )
        except (ValueError, KeyError) as err:
            section["skipped"].append(f"{gene} ({err})")
            continue
        key = "shrinkage_numeric" if estimates.kind == "numeric" else "shrinkage"
        caption = FIGURE_CAPTIONS[key].format(group=group)
        if estimates.band_note:
            caption += f" No band: {estimates.band_note}."
        fig = plot_shrinkage(estimates)
        share = _share_note(tables["gene_fits"], gene, group, column)
        section["figures"].append(
            figures.add(f"shrinkage_{i}", fig, f"{gene}{share}. {caption}", f"Shrinkage figure of {gene}")
        )
    if not chosen and not section["skipped"]:
        section["note"] = f"No gene was fitted without singularity with a {group} share of variance to choose from."
    return section


def _share_note(gene_fits: pd.DataFrame, gene: str, group: str, column: str | None) -> str:
    """``" (Batch: 62% of its variance, 70th percentile of the fitted genes)"``, or empty."""
    if column is None or column not in gene_fits.columns:
        return ""
    fitted = gene_fits[gene_fits["status"].isin(FITTED_STATUSES)][column].to_numpy(dtype=float)
    fitted = fitted[np.isfinite(fitted)]
    value = float(gene_fits.loc[gene_fits["gene_id"] == gene, column].iloc[0])
    if not np.isfinite(value) or fitted.size == 0:
        return ""
    percentile = 100 * float(np.mean(fitted <= value))
    return f" ({group}: {100 * value:.0f}% of its variance; {percentile:.0f}th percentile of the fitted genes)"


def vst_section(config: dict, tables: dict, figures: Figures) -> dict:
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
        if info.get("vst_fit_type_requested"):
            fig = plot_mean_sd(
                mean_sd,
                f"before: {info.get('before_scale', 'input')}",
                f"after: VST, {info['vst_fit_type_used']} dispersion trend",
            )
        else:
            # Input used as given: before and after are the same values, one panel says it all.
            fig = plot_mean_sd(mean_sd, None, "input used as given (no stabilisation)")
        stabilised = bool(info.get("vst_fit_type_requested"))
        caption = FIGURE_CAPTIONS["mean_sd" if stabilised else "mean_sd_as_given"]
        alt = "Mean-sd plot before and after" if stabilised else "Mean-sd plot of the input"
        section["figures"].append(figures.add("mean_sd", fig, caption, alt))
    size_factors = tables["size_factors"]
    if size_factors["size_factor"].notna().any():
        section["size_factors"] = table(size_factors, "size_factors", "Size factors", shown=0)
        values = size_factors["size_factor"].to_numpy(dtype=float)
        section["size_factor_range"] = (
            f"{np.nanmin(values):.3g} to {np.nanmax(values):.3g} (median {np.nanmedian(values):.3g})"
        )
    return section


# Names of the within-batch tests and calibration nulls, as the report writes them.
SIMPSON_TESTS = {
    "random_effects": "random-effects test (per-batch correlations combined by DerSimonian-Laird; a pair needs a "
    "consistent within-batch sign)",
    "pooled": "pooled within-batch test (does not test consistency across batches)",
}
SIMPSON_NULLS = {
    "sign_flip": "sign-flip null (each gene's within-batch sign randomised per batch: no consistent direction)",
    "permutation": "within-batch permutation null (no within-batch correlation at all)",
}
# The report warns when the empirical FDR exceeds the nominal one by this factor.
EMPIRICAL_FDR_WARNING = 2.0


def _simpson_calibration(summary: dict) -> dict | None:
    """The calibration line of the Simpson section, with a warning flag; None when it did not run."""
    calibration = summary.get("calibration") or {}
    method = calibration.get("method")
    if method in (None, "none"):
        return None
    nominal = float(summary.get("fdr", 0.05))
    empirical = calibration.get("empirical_fdr")
    empirical = float(empirical) if empirical is not None else float("nan")
    null_counts = [int(v) for v in calibration.get("flagged_null") or []]
    return {
        "method": method,
        "null": SIMPSON_NULLS.get(method, method),
        "replicates": int(calibration.get("replicates", len(null_counts))),
        "flagged_null": ", ".join(f"{v:,}" for v in null_counts),
        "empirical_fdr": empirical,
        "nominal_fdr": nominal,
        "warn": bool(np.isfinite(empirical) and empirical > EMPIRICAL_FDR_WARNING * nominal),
    }


def _simpson_lurking(summary: dict) -> list[dict]:
    """One entry per sheet column nested in the batch: its levels, the share of reversals it drives."""
    lurking = summary.get("lurking") or {}
    out = []
    for column, info in (lurking.get("factors") or {}).items():
        out.append(
            {
                "column": column,
                "levels": ", ".join(map(str, info.get("levels", []))),
                "n_levels": len(info.get("levels", [])),
                "percent_driven": 100.0 * float(info.get("fraction_driven", 0.0)),
                "n_driven": int(info.get("n_driven", 0)),
                "driving": bool(info.get("driving", False)),
            }
        )
    return out


def simpson_section(config: dict, tables: dict) -> dict:
    """The Simpson section: the count and its test, the empirical FDR, the lurking factor, the figure."""
    scfg = config.get("simpson", {})
    section: dict = {
        "enabled": bool(scfg.get("enabled", False)) and tables["reversals"] is not None,
        "figure": None,
        "table": None,
        "permutation": None,
        "adjust_for": [],
        "calibration": None,
        "lurking": [],
        "driving": [],
    }
    if not section["enabled"]:
        return section
    summary = tables["simpson_summary"] or {}
    reversals = tables["reversals"]
    within_test = summary.get("within_test", "pooled")
    lurking = _simpson_lurking(summary)
    section.update(
        {
            "n_reversals": int(summary.get("n_reversals", len(reversals))),
            "n_pairs": int(summary.get("n_pairs", 0)),
            "n_genes": int(summary.get("n_genes_scanned", 0)),
            "fdr": summary.get("fdr", scfg.get("fdr")),
            "method": {"bh": "Benjamini-Hochberg", "by": "Benjamini-Yekutieli"}.get(
                summary.get("method"), summary.get("method")
            ),
            "adjust_for": summary.get("adjust_for") or [],
            "permutation": summary.get("permutation_check"),
            "within_test": within_test,
            "test": SIMPSON_TESTS.get(within_test, within_test),
            "min_batches": summary.get("min_batches"),
            "min_sd": summary.get("min_sd"),
            "calibration": _simpson_calibration(summary),
            "lurking": lurking,
            "driving": [f for f in lurking if f["driving"]],
        }
    )
    if len(reversals):
        # The page leaves out the per-batch correlations (one long string per pair); the download keeps them.
        section["table"] = table(
            reversals,
            "simpson_reversals",
            "Gene pairs whose correlation reverses within batches",
            shown=100,
            download_rows=REVERSAL_DOWNLOAD_ROWS,
            full_path="results/simpson/reversals.tsv",
            sortable=True,
            hidden_columns=("per_batch_r",),
        )
        figure_path = tables["simpson_figure"]
        if figure_path and Path(figure_path).exists():
            section["figure"] = {
                "name": "simpson_top_pairs",
                "src": data_uri(Path(figure_path).read_bytes(), "image/png"),
                "alt": "Pooled against per-batch scatter of the most consistent reversals",
                "caption": (
                    f"The {min(len(reversals), int(config.get('report', {}).get('top_pairs', 4)))} reversals "
                    "whose within-batch sign holds in the most batches (column n_agree). "
                    "Left: all samples pooled with one regression line; right: the same samples coloured by batch "
                    "with one line per batch. A reversal is a pair whose lines slope one way pooled and the other "
                    "way inside the batches: the pooled correlation is made by differences between batches."
                ),
            }
    return section


def uncertainty_section(config: dict, tables: dict, figures: Figures) -> dict:
    """The bootstrap and posterior of the figure genes; ``enabled`` is False without the stage's outputs."""
    summary = tables["uncertainty_summary"]
    section: dict = {"enabled": summary is not None}
    if summary is None:
        return section
    unavailable = posterior_unavailable()
    model = summary.get("formula", config["model"])
    parsed = parse_formula(model)
    group = parsed.random[0].group if parsed.random else config["batch"]
    boot_settings = summary.get("bootstrap", {}) or {}
    post_settings = summary.get("posterior", {}) or {}
    nsim = int(boot_settings.get("nsim", 0) or 0)
    bootstrap = tables["uncertainty_bootstrap"] if nsim > 0 else None
    posterior = tables["uncertainty_posterior"] if post_settings.get("enabled") else None
    section.update(
        {"formula": model, "group": group, "bootstrap": None, "posterior": None, "genes": [], "intervals": None}
    )
    if bootstrap is not None:
        section["bootstrap"] = {
            "nsim": nsim,
            "seed": boot_settings.get("seed"),
            "n_genes": int(boot_settings.get("n_genes", 0)),
            "n_singular": int(boot_settings.get("n_singular", 0)),
            "n_fail": int(boot_settings.get("n_fail", 0)),
        }
    if posterior is not None:
        counts = post_settings.get("status_counts", {}) or {}
        section["posterior"] = {
            "prior": post_settings.get("prior", "unif_icc"),
            "prior_text": describe_prior(
                post_settings.get("prior", "unif_icc"), float(post_settings.get("prior_scale", 1.0))
            ),
            "n_ok": int(counts.get("ok", 0)),
            "unavailable": [
                {"status": status, "reason": reason, "n_genes": int(counts[status])}
                for status, reason in unavailable.items()
                if counts.get(status)
            ],
        }
    samples = tables["samples"]
    numeric = first_numeric_column(model, samples)
    figure_dir = Path(tables["uncertainty_figures"]) if tables["uncertainty_figures"] else None
    genes = list((summary.get("figures") or {}).keys())
    for i, gene in enumerate(genes, start=1):
        entry: dict = {"gene": gene, "comparison": None, "figures": [], "notes": [], "boot_counts": None}
        records = (summary.get("ols_vs_lmm") or {}).get(gene)
        if records:
            comparison = pd.DataFrame(records, columns=["model", "logLik", "AIC", "BIC", "LRT", "df", "p"])
            entry["comparison"] = table(
                comparison,
                f"ols_vs_lmm_{sanitize_name(gene)}",
                f"{gene}: OLS against the LMM (the same fixed effects)",
                shown=None,
            )
        if bootstrap is not None:
            rows = bootstrap[bootstrap["gene_id"] == gene]
            if len(rows) and (rows["status"] == "ok").all():
                entry["boot_counts"] = {
                    "n_singular": int(rows["n_singular"].max()),
                    "n_fail": int(rows["n_fail"].max()),
                }
            elif len(rows):
                entry["notes"].append(f"No bootstrap for {gene}: {rows['status'].iloc[0]}.")
        if posterior is not None:
            rows = posterior[posterior["gene_id"] == gene]
            status = rows["status"].iloc[0] if len(rows) else "missing from posterior.tsv"
            # The model-wide reasons are said once for the section; a gene's own reason here.
            if status != "ok" and status not in unavailable:
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
        section["intervals"] = table(
            intervals,
            "uncertainty_intervals",
            "Bootstrap percentiles and posterior summaries of the genes above",
            shown=None,
        )
        section["intervals"]["compact"] = True  # twelve columns: tighter cells to fit the page
    return section
