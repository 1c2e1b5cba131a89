"""A model without random terms runs through lmm.fit as per-gene OLS, checked against statsmodels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from batchmix import lmm


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    n = 24
    samples = pd.DataFrame(
        {"cond": ["a", "b", "c"] * 8, "dose": rng.uniform(0, 3, n), "batch": ["x"] * 12 + ["y"] * 12},
        index=[f"s{i}" for i in range(n)],
    )
    expr = pd.DataFrame(rng.normal(size=(5, n)), index=[f"g{i}" for i in range(5)], columns=samples.index)
    expr.iloc[2, 3] = np.nan  # a gene with a missing value is fitted on its 23 samples
    X = np.column_stack([np.ones(n), samples.cond == "b", samples.cond == "c", samples.dose]).astype(float)
    return expr, samples, X


@pytest.mark.parametrize("reml", [True, False])
def test_ols_model_equals_statsmodels(data, reml):
    expr, samples, X = data
    fit = lmm.fit(expr, samples, "~ cond + dose", reml=reml)
    table = fit.gene_fits.set_index("gene_id")
    assert (table["status"] == "ok").all()
    assert fit.blups.empty
    for gene in expr.index:
        y = expr.loc[gene].to_numpy()
        keep = np.isfinite(y)
        ref = sm.OLS(y[keep], X[keep]).fit()
        row = table.loc[gene]
        names = ["Intercept", "condb", "condc", "dose"]
        np.testing.assert_allclose([row[f"coef_{c}"] for c in names], ref.params, rtol=1e-10)
        np.testing.assert_allclose([row[f"se_{c}"] for c in names], ref.bse, rtol=1e-10)
        np.testing.assert_allclose([row[f"p_{c}"] for c in names], ref.pvalues, rtol=1e-8)
        np.testing.assert_allclose([row[f"df_{c}"] for c in names], ref.df_resid)
        assert row["n"] == keep.sum()
        if not reml:
            assert row["loglik"] == pytest.approx(ref.llf, rel=1e-12)
        assert row["loglik"] == row["ols_loglik"] and np.isnan(row["lrt_p"])
        fracs = [row["frac_cond"], row["frac_dose"], row["frac_residual"]]
        assert sum(fracs) == pytest.approx(1.0)


def test_corrected_expression_refuses_a_group_that_is_not_random(data):
    expr, samples, _ = data
    fit = lmm.fit(expr, samples, "~ cond + batch")
    with pytest.raises(ValueError, match="not grouping factors"):
        lmm.corrected_expression(expr, samples, fit, groups=["batch"])
