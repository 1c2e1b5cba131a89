"""batchmix.moderate against limma 3.54.1 (fixtures: tests/data/limma, see its README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix import moderate as M

DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "limma"
REL = 1e-4  # the target for d0 and s0^2; observed agreement is ~1e-9


@pytest.fixture(scope="module")
def variances() -> pd.DataFrame:
    return pd.read_csv(DATA / "squeeze_var.tsv.gz", sep="\t")


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    return pd.read_csv(DATA / "squeeze_summary.tsv", sep="\t", index_col=0)


def test_squeeze_var_plain(variances, summary):
    res = M.squeeze_var(variances["var"].to_numpy(), variances["df"].to_numpy())
    assert res.df_prior == pytest.approx(summary.loc["plain", "df_prior"], rel=REL)
    assert res.var_prior == pytest.approx(summary.loc["plain", "var_prior"], rel=REL)
    np.testing.assert_allclose(res.var_post, variances["var_post_plain"], rtol=REL)
    # a scalar df is the same as a constant vector
    res2 = M.squeeze_var(variances["var"].to_numpy(), float(variances["df"].iloc[0]))
    assert res2.df_prior == pytest.approx(res.df_prior, rel=1e-12)


def test_squeeze_var_trended(variances, summary):
    res = M.squeeze_var(
        variances["var"].to_numpy(), variances["df"].to_numpy(), covariate=variances["amean"].to_numpy()
    )
    assert res.df_prior == pytest.approx(summary.loc["trend", "df_prior"], rel=REL)
    np.testing.assert_allclose(res.var_prior, variances["var_prior_trend"], rtol=REL)
    np.testing.assert_allclose(res.var_post, variances["var_post_trend"], rtol=REL)
    # the trend is real: the prior variance varies over the genes
    assert np.ptp(res.var_prior) > 0.1 * np.median(res.var_prior)


def test_squeeze_var_unequal_df(variances, summary):
    res = M.squeeze_var(variances["var"].to_numpy(), variances["df_vector"].to_numpy())
    assert res.df_prior == pytest.approx(summary.loc["df_vector", "df_prior"], rel=REL)
    assert res.var_prior == pytest.approx(summary.loc["df_vector", "var_prior"], rel=REL)
    np.testing.assert_allclose(res.var_post, variances["var_post_df_vector"], rtol=REL)


@pytest.mark.parametrize("df_col,case", [("df", "robust"), ("df_vector", "df_vector_robust")])
def test_squeeze_var_robust(variances, summary, df_col, case):
    res = M.squeeze_var(variances["var"].to_numpy(), variances[df_col].to_numpy(), robust=True)
    prior_col = "df_prior_robust" if case == "robust" else "df_prior_df_vector_robust"
    post_col = "var_post_robust" if case == "robust" else "var_post_df_vector_robust"
    expected_df = variances[prior_col].to_numpy()
    # some genes are flagged as outliers and get a smaller prior df
    assert expected_df.min() < 0.95 * expected_df.max()
    np.testing.assert_allclose(res.df_prior, expected_df, rtol=REL)
    assert res.var_prior == pytest.approx(summary.loc[case, "var_prior"], rel=REL)
    np.testing.assert_allclose(res.var_post, variances[post_col], rtol=REL)


def test_trigamma_inverse_inverts():
    from scipy.special import polygamma

    y = np.array([1e-3, 0.5, 2.0, 50.0, 1e4])
    np.testing.assert_allclose(M.trigamma_inverse(polygamma(1, y)), y, rtol=1e-7)


# ---------------------------------------------------------------- moderate_gene_fits vs eBayes


@pytest.fixture(scope="module")
def ols_table() -> tuple[pd.DataFrame, pd.Series]:
    """The per-gene OLS fits of the limma fixture, computed here with numpy."""
    expr = pd.read_csv(DATA / "gse5859subset_expression.tsv.gz", sep="\t", index_col=0)
    design = pd.read_csv(DATA / "design_matrix.tsv", sep="\t", index_col=0)
    assert list(design.index) == list(expr.columns)
    x = design.to_numpy(dtype=float)
    y = expr.to_numpy(dtype=float)
    n, p = x.shape
    xtx_inv = np.linalg.inv(x.T @ x)
    beta = y @ x @ xtx_inv  # genes x p
    resid = y - beta @ x.T
    df = n - p
    s2 = (resid**2).sum(axis=1) / df
    table = pd.DataFrame({"gene_id": expr.index, "status": "ok", "var_residual": s2, "df_residual": float(df)})
    for j, name in enumerate(design.columns):
        se = np.sqrt(s2 * xtx_inv[j, j])
        table[f"coef_{name}"] = beta[:, j]
        table[f"se_{name}"] = se
        table[f"df_{name}"] = float(df)
        table[f"p_{name}"] = np.nan  # not used by the moderation
    mean_expr = pd.Series(y.mean(axis=1), index=expr.index)
    return table, mean_expr


@pytest.mark.parametrize("case", ["plain", "trend", "robust"])
def test_moderate_gene_fits_equals_ebayes(ols_table, case):
    table, mean_expr = ols_table
    ref = pd.read_csv(DATA / f"ebayes_{case}.tsv.gz", sep="\t")
    assert list(ref["gene_id"]) == list(table["gene_id"])
    out = M.moderate_gene_fits(table, trend=(case == "trend"), mean_expression=mean_expr, robust=(case == "robust"))
    np.testing.assert_allclose(out["d0"], ref["df_prior"], rtol=REL)
    np.testing.assert_allclose(out["s0"] ** 2, ref["s2_prior"], rtol=REL)
    np.testing.assert_allclose(out["var_residual_post"], ref["s2_post"], rtol=REL)
    np.testing.assert_allclose(out["df_total"], ref["df_total"], rtol=REL)
    for name in ["Intercept", "group1", "month2005_10"]:
        np.testing.assert_allclose(out[f"coef_{name}"], ref[f"coef_{name}"], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(out[f"t_mod_{name}"], ref[f"t_{name}"], rtol=REL)
        np.testing.assert_allclose(out[f"p_mod_{name}"], ref[f"p_{name}"], rtol=REL, atol=1e-300)


def test_moderate_gene_fits_leaves_failed_rows_out(ols_table):
    table, _ = ols_table
    table = table.copy()
    table.loc[0, "status"] = "failed:convergence"
    table.loc[1, "var_residual"] = np.nan
    table.loc[2, "status"] = "filtered:low_counts"
    table.loc[3, "status"] = "singular"
    out = M.moderate_gene_fits(table)
    for i in (0, 1, 2):
        assert np.isnan(out.loc[i, "d0"]) and np.isnan(out.loc[i, "t_mod_group1"])
    assert np.isfinite(out.loc[3, "t_mod_group1"])
    # the prior is estimated from the remaining rows only
    kept = table.drop(index=[0, 1, 2])
    direct = M.squeeze_var(kept["var_residual"].to_numpy(), kept["df_residual"].to_numpy())
    assert out.loc[3, "d0"] == pytest.approx(direct.df_prior, rel=1e-12)
    # original columns are untouched
    pd.testing.assert_frame_equal(out[table.columns], table)


def test_moderate_gene_fits_needs_mean_for_trend(ols_table):
    table, _ = ols_table
    with pytest.raises(ValueError, match="mean_expression"):
        M.moderate_gene_fits(table, trend=True)
