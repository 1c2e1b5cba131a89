"""The known-covariance term ``(1 | kinship)``: lme4 fixtures, planted heritabilities, bad matrices.

References: lme4 1.1-31 fits with Z replaced by a factor of K through lFormula / mkLmerDevfun /
optimizeLmer (the lme4qtl approach), made by tests/data/kinship/make_kinship_fixture.R.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix import io, lmm
from batchmix.design import formula_columns, kinship_factor, parse_formula
from batchmix.lmm.kinship import KinshipError, attach_kinship, read_kinship, reduced_formula
from batchmix.uncertainty import posterior
from scipy import stats

DATA = Path(__file__).resolve().parents[1] / "data" / "kinship"
MODELS = ["~ cond + (1 | kinship)", "~ cond + (1 | batch) + (1 | kinship)"]


@pytest.fixture(scope="module")
def fixture():
    samples = pd.read_csv(DATA / "samples.tsv", sep="\t", dtype=str).set_index("sample_id")
    K = read_kinship(DATA / "kinship.tsv", samples.index)
    expr = io.read_matrix(DATA / "expression.tsv")
    ref = pd.read_csv(DATA / "lme4_kinship.tsv", sep="\t")
    return attach_kinship(samples, K), expr, ref


@pytest.mark.parametrize("model", MODELS)
def test_agrees_with_lme4_modular_fits(fixture, model):
    sheet, expr, ref = fixture
    fits = lmm.fit(expr, sheet, model).gene_fits.set_index("gene_id")
    r = ref[ref["model"].str.strip() == model].set_index("gene_id")
    assert len(r) == 8
    assert fits["status"].isin(["ok", "singular"]).all()
    # never a worse optimum than lme4's (measured: |Δ logLik| < 1e-9)
    assert (fits.loc[r.index, "loglik"] - r["logLik"] >= -1e-6).all()
    # h² as lme4's to 1e-5 (measured: 2e-8 with one component, 2.4e-6 with the batch term too)
    np.testing.assert_allclose(fits.loc[r.index, "h2"], r["h2"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(fits.loc[r.index, "var_kinship"], r["var_kinship"], atol=5e-5, rtol=0)
    np.testing.assert_allclose(fits.loc[r.index, "var_residual"], r["var_residual"], atol=5e-5, rtol=0)


def test_lrt_of_the_kinship_term(fixture):
    sheet, expr, _ = fixture
    one = lmm.fit(expr, sheet, MODELS[0]).gene_fits.set_index("gene_id")
    # with kinship the only random term, the null model is OLS: the engine's own LRT column
    np.testing.assert_allclose(one["lrt_kinship_stat"], one["lrt_stat"], atol=1e-9)
    two = lmm.fit(expr, sheet, MODELS[1]).gene_fits.set_index("gene_id")
    null = lmm.fit(expr, sheet, reduced_formula(MODELS[1])).gene_fits.set_index("gene_id")
    stat = np.maximum(2 * (two["loglik"] - null["loglik"]), 0)
    np.testing.assert_allclose(two["lrt_kinship_stat"], np.where(stat < 1e-8, 0, stat), atol=1e-7)
    p = two["lrt_kinship_p"]
    assert ((two["lrt_kinship_stat"] == 0) == (p == 1)).all()

    pos = two["lrt_kinship_stat"] > 0
    np.testing.assert_allclose(p[pos], 0.5 * stats.chi2.sf(two.loc[pos, "lrt_kinship_stat"], 1), rtol=1e-12)


def _synthetic(n_fam=60, size=4, G=400, seed=9):
    rng = np.random.default_rng(seed)
    n = n_fam * size
    fam = np.repeat(np.arange(n_fam), size)
    K = np.where(fam[:, None] == fam[None, :], 0.5, 0.0)
    np.fill_diagonal(K, 1.0)
    ids = [f"s{i:03d}" for i in range(n)]
    h2 = np.repeat([0.0, 0.2, 0.4, 0.6, 0.8], G // 5)
    L = np.linalg.cholesky(K)
    Y = 3 + (L @ rng.normal(size=(n, G))).T * np.sqrt(h2)[:, None] + rng.normal(size=(G, n)) * np.sqrt(1 - h2)[:, None]
    samples = pd.DataFrame({"cond": np.where(np.arange(n) % 2, "a", "b")}, index=ids)
    return samples, pd.DataFrame(K, index=ids, columns=ids), pd.DataFrame(Y, columns=ids), h2


def test_recovers_planted_heritabilities():
    samples, K, expr, h2 = _synthetic()
    fits = lmm.fit(expr, attach_kinship(samples, K), "~ cond + (1 | kinship)").gene_fits
    est, se = fits["h2"].to_numpy(), fits["se_h2"].to_numpy()
    # no heritability: about half the estimates on the boundary (the χ²₀ : χ²₁ mixture), the rest small
    assert (est[h2 == 0] == 0).mean() > 0.35 and np.median(est[h2 == 0]) < 0.02
    for level in np.unique(h2)[1:]:
        sel = h2 == level
        # the average over 80 genes is within 3 standard errors of its mean of the planted value
        assert abs(est[sel].mean() - level) < 3 * est[sel].std() / np.sqrt(sel.sum()) + 0.01, level
    # the standard errors describe the spread of the estimates away from the boundary
    for level in (0.2, 0.4, 0.6, 0.8):  # measured ratios 1.04, 1.06, 0.99, 0.93
        sel = h2 == level
        ratio = est[sel].std() / np.median(se[sel])
        assert 0.75 < ratio < 1.33, (level, ratio)
    assert (fits["lrt_kinship_p"][h2 == 0.8] < 0.05).mean() > 0.9


def test_posterior_covers_the_kinship_term(fixture):
    sheet, expr, _ = fixture
    res = posterior(expr, sheet, "~ cond + (1 | kinship)", prior="brms_default")
    s = res.summary
    assert (s["status"] == "ok").all()
    assert "sd_kinship__Intercept" in set(s["param"]) and "frac_kinship" in set(s["param"])
    grid = posterior(expr, sheet, "~ cond + (1 | kinship)", prior="unif_icc").summary
    assert (grid["status"] == "ok").all()


def _write(tmp_path, K: pd.DataFrame) -> Path:
    path = tmp_path / "K.tsv"
    K.rename_axis("sample_id").reset_index().to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture()
def good_K():
    ids = ["a", "b", "c", "007"]
    K = np.array([[1.0, 0.5, 0.0, 0.1], [0.5, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.25], [0.1, 0.0, 0.25, 1.0]])
    return pd.DataFrame(K, index=ids, columns=ids)


def test_a_good_matrix_is_read_in_sheet_order(tmp_path, good_K):
    K = read_kinship(_write(tmp_path, good_K), ["007", "a", "c"])
    assert list(K.index) == ["007", "a", "c"] and list(K.columns) == ["007", "a", "c"]
    assert K.loc["007", "c"] == 0.25


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda K: K.assign(a=K["a"] + np.array([0, 0.2, 0, 0])), "not symmetric"),
        (lambda K: K - pd.DataFrame(np.diag([0, 0, 0, 2.0]), index=K.index, columns=K.columns), "not positive semi-"),
        (lambda K: K.rename(columns={"c": "z"}), "row and column ids differ"),
        (lambda K: K.iloc[:, :3], "not square"),
        (lambda K: K.replace(0.25, np.nan), "missing or infinite|non-numeric"),
        (lambda K: K.replace(0.25, np.inf), "missing or infinite|non-numeric"),
    ],
)
def test_bad_matrices_are_refused_naming_the_problem(tmp_path, good_K, change, message):
    with pytest.raises(KinshipError, match=message):
        read_kinship(_write(tmp_path, change(good_K)), ["a", "b", "c", "007"])


def test_samples_missing_from_the_matrix_are_refused(tmp_path, good_K):
    with pytest.raises(KinshipError, match=r"1 sample\(s\) of the sample sheet are not in it.*'d'"):
        read_kinship(_write(tmp_path, good_K), ["a", "b", "d"])


def test_the_model_language():
    assert formula_columns("~ cond + (1 | batch) + (1 | kinship)") == ["cond", "batch"]
    assert reduced_formula("y ~ cond + (1 | batch) + (1 | kinship)") == "y ~ cond + (1 | batch)"
    with pytest.raises(ValueError, match=r"\(1 \| kinship\)"):
        parse_formula("~ x + (x | kinship)")
    samples = pd.DataFrame({"cond": ["a", "b", "a", "b"]}, index=list("pqrs"))
    with pytest.raises(ValueError, match="needs the kinship matrix"):
        lmm.prepare("~ cond + (1 | kinship)", samples)


def test_kinship_factor_reproduces_K(good_K):
    K = good_K.to_numpy()
    L = kinship_factor(K)
    np.testing.assert_allclose(L @ L.T, K, atol=1e-12)
    low_rank = np.outer([1, 2, 3.0], [1, 2, 3.0])
    assert kinship_factor(low_rank).shape == (3, 1)


def test_the_formula_term_equals_posterior_with_K(fixture):
    """(1 | kinship) in the formula gives the grid posterior that posterior(K=...) gives from the matrix."""
    sheet, expr, _ = fixture
    K = read_kinship(DATA / "kinship.tsv", sheet.index).to_numpy()
    via_formula = posterior(expr, sheet, "~ cond + (1 | kinship)").summary
    via_K = posterior(expr, sheet[["cond"]], "~ cond", K=K, group_name="kinship").summary
    np.testing.assert_allclose(via_formula["mean"], via_K["mean"], rtol=1e-7)
    # quantiles solve a CDF from a rotation computed two ways (Z = L or K itself): measured 3e-6
    np.testing.assert_allclose(via_formula["q97.5"], via_K["q97.5"], rtol=1e-5)
