"""batchmix.report: statistics against hand-computed or closed-form values, and the page on synthetic inputs."""

from __future__ import annotations

import base64
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from batchmix import report
from batchmix.config import fill_defaults
from batchmix.io import read_samples

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The synthetic study: J batches x 2 conditions x m replicates, a random batch intercept.
J, M = 4, 3
SIGMA2_BATCH, SIGMA2 = 0.8, 0.25


# ---------------------------------------------------------------------------------------------
# Statistics


def test_silhouette_widths_match_hand_computed_values():
    # A = {0, 1}, B = {3, 4} on a line. Point 0: a = 1, b = mean(3, 4) = 3.5, s = 2.5 / 3.5.
    # Point 1: a = 1, b = mean(2, 3) = 2.5, s = 1.5 / 2.5. B mirrors A.
    points = np.array([[0.0], [1.0], [3.0], [4.0]])
    widths = report.silhouette_widths(points, np.array(["A", "A", "B", "B"]))
    np.testing.assert_allclose(widths, [2.5 / 3.5, 0.6, 0.6, 2.5 / 3.5])


def test_silhouette_width_of_a_singleton_is_zero_and_mixing_is_negative():
    # A = {0, 2}, B = {10}: point 0: a = 2, b = 10 -> 0.8; point 2: a = 2, b = 8 -> 0.75; 10 alone -> 0.
    widths = report.silhouette_widths(np.array([[0.0], [2.0], [10.0]]), ["A", "A", "B"])
    np.testing.assert_allclose(widths, [0.8, 0.75, 0.0])
    # Interleaved clusters: A = {0, 2}, B = {1, 3}. Point 0: a = 2, b = mean(1, 3) = 2 -> 0.
    # Point 2: a = 2, b = mean(1, 1) = 1 -> (1 - 2) / 2 = -0.5.
    widths = report.silhouette_widths(np.array([[0.0], [2.0], [1.0], [3.0]]), ["A", "A", "B", "B"])
    np.testing.assert_allclose(widths, [0.0, -0.5, -0.5, 0.0])


def test_silhouette_needs_two_clusters():
    with pytest.raises(ValueError, match="two clusters"):
        report.silhouette_widths(np.zeros((3, 2)), ["A", "A", "A"])


def test_batch_variance_share_is_the_anova_r2():
    # Column 1: values 1, 3 | 5, 7; batch means 2 and 6, grand mean 4.
    # Total SS = 9 + 1 + 1 + 9 = 20, between SS = 2 * 4 + 2 * 4 = 16, R² = 0.8.
    # Column 2: the batch means are equal (0), R² = 0. Column 3: constant, undefined.
    scores = pd.DataFrame({"PC1": [1.0, 3.0, 5.0, 7.0], "PC2": [-1.0, 1.0, 1.0, -1.0], "PC3": [2.0] * 4},
                          index=list("abcd"))
    batch = pd.Series(["x", "x", "y", "y"], index=list("abcd"))
    share = report.batch_variance_share(scores, batch)
    assert share["PC1"] == pytest.approx(0.8)
    assert share["PC2"] == pytest.approx(0.0)
    assert np.isnan(share["PC3"])


def test_pca_of_a_rank_one_table_has_one_component_with_known_scores():
    # Gene g = a_g * t: after centring every gene, the samples lie on one line along t - mean(t),
    # with scores ±|a| (t - mean t) and all variance on PC1.
    t = np.array([1.0, 2.0, 4.0, 9.0])
    a = np.array([3.0, -4.0])  # |a| = 5
    table = pd.DataFrame(np.outer(a, t), index=["g1", "g2"], columns=list("abcd"))
    result = report.pca(table)
    assert list(result.scores.columns) == ["PC1"]
    assert result.variance_ratio["PC1"] == pytest.approx(1.0)
    expected = 5.0 * (t - t.mean())
    # Sign convention: the largest absolute loading (gene g2, a = -4) is positive, so scores = -|a|(t - mean).
    np.testing.assert_allclose(result.scores["PC1"].to_numpy(), -expected)


def test_pca_variance_ratios_are_the_covariance_eigenvalues():
    rng = np.random.default_rng(1)
    table = pd.DataFrame(rng.normal(size=(40, 8)), columns=[f"s{i}" for i in range(8)])
    table.index = [f"g{i}" for i in range(40)]
    result = report.pca(table, n_top=40)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(table.to_numpy())))[::-1][:7]
    np.testing.assert_allclose(result.variance_ratio.to_numpy(), eigenvalues / np.trace(np.cov(table.to_numpy())))
    # The scores keep the distances between samples.
    full = report.pca(table, n_top=40).scores.to_numpy()
    centred = table.to_numpy() - table.to_numpy().mean(axis=1, keepdims=True)
    d_scores = np.linalg.norm(full[0] - full[1])
    d_data = np.linalg.norm(centred[:, 0] - centred[:, 1])
    assert d_scores == pytest.approx(d_data)


def test_pca_uses_the_most_variable_complete_genes():
    table = pd.DataFrame(
        {"a": [0.0, 0.0, 0.0, np.nan], "b": [1.0, 10.0, 0.1, 50.0], "c": [2.0, -10.0, 0.0, 0.0]},
        index=["low", "high", "flat", "missing"],
    )
    assert report.pca(table, n_top=2).genes == ["high", "low"]


def test_gene_accounting_counts_every_status():
    fits = pd.DataFrame({
        "gene_id": [f"g{i}" for i in range(9)],
        "status": ["ok", "ok", "ok", "singular", "filtered:low_counts", "filtered:low_counts",
                   "failed:no convergence", "filtered:all_missing", "ok"],
    })
    table = report.gene_accounting(fits)
    assert table.to_dict("records") == [
        {"outcome": "fitted", "status": "ok", "reason": "", "n_genes": 4},
        {"outcome": "fitted", "status": "singular", "reason": "", "n_genes": 1},
        {"outcome": "filtered", "status": "filtered:low_counts", "reason": "low_counts", "n_genes": 2},
        {"outcome": "filtered", "status": "filtered:all_missing", "reason": "all_missing", "n_genes": 1},
        {"outcome": "failed", "status": "failed:no convergence", "reason": "no convergence", "n_genes": 1},
    ]
    assert table["n_genes"].sum() == len(fits)


def test_model_comparison_counts_and_bh_agree_with_statsmodels():
    p = np.array([0.001, 0.02, 0.03, 0.04, 0.2, 0.9, np.nan])
    fits = pd.DataFrame({
        "gene_id": [f"g{i}" for i in range(8)],
        "status": ["ok"] * 6 + ["singular", "filtered:low_counts"],
        "aic": [10, 12, 30, 5, 7, 8, np.nan, np.nan],
        "ols_aic": [11, 11, 40, 6, 7, 9, 3, np.nan],
        "bic": [10, 12, 30, 5, 7, 8, 1, np.nan],
        "ols_bic": [9, 11, 31, 6, 8, 9, 2, np.nan],
        "lrt_p": list(p) + [0.0001],
    })
    table = report.model_comparison(fits).set_index("criterion")
    # 7 fitted genes (the filtered one is left out). AIC: better for g0, g2, g3, g5 (g4 ties, g6 has no AIC).
    assert table.loc["AIC (lower is better)"].to_dict() == {"lmm_better": 4, "ols_better": 2, "not_available": 1, "n_genes": 7}
    # BIC: better for g2, g3, g4, g5, g6.
    assert table.loc["BIC (lower is better)"].to_dict() == {"lmm_better": 5, "ols_better": 2, "not_available": 0, "n_genes": 7}
    assert table.loc["LRT p < 0.05", "lmm_better"] == 4
    q = multipletests(p[:6], method="fdr_bh")[1]
    assert table.loc["LRT BH q < 0.05", "lmm_better"] == int(np.sum(q < 0.05))
    assert table.loc["LRT BH q < 0.05", "not_available"] == 1


def test_top_batch_genes_orders_fitted_genes_by_batch_fraction():
    fits = pd.DataFrame({
        "gene_id": ["a", "b", "c", "d"],
        "status": ["ok", "filtered:low_counts", "singular", "ok"],
        "frac_Batch": [0.2, np.nan, 0.0, 0.7],
        "frac_Infection": [0.5, np.nan, 0.6, 0.1],
        "frac_residual": [0.3, np.nan, 0.4, 0.2],
    })
    top = report.top_batch_genes(fits, "Batch", n=0)
    assert list(top["gene_id"]) == ["d", "a", "c"]
    assert list(top.columns) == ["gene_id", "status", "frac_Batch", "frac_Infection", "frac_residual"]
    assert list(report.top_batch_genes(fits, "Batch", n=1)["gene_id"]) == ["d"]
    assert report.top_batch_genes(fits, "Lane", n=3).empty


def test_default_shrinkage_genes_are_at_percentiles_of_the_batch_share():
    # Eleven fitted genes with shares 0.0, 0.1, ..., 1.0 (shuffled), plus a singular and a filtered
    # gene that are never picked. Percentile p picks rank round(p / 100 * 10): 9, 7, 5, 3.
    shares = [0.5, 0.1, 0.9, 0.0, 0.7, 1.0, 0.3, 0.8, 0.2, 0.6, 0.4]
    fits = pd.DataFrame({
        "gene_id": [f"g{int(10 * v)}" for v in shares] + ["singular", "filtered"],
        "status": ["ok"] * 11 + ["singular", "filtered:low_counts"],
        "frac_Batch": shares + [0.85, np.nan],
    })
    assert report.choose_shrinkage_genes(fits, [], "Batch") == (["g9", "g7", "g5", "g3"], [])
    # Fewer genes than percentiles: each gene once.
    assert report.choose_shrinkage_genes(fits.iloc[[0, 2]], [], "Batch") == (["g9", "g5"], [])
    assert report.choose_shrinkage_genes(fits, [], "Lane") == ([], [])


def test_condition_column_is_the_first_fixed_factor():
    samples = pd.DataFrame({"Infection": ["Mock", "CoV"], "Days": [0.0, 1.0], "Batch": ["1", "2"], "Sex": ["f", "m"]})
    assert report.condition_column("~ Infection + (1|Batch)", samples) == "Infection"
    assert report.condition_column("~ Days + Sex + (Days|Batch)", samples) == "Sex"
    assert report.condition_column("~ Days + (Days|Batch)", samples) is None
    assert report.condition_column("~ 1 + (1|Batch)", samples) is None


def test_shrinkage_group_prefers_the_batch():
    assert report.shrinkage_group("~ x + (1|donor) + (1|Batch)", "Batch") == "Batch"
    assert report.shrinkage_group("~ x + (1|donor)", "Batch") == "donor"
    assert report.shrinkage_group("~ x + Batch", "Batch") is None


def test_choose_shrinkage_genes_reports_requested_genes_that_cannot_be_drawn():
    fits = pd.DataFrame({"gene_id": ["a", "b", "c"], "status": ["ok", "filtered:low_counts", "ok"],
                         "frac_Batch": [0.1, np.nan, 0.9]})
    chosen, skipped = report.choose_shrinkage_genes(fits, ["a", "b", "zz"], "Batch")
    assert chosen == ["a"]
    assert skipped == ["b (filtered:low_counts)", "zz (not in the expression table)"]


# ---------------------------------------------------------------------------------------------
# Synthetic study with closed-form mixed-model estimates


def _samples() -> pd.DataFrame:
    rows = []
    for j in range(J):
        for condition in ("Mock", "CoV"):
            for r in range(M):
                rows.append({"sample_id": f"B{j + 1}_{condition}_{r + 1}", "Infection": condition, "Batch": f"B{j + 1}"})
    return pd.DataFrame(rows).set_index("sample_id")


def _balanced_fit(y: pd.Series, samples: pd.DataFrame, sigma2_batch: float, sigma2: float) -> tuple[dict, dict]:
    """Closed-form GLS fit of y ~ Infection + (1|Batch) for a balanced design with known variances.

    In a balanced design the GLS estimates are the OLS ones: Intercept = mean of CoV (the
    reference level, sorted first), slope = mean(Mock) - mean(CoV). Var(mean of a condition) =
    σ_b²/J + σ²/(J m); the difference cancels the batch: Var = 2 σ²/(J m). The BLUP of batch j is
    σ_b² / (σ_b² + σ²/n_j) times the batch's mean residual from the fixed fit (n_j = 2 m).
    """
    cov_mean = y[samples["Infection"] == "CoV"].mean()
    mock_mean = y[samples["Infection"] == "Mock"].mean()
    fixed = np.where(samples["Infection"] == "CoV", cov_mean, mock_mean)
    residual = (y - fixed).groupby(samples["Batch"]).mean()
    shrink = sigma2_batch / (sigma2_batch + sigma2 / (2 * M))
    blups = shrink * residual
    row = {
        "coef_Intercept": cov_mean, "coef_InfectionMock": mock_mean - cov_mean,
        "se_Intercept": np.sqrt(sigma2_batch / J + sigma2 / (J * M)),
        "se_InfectionMock": np.sqrt(2 * sigma2 / (J * M)),
        "var_Batch": sigma2_batch, "var_residual": sigma2,
    }
    return row, blups.to_dict()


def _write_tsv(table: pd.DataFrame, path: Path, index: bool = False) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = table.to_csv(sep="\t", index=index, lineterminator="\n", na_rep="NA")
    if path.name.endswith(".gz"):
        with gzip.GzipFile(path, "wb", mtime=0) as fh:
            fh.write(text.encode())
    else:
        path.write_text(text)
    return str(path)


def make_study(root: Path, model: str = "~ Infection + (1|Batch)", n_genes: int = 12, reversals: int = 3,
               simpson: bool = True) -> tuple[dict, dict]:
    """Write every report input of a synthetic run; returns (config, inputs)."""
    rng = np.random.default_rng(7)
    samples = _samples()
    n = len(samples)
    genes = [f"G{i:02d}" for i in range(n_genes)]
    batch_codes = samples["Batch"].str[1:].astype(int).to_numpy() - 1
    expression = pd.DataFrame(index=genes, columns=samples.index, dtype=float)
    for g in genes:
        batch_effect = rng.normal(0, np.sqrt(SIGMA2_BATCH), J)[batch_codes]
        expression.loc[g] = 6 + 1.5 * (samples["Infection"] == "CoV") + batch_effect + rng.normal(0, 0.5, n)
    has_random = "|" in model
    status = ["ok"] * (n_genes - 3) + ["singular", "filtered:low_counts", "failed:no convergence"]
    fit_rows, blup_rows = [], []
    for g, s in zip(genes, status):
        row = {"gene_id": g, "status": s, "n": n}
        if s in ("ok", "singular"):
            fixed, blups = _balanced_fit(expression.loc[g], samples, SIGMA2_BATCH, SIGMA2)
            frac_batch = rng.uniform(0.05, 0.8)
            row.update(fixed)
            row.update({
                "loglik": -20.0, "aic": 48.0 - 10 * frac_batch, "bic": 52.0 - 10 * frac_batch,
                "ols_loglik": -25.0, "ols_aic": 44.0, "ols_bic": 47.0,
                "lrt_stat": 10 * frac_batch, "lrt_p": float(np.exp(-10 * frac_batch)),
                "frac_Infection": (1 - frac_batch) / 2, "frac_Batch": frac_batch, "frac_residual": (1 - frac_batch) / 2,
                "d0": 4.0, "s0": 0.5,
            })
            if has_random:
                blup_rows += [{"gene_id": g, "group": "Batch", "level": b, "term": "Intercept", "value": v}
                              for b, v in blups.items()]
        fit_rows.append(row)
    gene_fits = pd.DataFrame(fit_rows)
    if not has_random:
        gene_fits = gene_fits.drop(columns=["var_Batch", "frac_Batch"])
    gene_status = pd.DataFrame({"gene_id": genes,
                                "status": ["filtered:low_counts" if s == "filtered:low_counts" else "ok" for s in status],
                                "base_mean": 100.0, "n_observed": n})
    ranks = np.arange(n_genes - 1, dtype=float)
    mean_sd = pd.concat([
        pd.DataFrame({"rank_of_mean": ranks, "mean": ranks, "sd": 1 + ranks / 10, "running_median_sd": 1 + ranks / 10,
                      "scale": "before"}),
        pd.DataFrame({"rank_of_mean": ranks, "mean": ranks, "sd": 0.5 + 0 * ranks, "running_median_sd": 0.5 + 0 * ranks,
                      "scale": "after"}),
    ])
    pairs = pd.DataFrame({
        "gene_a": genes[:reversals], "gene_b": genes[1:reversals + 1], "r_pooled": 0.7, "r_within": -0.6,
        "r_between": 0.95, "between_share": 1.4, "p": 1e-6, "q": 1e-4, "n_batches_within_sign": 4,
        "per_batch_r": "B1:-0.5;B2:-0.6;B3:-0.7;B4:-0.4",
    })
    d = root / "results"
    counts_path = root / "data" / "counts.tsv"
    counts_path.parent.mkdir(parents=True, exist_ok=True)
    counts_path.write_text("gene_id\t" + "\t".join(samples.index) + "\n")
    inputs = {
        "vst_info": str(d / "vst/info.json"),
        "size_factors": _write_tsv(pd.DataFrame({"sample_id": samples.index, "size_factor": np.linspace(0.8, 1.2, n)}),
                                   d / "vst/size_factors.tsv"),
        "gene_status": _write_tsv(gene_status, d / "vst/gene_status.tsv"),
        "mean_sd": _write_tsv(mean_sd, d / "vst/mean_sd.tsv"),
        "vst_expression": _write_tsv(expression.rename_axis("gene_id"), d / "vst/expression.tsv.gz", index=True),
        "gene_fits": _write_tsv(gene_fits, d / "lmm/gene_fits.tsv"),
        "blups": _write_tsv(pd.DataFrame(blup_rows, columns=["gene_id", "group", "level", "term", "value"]),
                            d / "lmm/blups.tsv"),
        "samples": _write_tsv(samples, root / "data/samples.tsv", index=True),
        "expression": str(counts_path),
    }
    (d / "vst/info.json").write_text(json.dumps({
        "input_type": "counts", "n_genes": n_genes, "n_samples": n, "n_genes_ok": n_genes - 1, "n_genes_filtered": 1,
        "vst_fit_type_used": "parametric", "vst_fit_type_requested": "parametric", "vst_blind": True, "vst_nsub": None,
        "size_factor_method": "ratio", "before_scale": "log2(normalised count + 1)", "notes": [],
    }))
    if has_random:
        corrected = expression.copy()
        for g, s in zip(genes, status):
            if s in ("ok", "singular"):
                _, blups = _balanced_fit(expression.loc[g], samples, SIGMA2_BATCH, SIGMA2)
                corrected.loc[g] -= samples["Batch"].map(blups).to_numpy()
        inputs["corrected"] = _write_tsv(corrected.rename_axis("gene_id"), d / "corrected/expression.tsv.gz", index=True)
    if simpson:
        inputs["reversals"] = _write_tsv(pairs, d / "simpson/reversals.tsv")
        summary = {"n_genes_scanned": n_genes - 1, "n_pairs": (n_genes - 1) * (n_genes - 2) // 2, "n_candidates": 5,
                   "n_reversals": reversals, "fdr": 0.05, "method": "bh", "adjust_for": []}
        (d / "simpson/summary.json").write_text(json.dumps(summary))
        inputs["simpson_summary"] = str(d / "simpson/summary.json")
        from matplotlib.figure import Figure
        fig = Figure(figsize=(2, 2))
        fig.add_subplot().plot([0, 1], [1, 0])
        fig.savefig(d / "simpson/top_pairs.png")
        inputs["simpson_figure"] = str(d / "simpson/top_pairs.png")
    config = fill_defaults({
        "expression": inputs["expression"], "samples": inputs["samples"], "input_type": "counts", "model": model,
        "batch": "Batch", "simpson": {"enabled": simpson, "fdr": 0.05}, "report": {"genes": [], "top_pairs": 2},
    })
    return config, inputs


def _read_study(inputs: dict) -> dict:
    return report.load_tables(inputs)


def test_shrinkage_estimates_match_the_balanced_closed_form(tmp_path):
    config, inputs = make_study(tmp_path)
    tables = _read_study(inputs)
    samples = tables["samples"]
    y = tables["vst_expression"].loc["G00"]
    est = report.shrinkage_estimates("G00", tables["vst_expression"], samples, tables["gene_fits"], tables["blups"],
                                     config["model"], "Batch")
    assert est.kind == "categorical" and est.x == "Infection" and est.band_note == ""
    cells = est.cells.set_index(["group", "x"])
    cov_mean = y[samples["Infection"] == "CoV"].mean()
    mock_mean = y[samples["Infection"] == "Mock"].mean()
    for j in range(J):
        batch = f"B{j + 1}"
        in_batch = samples["Batch"] == batch
        batch_residual = np.mean(np.where(samples.loc[in_batch, "Infection"] == "CoV",
                                          y[in_batch] - cov_mean, y[in_batch] - mock_mean))
        blup = SIGMA2_BATCH / (SIGMA2_BATCH + SIGMA2 / (2 * M)) * batch_residual
        for condition, population in (("CoV", cov_mean), ("Mock", mock_mean)):
            cell = cells.loc[(batch, condition)]
            assert cell["n"] == M
            assert cell["ols"] == pytest.approx(y[in_batch & (samples["Infection"] == condition)].mean())
            assert cell["population"] == pytest.approx(population)
            assert cell["lmm"] == pytest.approx(population + blup)
            # Shrinkage: the LMM prediction lies between the population fit and the OLS cell mean of a
            # balanced batch, strictly inside when the batch deviates.
    # Var of a condition's population mean: σ_b²/J + σ²/(J m), for either condition.
    expected_se = np.sqrt(SIGMA2_BATCH / J + SIGMA2 / (J * M))
    np.testing.assert_allclose(est.cells["population_se"], expected_se, rtol=1e-9)


def test_shrinkage_band_is_dropped_when_standard_errors_disagree(tmp_path):
    config, inputs = make_study(tmp_path)
    tables = _read_study(inputs)
    fits = tables["gene_fits"].copy()
    fits.loc[fits["gene_id"] == "G00", "se_Intercept"] *= 1.5
    est = report.shrinkage_estimates("G00", tables["vst_expression"], tables["samples"], fits, tables["blups"],
                                     config["model"], "Batch")
    assert "differ" in est.band_note
    assert est.cells["population_se"].isna().all()


# ---------------------------------------------------------------------------------------------
# Against lme4 (tests/data/lme4: lme4 + lmerTest fits made by make_fixtures.R)

LME4 = REPO / "tests/data/lme4"


def _lme4_fit(dataset: str, model: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """lme4's fits of one model as a gene_fits table (one row per gene) and its BLUPs."""
    fits = pd.read_csv(LME4 / "fits.tsv.gz", sep="\t", dtype={"gene_id": str})
    fits = fits[(fits["dataset"] == dataset) & (fits["model"] == model)]
    wide = fits.pivot(index="gene_id", columns="stat", values="value").reset_index()
    wide["status"] = np.where(wide["singular"] > 0, "singular", "ok")
    blups = pd.read_csv(LME4 / "blups.tsv.gz", sep="\t", dtype={"gene_id": str, "level": str})
    blups = blups[(blups["dataset"] == dataset) & (blups["model"] == model)]
    return wide, blups[["gene_id", "group", "level", "term", "value"]]


def _sleepstudy() -> tuple[pd.DataFrame, pd.DataFrame]:
    data = pd.read_csv(LME4 / "sleepstudy.csv.gz")
    ids = [f"s{i:03d}" for i in range(len(data))]
    expression = pd.DataFrame([data["Reaction"].to_numpy()], index=["Reaction"], columns=ids)
    samples = pd.DataFrame({"Days": data["Days"].astype(float).to_numpy(), "Subject": data["Subject"].to_numpy()},
                           index=pd.Index(ids, name="sample_id"))
    return expression, samples


@pytest.mark.parametrize("model,formula", [
    ("slopes_reml", "Reaction ~ Days + (Days | Subject)"),
    ("uncorrelated_reml", "Reaction ~ Days + (Days || Subject)"),
    ("intercept_ml", "Reaction ~ Days + (1 | Subject)"),
])
def test_sleepstudy_band_and_predictions_match_lme4(model, formula):
    expression, samples = _sleepstudy()
    fits, blups = _lme4_fit("sleepstudy", model)
    est = report.shrinkage_estimates("Reaction", expression, samples, fits, blups, formula, "Subject")
    assert est.kind == "numeric" and est.x == "Days" and est.band_note == ""
    row = fits.iloc[0]
    obs = est.observations
    # At Days = 0 the population fit is the intercept and its standard error lme4's se_Intercept.
    day0 = obs[obs["x"] == 0.0]
    np.testing.assert_allclose(day0["population"], row["coef_Intercept"], rtol=1e-12)
    np.testing.assert_allclose(day0["population_se"], row["se_Intercept"], rtol=1e-5)
    # The LMM line of subject 308: lme4's fixed effects plus its conditional modes.
    own = blups[blups["level"] == "308"].set_index("term")["value"]
    subject = obs[obs["group"] == "308"]
    expected = (row["coef_Intercept"] + own.get("Intercept", 0.0)
                + (row["coef_Days"] + own.get("Days", 0.0)) * subject["x"].to_numpy(dtype=float))
    np.testing.assert_allclose(subject["lmm"], expected, rtol=1e-10)


def test_categorical_band_matches_lme4_standard_errors_on_an_unbalanced_design():
    samples = read_samples(LME4 / "gse147507_samples.tsv")
    expression = pd.read_csv(LME4 / "gse147507_vst.tsv.gz", sep="\t", index_col=0)
    fits, blups = _lme4_fit("gse147507", "batch_reml")
    formula = "~ Infection + (1 | Batch)"
    coefficients = [c.removeprefix("coef_Infection") for c in fits.columns if c.startswith("coef_Infection")]
    reference = sorted(set(samples["Infection"]) - set(coefficients))[0]
    checked = 0
    for gene in fits.loc[fits["status"] == "ok", "gene_id"][:15]:
        est = report.shrinkage_estimates(gene, expression, samples, fits, blups, formula, "Batch")
        assert est.band_note == "", gene
        # Every cell of the reference condition has population fit = intercept, se = lme4's se_Intercept.
        cells = est.cells[est.cells["x"] == reference]
        row = fits.set_index("gene_id").loc[gene]
        np.testing.assert_allclose(cells["population"], row["coef_Intercept"], rtol=1e-10)
        np.testing.assert_allclose(cells["population_se"], row["se_Intercept"], rtol=1e-4)
        checked += 1
    assert checked == 15


# ---------------------------------------------------------------------------------------------
# The page


def _build(tmp_path: Path, **study) -> tuple[str, Path, dict]:
    config, inputs = make_study(tmp_path, **study)
    html_path = tmp_path / "results/report.html"
    figures = tmp_path / "results/figures"
    report.build_report(config, inputs, html_path, figures)
    return html_path.read_text(), figures, config


@pytest.fixture(scope="module")
def default_build(tmp_path_factory) -> tuple[str, Path, Path]:
    """The page of the default synthetic study, built once: (page, figures directory, study root)."""
    root = tmp_path_factory.mktemp("default_report")
    page, figures, _ = _build(root)
    return page, figures, root


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_has_every_section_and_embeds_every_figure(default_build):
    page, figures, _ = default_build
    for section in ("run", "batch", "lmm", "shrinkage", "vst", "simpson"):
        assert f'<section id="{section}">' in page
    images = _images(page)
    assert page.count("<img ") == len(images)
    assert all(image.startswith(PNG_SIGNATURE) for image in images)
    written = {p.name: p.read_bytes() for p in figures.glob("*.png")}
    assert set(written) == {"pca.png", "batch_share.png", "variance_fractions.png", "top_batch_genes.png",
                            "shrinkage_1.png", "shrinkage_2.png", "shrinkage_3.png", "shrinkage_4.png", "mean_sd.png"}
    # Every written figure is the one embedded; the Simpson figure is embedded as given.
    assert set(written.values()) <= set(images)
    assert len(images) == len(written) + 1
    # Offline: nothing is fetched from the network.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<link" not in page


def test_report_counts_genes_and_links_tables_as_tsv(default_build):
    page, _, _ = default_build
    assert "Every input gene is accounted for: 12 in = 10 fitted + 1 filtered + 1 failed" in page
    assert "failed:no convergence" in page
    assert "limma-style empirical Bayes (prior degrees of freedom d0 = 4, prior sd s0 = 0.5)" in page
    downloads = dict(re.findall(r'href="data:text/tab-separated-values;base64,([A-Za-z0-9+/=]+)" download="([^"]+)"', page)[::1])
    names = {name: base64.b64decode(data).decode() for data, name in downloads.items()}
    assert {"gene_accounting.tsv", "genes_not_fitted.tsv", "top_batch_genes.tsv", "lmm_vs_ols.tsv",
            "simpson_reversals.tsv", "size_factors.tsv", "batch_metrics.tsv"} <= set(names)
    not_fitted = names["genes_not_fitted.tsv"].splitlines()
    assert not_fitted == ["gene_id\tstatus", "G10\tfiltered:low_counts", "G11\tfailed:no convergence"]
    reversals = names["simpson_reversals.tsv"].splitlines()
    assert reversals[0].split("\t")[-1] == "per_batch_r" and len(reversals) == 4
    # The page's table leaves the long per-batch correlations to the download.
    header = re.search(r'<table id="table-simpson_reversals" class="sortable">\s*<thead>(.*?)</thead>', page, re.S).group(1)
    assert re.findall(r"<th[^>]*>([^<]+)</th>", header) == [
        "gene_a", "gene_b", "r_pooled", "r_within", "r_between", "between_share", "p", "q", "n_batches_within_sign"]


def test_report_is_deterministic(default_build, tmp_path):
    first, figures_a, root_a = default_build
    second, figures_b, _ = _build(tmp_path)
    # The input paths differ between the two runs; nothing else may.
    assert first.replace(str(root_a), "") == second.replace(str(tmp_path), "")
    for png in figures_a.glob("*.png"):
        assert png.read_bytes() == (figures_b / png.name).read_bytes(), png.name


def test_report_without_random_term_has_no_corrected_section_and_no_shrinkage(tmp_path):
    page, figures, _ = _build(tmp_path, model="~ Infection + Batch")
    assert 'id="no-corrected"' in page and 'id="no-random"' in page and 'id="no-shrinkage"' in page
    assert "after correction" not in page
    assert not list(figures.glob("shrinkage_*.png"))
    assert "lmm_vs_ols.tsv" not in page


def test_report_says_so_when_no_reversal_passes_the_fdr(tmp_path):
    page, _, _ = _build(tmp_path, reversals=0)
    assert 'id="no-reversals"' in page
    assert "No gene pair reverses its correlation at FDR 0.05" in page
    assert "simpson_reversals.tsv" not in page


def test_report_without_simpson_scan(tmp_path):
    page, _, _ = _build(tmp_path, simpson=False)
    assert 'id="simpson-disabled"' in page


def test_snakemake_report_caption_covers_every_figure(default_build):
    _, figures, _ = default_build
    caption = (REPO / "workflow/report/figures.rst").read_text()
    keys = set(re.findall(r'"(\w+)":', caption))
    for png in figures.glob("*.png"):
        assert re.sub(r"_\d+$", "", png.stem) in keys, png.name
    assert keys == {"pca", "batch_share", "variance_fractions", "top_batch_genes", "shrinkage", "mean_sd"}
