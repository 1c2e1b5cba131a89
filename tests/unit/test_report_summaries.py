"""batchmix.report.summaries: the report's statistics against hand-computed or closed-form values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from batchmix.lmm import model_metadata
from batchmix.report import summaries
from statsmodels.stats.multitest import multipletests

# A sample sheet for the model metadata: 2 batches x 2 conditions x 2 replicates.
SHEET = pd.DataFrame(
    {"Infection": ["Mock", "CoV"] * 4, "Batch": ["B1"] * 4 + ["B2"] * 4},
    index=pd.Index([f"s{i}" for i in range(8)], name="sample_id"),
)

# ---------------------------------------------------------------------------------------------
# Statistics


def test_silhouette_widths_match_hand_computed_values():
    # A = {0, 1}, B = {3, 4} on a line. Point 0: a = 1, b = mean(3, 4) = 3.5, s = 2.5 / 3.5.
    # Point 1: a = 1, b = mean(2, 3) = 2.5, s = 1.5 / 2.5. B mirrors A.
    points = np.array([[0.0], [1.0], [3.0], [4.0]])
    widths = summaries.silhouette_widths(points, np.array(["A", "A", "B", "B"]))
    np.testing.assert_allclose(widths, [2.5 / 3.5, 0.6, 0.6, 2.5 / 3.5])


def test_silhouette_width_of_a_singleton_is_zero_and_mixing_is_negative():
    # A = {0, 2}, B = {10}: point 0: a = 2, b = 10 -> 0.8; point 2: a = 2, b = 8 -> 0.75; 10 alone -> 0.
    widths = summaries.silhouette_widths(np.array([[0.0], [2.0], [10.0]]), ["A", "A", "B"])
    np.testing.assert_allclose(widths, [0.8, 0.75, 0.0])
    # Interleaved clusters: A = {0, 2}, B = {1, 3}. Point 0: a = 2, b = mean(1, 3) = 2 -> 0.
    # Point 2: a = 2, b = mean(1, 1) = 1 -> (1 - 2) / 2 = -0.5.
    widths = summaries.silhouette_widths(np.array([[0.0], [2.0], [1.0], [3.0]]), ["A", "A", "B", "B"])
    np.testing.assert_allclose(widths, [0.0, -0.5, -0.5, 0.0])


def test_silhouette_needs_two_clusters():
    with pytest.raises(ValueError, match="two clusters"):
        summaries.silhouette_widths(np.zeros((3, 2)), ["A", "A", "A"])


def test_batch_variance_share_is_the_anova_r2():
    # Column 1: values 1, 3 | 5, 7; batch means 2 and 6, grand mean 4.
    # Total SS = 9 + 1 + 1 + 9 = 20, between SS = 2 * 4 + 2 * 4 = 16, R² = 0.8.
    # Column 2: the batch means are equal (0), R² = 0. Column 3: constant, undefined.
    scores = pd.DataFrame(
        {"PC1": [1.0, 3.0, 5.0, 7.0], "PC2": [-1.0, 1.0, 1.0, -1.0], "PC3": [2.0] * 4}, index=list("abcd")
    )
    batch = pd.Series(["x", "x", "y", "y"], index=list("abcd"))
    share = summaries.batch_variance_share(scores, batch)
    assert share["PC1"] == pytest.approx(0.8)
    assert share["PC2"] == pytest.approx(0.0)
    assert np.isnan(share["PC3"])


def test_pca_of_a_rank_one_table_has_one_component_with_known_scores():
    # Gene g = a_g * t: after centring every gene, the samples lie on one line along t - mean(t),
    # with scores ±|a| (t - mean t) and all variance on PC1.
    t = np.array([1.0, 2.0, 4.0, 9.0])
    a = np.array([3.0, -4.0])  # |a| = 5
    table = pd.DataFrame(np.outer(a, t), index=["g1", "g2"], columns=list("abcd"))
    result = summaries.pca(table)
    assert list(result.scores.columns) == ["PC1"]
    assert result.variance_ratio["PC1"] == pytest.approx(1.0)
    expected = 5.0 * (t - t.mean())
    # Sign convention: the largest absolute loading (gene g2, a = -4) is positive, so scores = -|a|(t - mean).
    np.testing.assert_allclose(result.scores["PC1"].to_numpy(), -expected)


def test_pca_variance_ratios_are_the_covariance_eigenvalues():
    rng = np.random.default_rng(1)
    table = pd.DataFrame(rng.normal(size=(40, 8)), columns=[f"s{i}" for i in range(8)])
    table.index = [f"g{i}" for i in range(40)]
    result = summaries.pca(table, n_top=40)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(table.to_numpy())))[::-1][:7]
    np.testing.assert_allclose(result.variance_ratio.to_numpy(), eigenvalues / np.trace(np.cov(table.to_numpy())))
    # The scores keep the distances between samples.
    full = summaries.pca(table, n_top=40).scores.to_numpy()
    centred = table.to_numpy() - table.to_numpy().mean(axis=1, keepdims=True)
    d_scores = np.linalg.norm(full[0] - full[1])
    d_data = np.linalg.norm(centred[:, 0] - centred[:, 1])
    assert d_scores == pytest.approx(d_data)


def test_pca_uses_the_most_variable_complete_genes():
    table = pd.DataFrame(
        {"a": [0.0, 0.0, 0.0, np.nan], "b": [1.0, 10.0, 0.1, 50.0], "c": [2.0, -10.0, 0.0, 0.0]},
        index=["low", "high", "flat", "missing"],
    )
    assert summaries.pca(table, n_top=2).genes == ["high", "low"]


def test_gene_accounting_counts_every_status():
    fits = pd.DataFrame(
        {
            "gene_id": [f"g{i}" for i in range(9)],
            "status": [
                "ok",
                "ok",
                "ok",
                "singular",
                "filtered:low_counts",
                "filtered:low_counts",
                "failed:no convergence",
                "filtered:all_missing",
                "ok",
            ],
        }
    )
    table = summaries.gene_accounting(fits)
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
    fits = pd.DataFrame(
        {
            "gene_id": [f"g{i}" for i in range(8)],
            "status": ["ok"] * 6 + ["singular", "filtered:low_counts"],
            "aic": [10, 12, 30, 5, 7, 8, np.nan, np.nan],
            "ols_aic": [11, 11, 40, 6, 7, 9, 3, np.nan],
            "bic": [10, 12, 30, 5, 7, 8, 1, np.nan],
            "ols_bic": [9, 11, 31, 6, 8, 9, 2, np.nan],
            "lrt_p": list(p) + [0.0001],
        }
    )
    table = summaries.model_comparison(fits).set_index("criterion")
    # 7 fitted genes (the filtered one is left out). AIC: better for g0, g2, g3, g5 (g4 ties, g6 has no AIC).
    assert table.loc["AIC (lower is better)"].to_dict() == {
        "lmm_better": 4,
        "ols_better": 2,
        "not_available": 1,
        "n_genes": 7,
    }
    # BIC: better for g2, g3, g4, g5, g6.
    assert table.loc["BIC (lower is better)"].to_dict() == {
        "lmm_better": 5,
        "ols_better": 2,
        "not_available": 0,
        "n_genes": 7,
    }
    assert table.loc["LRT p < 0.05", "lmm_better"] == 4
    q = multipletests(p[:6], method="fdr_bh")[1]
    assert table.loc["LRT BH q < 0.05", "lmm_better"] == int(np.sum(q < 0.05))
    assert table.loc["LRT BH q < 0.05", "not_available"] == 1


def test_top_batch_genes_orders_fitted_genes_by_batch_fraction():
    fits = pd.DataFrame(
        {
            "gene_id": ["a", "b", "c", "d"],
            "status": ["ok", "filtered:low_counts", "singular", "ok"],
            "frac_Batch": [0.2, np.nan, 0.0, 0.7],
            "frac_Infection": [0.5, np.nan, 0.6, 0.1],
            "frac_residual": [0.3, np.nan, 0.4, 0.2],
        }
    )
    metadata = model_metadata("~ Infection + (1|Batch)", SHEET)
    top = summaries.top_batch_genes(fits, metadata, "Batch", n=0)
    assert list(top["gene_id"]) == ["d", "a", "c"]
    # The metadata's order: fixed fractions, random ones, the residual last.
    assert list(top.columns) == ["gene_id", "status", "frac_Infection", "frac_Batch", "frac_residual"]
    assert list(summaries.top_batch_genes(fits, metadata, "Batch", n=1)["gene_id"]) == ["d"]
    assert summaries.top_batch_genes(fits, metadata, "Lane", n=3).empty


def test_fraction_columns_come_from_the_metadata_with_the_clash_rule():
    # (1|Batch) + (0 + Days|Batch): two random terms grouped by Batch, frac_Batch and frac_Batch_Days.
    sheet = SHEET.assign(Days=[0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0])
    metadata = model_metadata("~ Days + (1|Batch) + (0 + Days|Batch)", sheet)
    fits = pd.DataFrame(
        {
            "gene_id": ["a", "b"],
            "status": ["ok", "ok"],
            "frac_Days": [0.1, 0.2],
            "frac_Batch": [0.5, 0.1],
            "frac_Batch_Days": [0.3, 0.3],
            "frac_residual": [0.1, 0.4],
            "frac_unrelated": [0.0, 0.0],
        }
    )
    assert summaries.fraction_columns(fits, metadata) == ["frac_Days", "frac_Batch", "frac_Batch_Days", "frac_residual"]
    assert summaries.group_fraction_column(metadata, "Batch") == "frac_Batch"
    assert summaries.component_labels(metadata) == {
        "frac_Days": "Days",
        "frac_Batch": "Batch (Intercept)",
        "frac_Batch_Days": "Batch (Days)",
        "frac_residual": "Residuals",
    }
    assert summaries.component_labels(model_metadata("~ Infection + (1|Batch)", SHEET)) == {
        "frac_Infection": "Infection",
        "frac_Batch": "Batch",
        "frac_residual": "Residuals",
    }
    # By decreasing median over the fitted genes (0.3, 0.3, 0.15), ties in table order, residual last.
    assert summaries.component_order(fits, metadata) == ["frac_Batch", "frac_Batch_Days", "frac_Days", "frac_residual"]


def test_default_shrinkage_genes_are_at_percentiles_of_the_batch_share():
    # Eleven fitted genes with shares 0.0, 0.1, ..., 1.0 (shuffled), plus a singular and a filtered
    # gene that are never picked. Percentile p picks rank round(p / 100 * 10): 9, 7, 5, 3.
    shares = [0.5, 0.1, 0.9, 0.0, 0.7, 1.0, 0.3, 0.8, 0.2, 0.6, 0.4]
    fits = pd.DataFrame(
        {
            "gene_id": [f"g{int(10 * v)}" for v in shares] + ["singular", "filtered"],
            "status": ["ok"] * 11 + ["singular", "filtered:low_counts"],
            "frac_Batch": shares + [0.85, np.nan],
        }
    )
    assert summaries.choose_shrinkage_genes(fits, [], "frac_Batch") == (["g9", "g7", "g5", "g3"], [])
    # Fewer genes than percentiles: each gene once.
    assert summaries.choose_shrinkage_genes(fits.iloc[[0, 2]], [], "frac_Batch") == (["g9", "g5"], [])
    assert summaries.choose_shrinkage_genes(fits, [], None) == ([], [])
    assert summaries.choose_shrinkage_genes(fits, [], "frac_Lane") == ([], [])


def test_condition_column_is_the_first_fixed_factor():
    samples = pd.DataFrame({"Infection": ["Mock", "CoV"], "Days": [0.0, 1.0], "Batch": ["1", "2"], "Sex": ["f", "m"]})
    assert summaries.condition_column("~ Infection + (1|Batch)", samples) == "Infection"
    assert summaries.condition_column("~ Days + Sex + (Days|Batch)", samples) == "Sex"
    assert summaries.condition_column("~ Days + (Days|Batch)", samples) is None
    assert summaries.condition_column("~ 1 + (1|Batch)", samples) is None


def test_shrinkage_group_prefers_the_batch():
    sheet = SHEET.assign(x=np.arange(8.0), donor=list("pqrspqrs"))
    assert summaries.shrinkage_group(model_metadata("~ x + (1|donor) + (1|Batch)", sheet), "Batch") == "Batch"
    assert summaries.shrinkage_group(model_metadata("~ x + (1|donor)", sheet), "Batch") == "donor"
    assert summaries.shrinkage_group(model_metadata("~ x + Batch", sheet), "Batch") is None


def test_choose_shrinkage_genes_reports_requested_genes_that_cannot_be_drawn():
    fits = pd.DataFrame(
        {"gene_id": ["a", "b", "c"], "status": ["ok", "filtered:low_counts", "ok"], "frac_Batch": [0.1, np.nan, 0.9]}
    )
    chosen, skipped = summaries.choose_shrinkage_genes(fits, ["a", "b", "zz"], "frac_Batch")
    assert chosen == ["a"]
    assert skipped == ["b (filtered:low_counts)", "zz (not in the expression table)"]


def test_bh_is_scipys_false_discovery_control():
    from scipy import stats

    rng = np.random.default_rng(4)
    for p in (
        rng.uniform(size=500),
        np.round(rng.uniform(size=300), 2),  # ties
        np.concatenate([rng.uniform(size=50) ** 4, [0.0, 1.0]]),
        np.array([0.3]),
        np.array([0.2, 0.2]),
    ):
        np.testing.assert_array_equal(summaries.bh_qvalues(p), stats.false_discovery_control(p, method="bh"))
    with_nan = np.array([0.01, np.nan, 0.04, 0.03, np.inf])
    expected = np.full(5, np.nan)
    expected[[0, 2, 3]] = stats.false_discovery_control([0.01, 0.04, 0.03], method="bh")
    np.testing.assert_array_equal(summaries.bh_qvalues(with_nan), expected)
    assert np.isnan(summaries.bh_qvalues(np.array([np.nan]))).all()
