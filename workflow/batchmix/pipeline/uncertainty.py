"""The uncertainty stage: bootstrap and/or posterior for the configured genes, tables, figures, summary.

The statistics are in :mod:`batchmix.uncertainty` (which never runs a stage); the registry runs
:func:`uncertainty_stage` as the stage ``uncertainty``. The sample sheet, with the kinship matrix of
``covariance: {kinship: path}`` when set, comes from :func:`batchmix.pipeline.validate.load_samples`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from batchmix import io
from batchmix.defaults import DEFAULT_SEED
from batchmix.design import sanitize_name
from batchmix.lmm import missing
from batchmix.pipeline.validate import load_samples
from batchmix.plots.style import save_png
from batchmix.plots.uncertainty import plot_bootstrap_band, plot_posterior, plot_posterior_intervals
from batchmix.uncertainty import (
    BOOT_COLUMNS,
    DIAGNOSTIC_COLUMNS,
    SUMMARY_COLUMNS,
    bootstrap,
    posterior,
    posterior_draws,
)

__all__ = ["ols_vs_lmm_table", "uncertainty_stage"]

logger = logging.getLogger(__name__)

# exact posterior draws behind each posterior figure's histograms
POSTERIOR_FIGURE_DRAWS = 40000
POSTERIOR_FIGURE_SEED = 1


def _choose_genes(choice, fits: pd.DataFrame, batch: str) -> list[str]:
    """``all``, a list of gene ids, or N: the N fitted genes with the largest batch share."""
    fitted = fits[fits["status"].isin(["ok", "singular"])]
    if choice == "all":
        return list(fitted["gene_id"])
    if isinstance(choice, list):
        return [str(g) for g in choice]
    col = f"frac_{sanitize_name(batch)}"
    if col in fitted:
        fitted = fitted.sort_values(col, ascending=False, kind="stable")
    return list(fitted["gene_id"].head(int(choice)))


def ols_vs_lmm_table(gene_fits: pd.DataFrame, gene_id: str) -> pd.DataFrame:
    """The OLS-against-LMM comparison of one gene from ``results/lmm/gene_fits.tsv``.

    Returns
    -------
    pandas.DataFrame
        Rows ``OLS`` and ``LMM`` with ``logLik``, ``AIC``, ``BIC``, and the likelihood-ratio test
        (``LRT``, ``df``, ``p``) on the LMM row. Under REML both criteria are REML criteria with
        the same X (comparable, as lmerTest's ``ranova``).
    """
    r = gene_fits.set_index(gene_fits["gene_id"].astype(str)).loc[str(gene_id)]
    return pd.DataFrame(
        {
            "model": ["OLS", "LMM"],
            "logLik": [r.get("ols_loglik"), r.get("loglik")],
            "AIC": [r.get("ols_aic"), r.get("aic")],
            "BIC": [r.get("ols_bic"), r.get("bic")],
            "LRT": [np.nan, r.get("lrt_stat")],
            "df": [np.nan, r.get("lrt_df")],
            "p": [np.nan, r.get("lrt_p")],
        }
    )


def uncertainty_stage(
    config: dict,
    expression_path: str,
    status_path: str,
    fits_path: str,
    samples_path: str,
    out: dict[str, str],
    threads: int = 1,
) -> None:
    """Bootstrap and/or grid posterior for the configured genes; tables, figures and a summary.

    Reads the stabilised expression, the gene statuses and the LMM gene fits (for statuses and
    the batch share used to pick genes). Config ``uncertainty``: ``bootstrap`` (replicates, 0 = off),
    ``bayes`` (posterior on/off), ``prior`` (``unif_icc`` | ``half_cauchy`` | ``brms_default``), ``prior_scale``,
    ``seed``, ``genes`` (``all``, N = the N genes with the largest batch share, or a list) and
    ``figure_genes`` (genes drawn; default the report's genes, else the top gene).

    Writes ``out["bootstrap"]`` (tidy: gene_id, param, status, estimate, q2.5, q50, q97.5,
    boot_mean, boot_sd, n_singular, n_fail, n_na), ``out["posterior"]`` (gene_id, param, status,
    mean, sd, q2.5, q50, q97.5), ``out["figures"]`` (a folder of PNGs:
    ``<gene>.bootstrap_band.png``, ``<gene>.posterior.png``) and ``out["summary"]`` (JSON: settings,
    counts, timings, figures, and the OLS-against-LMM table of each figure gene). A disabled method
    writes its table with the header only. With the importance-sampling engine (several variance
    components or ``prior: brms_default``) ``out["posterior_diagnostics"]``, when given, gets the
    per-gene ``gene_id, status, khat, ess, n_draws, prior_location, prior_scale`` (header only
    otherwise).
    """
    ucfg = dict(config.get("uncertainty") or {})
    nsim = int(ucfg.get("bootstrap", 0) or 0)
    bayes = bool(ucfg.get("bayes", False))
    prior = ucfg.get("prior", "unif_icc")
    prior_scale = float(ucfg.get("prior_scale", 1.0))
    seed = int(ucfg.get("seed", DEFAULT_SEED))
    expr = io.read_matrix(expression_path)
    # with covariance: kinship, the sheet carries the matrix that (1 | kinship) reads
    samples = load_samples(config, samples_path).loc[expr.columns]
    status = io.read_result_table(status_path).set_index("gene_id")["status"]
    fits = io.read_result_table(fits_path)
    chosen = _choose_genes(ucfg.get("genes", "all"), fits, config["batch"])
    chosen = [g for g in chosen if g in expr.index]
    fig_genes = ucfg.get("figure_genes") or list(config.get("report", {}).get("genes") or [])
    fitted = set(fits.loc[fits["status"].isin(["ok", "singular"]), "gene_id"])
    fig_genes = [str(g) for g in fig_genes if str(g) in fitted and str(g) in expr.index] or [
        g for g in _choose_genes(1, fits, config["batch"] or "") if g in expr.index
    ]  # default: the most batch-driven fitted gene
    chosen += [g for g in fig_genes if g not in set(chosen)]  # figure genes are always done
    fit_status = fits.set_index("gene_id")["status"].reindex(expr.index)
    gstatus = status.reindex(expr.index).fillna("failed:no_status").astype(str)
    gstatus = gstatus.where(gstatus != "ok", fit_status.fillna("failed:no_fit").astype(str))
    gstatus[~gstatus.index.isin(chosen) & gstatus.isin(["ok", "singular"])] = "skipped:not_selected"
    formula = config["model"]
    reml = bool(config.get("reml", True))
    summary: dict = {
        "formula": formula,
        "n_genes": int(len(expr)),
        "n_selected": int(len(chosen)),
        "bootstrap": {"nsim": nsim, "seed": seed},
        "posterior": {"enabled": bayes, "prior": prior, "prior_scale": prior_scale},
        "figures": {},
        "ols_vs_lmm": {},
    }
    figdir = Path(out["figures"])
    figdir.mkdir(parents=True, exist_ok=True)
    boot = post = None
    if nsim > 0:
        t0 = time.perf_counter()
        boot = bootstrap(
            expr,
            samples,
            formula,
            nsim=nsim,
            seed=seed,
            reml=reml,
            gene_status=gstatus,
            keep_draws_for=fig_genes,
            n_threads=threads,
        )
        summary["bootstrap"]["seconds"] = round(time.perf_counter() - t0, 3)
        per_gene = boot.summary.groupby("gene_id", sort=False).first()
        done = per_gene["status"] == "ok"
        summary["bootstrap"].update(
            {
                "n_genes": int(done.sum()),
                "n_singular": int(per_gene.loc[done, "n_singular"].sum()),
                "n_fail": int(per_gene.loc[done, "n_fail"].sum()),
            }
        )
        io.write_table(boot.summary, out["bootstrap"])
    else:
        io.write_table(pd.DataFrame(columns=BOOT_COLUMNS), out["bootstrap"])
    diagnostics = pd.DataFrame(columns=DIAGNOSTIC_COLUMNS)  # header only unless importance sampling ran
    if bayes:
        t0 = time.perf_counter()
        post = posterior(
            expr,
            samples,
            formula,
            prior=prior,
            prior_scale=prior_scale,
            gene_status=gstatus.where(gstatus != missing.SINGULAR, missing.OK),
            keep_grid_for=fig_genes,
            seed=seed,
        )
        summary["posterior"]["seconds"] = round(time.perf_counter() - t0, 3)
        if post.diagnostics is not None:
            # the importance-sampling engine: its per-gene diagnostics (k̂, ESS) and their spread
            d = post.diagnostics
            fitted_rows = d["khat"].notna()
            summary["posterior"]["engine"] = "importance_sampling"
            summary["posterior"]["n_draws"] = int(d.loc[fitted_rows, "n_draws"].max()) if fitted_rows.any() else 0
            summary["posterior"]["khat_quantiles"] = (
                {f"q{int(100 * q)}": round(float(d.loc[fitted_rows, "khat"].quantile(q)), 4) for q in (0.5, 0.9, 0.99)}
                if fitted_rows.any()
                else {}
            )
            summary["posterior"]["min_ess"] = (
                round(float(d.loc[fitted_rows, "ess"].min()), 1) if fitted_rows.any() else None
            )
            diagnostics = d
        st = post.summary.groupby("gene_id", sort=False)["status"].first()
        summary["posterior"]["status_counts"] = {k: int(v) for k, v in st.value_counts().items()}
        io.write_table(post.summary, out["posterior"])
    else:
        io.write_table(pd.DataFrame(columns=SUMMARY_COLUMNS), out["posterior"])
    if out.get("posterior_diagnostics"):
        io.write_table(diagnostics, out["posterior_diagnostics"])
    for gid in fig_genes:
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in gid)
        entry = {}
        if boot is not None and gid in boot.draws:
            fig = plot_bootstrap_band(expr.loc[gid], samples, boot.draws[gid], boot.fits[gid], gene_id=gid)
            path = figdir / f"{safe}.bootstrap_band.png"
            save_png(fig, path)
            entry["bootstrap_band"] = path.name
        if post is not None and gid in post.grids:
            grid, names = post.grids[gid]
            rows = post.summary[post.summary.gene_id == gid]
            sd_name = [p for p in rows["param"] if p.startswith("sd_")]
            draws = posterior_draws(grid, names, POSTERIOR_FIGURE_DRAWS, POSTERIOR_FIGURE_SEED)
            fig = plot_posterior(draws, names, rows, gene_id=gid, sd_name=sd_name[0] if sd_name else "sd_b")
            path = figdir / f"{safe}.posterior.png"
            save_png(fig, path)
            entry["posterior"] = path.name
        elif post is not None and post.diagnostics is not None:
            # the importance-sampling engine keeps no draws: the summaries as intervals
            rows = post.summary[(post.summary.gene_id == gid) & (post.summary.status == "ok")]
            if len(rows):
                fig = plot_posterior_intervals(rows, gene_id=gid)
                path = figdir / f"{safe}.posterior.png"
                save_png(fig, path)
                entry["posterior"] = path.name
        summary["figures"][gid] = entry
        if gid in set(fits["gene_id"]):
            table = ols_vs_lmm_table(fits, gid)
            summary["ols_vs_lmm"][gid] = json.loads(table.to_json(orient="records"))
    Path(out["summary"]).parent.mkdir(parents=True, exist_ok=True)
    Path(out["summary"]).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
