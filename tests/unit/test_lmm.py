"""batchmix.lmm: engines agree, derivatives are right, bad genes get statuses, outputs hang together.

Agreement with lme4 itself is in test_lmm_lme4.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix import lmm
from batchmix.lmm import core, general

DATA = Path(__file__).resolve().parents[1] / "data" / "lme4"


@pytest.fixture(scope="module")
def bottomly() -> tuple[pd.DataFrame, pd.DataFrame]:
    samples = pd.read_csv(DATA / "bottomly_samples.tsv", sep="\t", dtype=str, index_col=0)
    expression = pd.read_csv(DATA / "bottomly_vst.tsv.gz", sep="\t", index_col=0).iloc[:60]
    return expression, samples.loc[expression.columns]


def test_onecomp_and_general_engines_agree(bottomly):
    expression, samples = bottomly
    for reml in (True, False):
        prepared = lmm.prepare("~ strain + (1 | experiment.number)", samples, reml=reml)
        fast = lmm.fit_arrays(expression.to_numpy(), prepared, method="onecomp")
        general = lmm.fit_arrays(expression.to_numpy(), prepared, method="general")
        np.testing.assert_allclose(fast.loglik, general.loglik, rtol=0, atol=1e-8)
        regular = ~fast.singular
        np.testing.assert_allclose(fast.theta[regular], general.theta[regular], rtol=1e-4)
        np.testing.assert_allclose(fast.beta, general.beta, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(fast.df[regular], general.df[regular], rtol=1e-4)
        np.testing.assert_array_equal(fast.singular, general.singular)


@pytest.mark.parametrize("reml", [True, False])
def test_analytic_gradient_and_hessian_match_finite_differences(bottomly, reml):
    expression, samples = bottomly
    prepared = lmm.prepare("~ strain + (1 | experiment.number) + (1 | lane.number)", samples, reml=reml)
    data = core.GeneData.from_matrix(expression.to_numpy()[:5], prepared)
    theta = np.array([[0.7, 0.4], [1.3, 0.2], [0.5, 0.9], [2.0, 1.0], [0.3, 0.3]])
    ev = general.evaluate(theta, data, prepared, reml, order=2)
    h = 1e-5
    for k in range(prepared.m):
        step = np.zeros_like(theta)
        step[:, k] = h
        plus = general.evaluate(theta + step, data, prepared, reml, order=1)
        minus = general.evaluate(theta - step, data, prepared, reml, order=1)
        np.testing.assert_allclose(ev.grad[:, k], (plus.deviance - minus.deviance) / (2 * h), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ev.hess[:, :, k], (plus.grad - minus.grad) / (2 * h), rtol=1e-5, atol=1e-5)


def test_slope_model_derivatives_match_finite_differences():
    rng = np.random.default_rng(7)
    subjects, days = 6, 5
    samples = pd.DataFrame(
        {
            "Subject": np.repeat([f"s{i}" for i in range(subjects)], days),
            "Days": np.tile(np.arange(days, dtype=float), subjects),
        }
    )
    Y = rng.normal(size=(3, subjects * days)) + samples["Days"].to_numpy()
    prepared = lmm.prepare("~ Days + (Days | Subject)", samples)
    data = core.GeneData.from_matrix(Y, prepared)
    theta = np.array([[0.8, 0.1, 0.3], [1.2, -0.4, 0.6], [0.5, 0.2, 0.05]])
    ev = general.evaluate(theta, data, prepared, True, order=2)
    h = 1e-5
    for k in range(3):
        step = np.zeros_like(theta)
        step[:, k] = h
        plus = general.evaluate(theta + step, data, prepared, True, order=1)
        minus = general.evaluate(theta - step, data, prepared, True, order=1)
        np.testing.assert_allclose(ev.grad[:, k], (plus.deviance - minus.deviance) / (2 * h), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ev.hess[:, :, k], (plus.grad - minus.grad) / (2 * h), rtol=1e-5, atol=1e-5)


@pytest.fixture
def small() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(11)
    n = 24
    samples = pd.DataFrame(
        {"batch": np.repeat(["b1", "b2", "b3", "b4"], 6), "condition": np.tile(["ctrl", "treat"], 12)},
        index=[f"s{i}" for i in range(n)],
    )
    batch_effect = rng.normal(0, 1.0, (6, 4))[:, np.repeat(np.arange(4), 6)]
    values = 8 + batch_effect + 0.5 * (samples["condition"] == "treat").to_numpy() + rng.normal(0, 0.5, (6, n))
    expression = pd.DataFrame(values, index=[f"g{i}" for i in range(6)], columns=samples.index)
    return expression, samples


def test_bad_genes_get_statuses_and_nans(small):
    expression, samples = small
    bad = expression.copy()
    bad.loc["g1"] = 3.0  # constant
    bad.loc["g2"] = 0.0  # all zero
    bad.loc["g3"] = np.nan  # all missing
    bad.loc["g4", bad.columns[2:]] = np.nan  # two observations left
    status_in = pd.Series({"g5": "filtered:low_counts"})
    result = lmm.fit(bad, samples, "~ condition + (1 | batch)", gene_status=status_in)
    table = result.gene_fits.set_index("gene_id")
    assert list(table.index) == list(expression.index)
    assert table.loc["g0", "status"] in ("ok", "singular")
    assert table.loc["g1", "status"] == "filtered:constant"
    assert table.loc["g2", "status"] == "filtered:constant"
    assert table.loc["g3", "status"] == "filtered:all_missing"
    assert table.loc["g4", "status"] == "failed:too_few_observations"
    assert table.loc["g5", "status"] == "filtered:low_counts"
    numeric = table.drop(columns="status")
    for gene in ["g1", "g2", "g3", "g4", "g5"]:
        assert numeric.loc[gene].isna().all(), gene
    assert numeric.loc["g0"].notna().all()
    assert set(result.blups["gene_id"]) == {"g0"}


def test_gene_with_missing_values_is_fitted_on_its_samples(small):
    expression, samples = small
    holes = expression.copy()
    holes.loc["g2", ["s0", "s7", "s20"]] = np.nan
    result = lmm.fit(holes, samples, "~ condition + (1 | batch)").gene_fits.set_index("gene_id")
    keep = [c for c in expression.columns if c not in ("s0", "s7", "s20")]
    alone = lmm.fit(expression.loc[["g2"], keep], samples.loc[keep], "~ condition + (1 | batch)")
    alone = alone.gene_fits.set_index("gene_id")
    assert result.loc["g2", "n"] == 21
    pd.testing.assert_series_equal(result.loc["g2"], alone.loc["g2"], check_names=False)
    assert result.loc["g0", "n"] == 24


def test_fractions_sum_to_one_and_lrt_conventions(small):
    expression, samples = small
    table = lmm.fit(expression, samples, "~ condition + (1 | batch)").gene_fits
    fracs = table[["frac_condition", "frac_batch", "frac_residual"]]
    np.testing.assert_allclose(fracs.sum(axis=1), 1.0, rtol=1e-12)
    assert (fracs >= 0).all().all()
    # variancePartition's residual share is σ² over the total
    total = (
        table["var_batch"]
        + table["var_residual"]
        + table["frac_condition"] / table["frac_residual"] * table["var_residual"]
    )
    np.testing.assert_allclose(table["frac_residual"], table["var_residual"] / total, rtol=1e-10)
    singular = table["status"] == "singular"
    assert (table.loc[singular, "lrt_stat"] == 0).all() and (table.loc[singular, "lrt_p"] == 1).all()
    assert (table["lrt_df"] == 1).all()


def test_singular_gene_without_batch_effect():
    rng = np.random.default_rng(3)
    samples = pd.DataFrame({"batch": np.repeat(["a", "b", "c"], 8)}, index=[f"s{i}" for i in range(24)])
    # exactly equal batch means: the REML optimum is θ = 0
    noise = rng.normal(size=(3, 8))
    noise -= noise.mean(axis=1, keepdims=True)
    expression = pd.DataFrame([noise.reshape(-1) + 5.0], index=["flat"], columns=samples.index)
    row = lmm.fit(expression, samples, "~ (1 | batch)").gene_fits.iloc[0]
    assert row["status"] == "singular"
    assert row["var_batch"] == 0.0
    assert row["loglik"] == pytest.approx(row["ols_loglik"], abs=1e-9)


def test_corrected_expression_removes_only_named_groups(bottomly):
    expression, samples = bottomly
    formula = "~ strain + (1 | experiment.number) + (1 | lane.number)"
    result = lmm.fit(expression, samples, formula)
    corrected = lmm.corrected_expression(expression, samples, result, groups=["experiment.number"])
    blups = result.blups[result.blups["group"] == "experiment.number"]
    gene = result.gene_fits["gene_id"].iloc[0]
    effect = blups[blups["gene_id"] == gene].set_index("level")["value"]
    levels = samples["experiment.number"].astype(str)
    expected = expression.loc[gene] - levels.map(effect).to_numpy()
    np.testing.assert_allclose(corrected.loc[gene], expected, rtol=0, atol=1e-12)
    assert corrected.shape == expression.shape
    both = lmm.corrected_expression(expression, samples, result, groups=["experiment.number", "lane.number"])
    lane = result.blups[(result.blups["group"] == "lane.number") & (result.blups["gene_id"] == gene)]
    lane_effect = samples["lane.number"].astype(str).map(lane.set_index("level")["value"]).to_numpy()
    np.testing.assert_allclose(both.loc[gene], expected - lane_effect, rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        lmm.corrected_expression(expression, samples, result, groups=["strain"])


def test_corrected_expression_leaves_unfitted_genes_unchanged(small):
    expression, samples = small
    table = expression.copy()
    table.loc["g1"] = 2.0
    result = lmm.fit(table, samples, "~ condition + (1 | batch)", gene_status=pd.Series({"g3": "filtered:low_counts"}))
    corrected = lmm.corrected_expression(table, samples, result, groups=["batch"])
    pd.testing.assert_series_equal(corrected.loc["g1"], table.loc["g1"])
    pd.testing.assert_series_equal(corrected.loc["g3"], table.loc["g3"])
    # the batch means of a corrected gene no longer carry the batch BLUPs
    assert not np.allclose(corrected.loc["g0"], table.loc["g0"])


def test_deterministic_and_column_layout(small):
    expression, samples = small
    first = lmm.fit(expression, samples, "~ condition + (1 | batch)")
    second = lmm.fit(expression, samples, "~ condition + (1 | batch)")
    pd.testing.assert_frame_equal(first.gene_fits, second.gene_fits)
    columns = list(first.gene_fits.columns)
    assert columns[:3] == ["gene_id", "status", "n"]
    for name in ("Intercept", "conditiontreat"):
        for kind in ("coef", "se", "df", "t", "p"):
            assert f"{kind}_{name}" in columns
    for name in (
        "loglik",
        "aic",
        "bic",
        "ols_loglik",
        "ols_aic",
        "ols_bic",
        "lrt_stat",
        "lrt_p",
        "var_batch",
        "var_residual",
        "sigma",
        "df_residual",
        "frac_condition",
        "frac_batch",
        "frac_residual",
    ):
        assert name in columns
    assert list(first.blups.columns) == ["gene_id", "group", "level", "term", "value"]
    assert first.gene_fits["df_residual"].iloc[0] == 24 - 5  # n - rank [X Z] = 24 - (2 + 4 - 1)


def test_formula_without_random_term_is_fitted_by_ols(small):
    # checked against statsmodels in test_lmm_ols.py
    expression, samples = small
    fit = lmm.fit(expression, samples, "~ condition")
    assert fit.blups.empty and (fit.gene_fits["loglik"] == fit.gene_fits["ols_loglik"]).all()


def _simulated(model: str, genes: int, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Genes × samples drawn from random-slope or crossed two-factor models (as the benchmark)."""
    rng = np.random.default_rng(seed)
    if model == "slopes":
        subject = np.repeat(np.arange(18), 10)
        days = np.tile(np.arange(10, dtype=float), 18)
        samples = pd.DataFrame({"Subject": [f"s{s:02d}" for s in subject], "Days": days})
        b0 = rng.normal(0, 1.0, (genes, 18))
        b1 = rng.normal(0, 0.3, (genes, 18)) * rng.uniform(0, 1, (genes, 1))
        Y = 8 + 0.2 * days + b0[:, subject] + b1[:, subject] * days + rng.normal(0, 1, (genes, 180))
    else:
        n = 120
        batch, lane = np.arange(n) % 12, rng.integers(0, 6, n)
        condition = rng.integers(0, 2, n)
        samples = pd.DataFrame(
            {
                "batch": [f"b{b:02d}" for b in batch],
                "lane": [f"l{x}" for x in lane],
                "condition": np.where(condition == 1, "treated", "control"),
            }
        )
        Y = (
            8
            + 0.5 * condition
            + rng.uniform(0, 1, (genes, 1)) * rng.normal(size=(genes, 12))[:, batch]
            + rng.uniform(0, 0.5, (genes, 1)) * rng.normal(size=(genes, 6))[:, lane]
            + rng.normal(0, 1, (genes, n))
        )
    samples.index = [f"x{i:03d}" for i in range(len(samples))]
    return Y, samples


@pytest.mark.parametrize(
    "model, formula",
    [
        ("slopes", "~ Days + (Days | Subject)"),
        ("two", "~ condition + (1 | batch) + (1 | lane)"),
    ],
)
def test_general_engine_reaches_the_best_optimum_from_any_start(model, formula):
    # fit_arrays starts from one-component fits of each random column; lme4's start (θ = 1)
    # and interior starts must not find a lower deviance. A zero diagonal entry of T with
    # non-zero entries below it is not an optimum (flipping their signs changes nothing but
    # the sign of the gradient), which the θ-Newton path must not stop at.
    Y, samples = _simulated(model, 400, 3)
    prepared = lmm.prepare(formula, samples)
    fit = lmm.fit_arrays(Y, prepared)
    assert fit.converged.all()
    data = core.GeneData.from_matrix(Y, prepared)
    if model == "slopes":
        # the random-slope start is the moment estimate (with a correlation), near the optimum
        from batchmix.lmm.block import moment_start

        moment = moment_start(data, prepared)
        assert np.isfinite(moment).all()
        np.testing.assert_array_equal(general.start_values(data, prepared, True), moment)
        excess = general.evaluate(moment, data, prepared, True).deviance + 2.0 * fit.loglik
        assert np.median(excess) < 0.5
    start = np.tile(prepared.theta_start(), (Y.shape[0], 1))
    for theta0 in (start, 0.5 * start, 2.0 * start + 0.1):
        theta, _ = general.optimise(data, prepared, True, theta0=theta0)
        other = general.evaluate(theta, data, prepared, True).deviance
        assert np.all(-2.0 * fit.loglik <= other + 1e-6)


def test_onecomp_merges_equal_eigenvalues_exactly():
    # a balanced design has one projected eigenvalue repeated; merging them changes nothing
    Y, samples = _simulated("two", 300, 5)
    balanced = lmm.prepare("~ condition + (1 | batch)", samples)
    assert balanced.rotation.xi_u.size < balanced.rotation.xi.size
    fast = lmm.fit_arrays(Y, balanced, method="onecomp")
    general = lmm.fit_arrays(Y, balanced, method="general")
    np.testing.assert_allclose(fast.loglik, general.loglik, rtol=0, atol=1e-8)
    regular = ~fast.singular
    np.testing.assert_allclose(fast.theta[regular], general.theta[regular], rtol=1e-4)
    np.testing.assert_allclose(fast.beta, general.beta, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fast.df[regular], general.df[regular], rtol=1e-4)
    # the statistics-only λ used for starting values agrees with the full rotation
    from batchmix.lmm.onecomp import lambda_from_stats

    data = core.GeneData.from_matrix(Y, balanced)
    lam = lambda_from_stats(data.Zty, data.Xty, data.yty, balanced.X, balanced.Z, True)
    np.testing.assert_allclose(np.sqrt(lam)[regular], fast.theta[regular, 0], rtol=1e-5)


@pytest.mark.parametrize("name, formula", [("sim", "~ x + (x | batch)"), ("sleep", "~ Days + (Days | Subject)")])
def test_general_engine_leaves_saddles_at_zero_random_slope_factor(name, formula):
    # lme4 REML fits of responses with boundary optima (rank-one covariances, θ₂₂ = 0):
    # (θ₁₁, θ₂₁) = (0, 0) is a stationary point there, but a saddle; the engine must reach
    # lme4's criterion (sim y5 and y6 used to stop at θ = (0, 0, 0.23) and (0, 0, 0))
    data = Path(__file__).resolve().parents[1] / "data" / "sleepstudy_uncertainty"
    ref = pd.read_csv(data / "refit_lme4.tsv", sep="\t")
    ref["response"] = ref["response"].str.strip()
    ref = ref[ref.set == name].set_index("response")
    d = pd.read_csv(data / f"refit_{name}_data.tsv", sep="\t")
    for g in ("batch", "Subject"):
        if g in d:
            d[g] = d[g].astype(str)
    Y = d[list(ref.index)].to_numpy().T
    fit = lmm.fit_arrays(Y, lmm.prepare(formula, d))
    assert fit.converged.all()
    np.testing.assert_array_less(-2.0 * fit.loglik, ref["REMLcrit"].to_numpy() + 2e-5)


@pytest.mark.parametrize("reml", [True, False])
def test_diagonal_lambda_derivatives_match_the_dense_formulas(reml):
    # variance-component models (Λ diagonal) use block sums instead of q × q stacks
    Y, samples = _simulated("two", 30, 9)
    prepared = lmm.prepare("~ condition + (1 | batch) + (1 | lane)", samples, reml=reml)
    assert prepared.diagonal_lambda is not None
    data = core.GeneData.from_matrix(Y, prepared)
    theta = np.abs(np.random.default_rng(2).normal(0.6, 0.4, (30, 2)))
    theta[0, 0] = 0.0
    fast = general.evaluate(theta, data, prepared, reml, order=2)
    prepared.diagonal_lambda = None
    slow = general.evaluate(theta, data, prepared, reml, order=2)
    for name in ("grad", "hess", "f_grad", "f_hess", "r2_grad", "r2_hess", "dM"):
        np.testing.assert_allclose(getattr(fast, name), getattr(slow, name), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "formula, method",
    [("~ condition + (1 | batch)", "auto"), ("~ condition + (1 | batch)", "general"), ("~ x + (x | batch)", "auto")],
)
def test_refit_sufficient_equals_the_fit_of_the_data(formula, method):
    """The criterion sees y only through X'y, Z'y, y'y: refitting from them gives fit_arrays' optimum."""
    rng = np.random.default_rng(11)
    n = 48
    samples = pd.DataFrame(
        {"condition": ["a", "b"] * (n // 2), "batch": [f"b{i % 6}" for i in range(n)], "x": rng.normal(size=n)},
        index=[f"s{i}" for i in range(n)],
    )
    codes = pd.Categorical(samples["batch"]).codes
    Y = (
        5.0
        + rng.normal(size=(30, 6))[:, codes] * np.linspace(0.2, 2.0, 30)[:, None]
        + samples["x"].to_numpy() * rng.normal(size=(30, 1))
        + rng.normal(size=(30, n))
    )
    prepared = lmm.prepare(formula, samples)
    reference = lmm.fit_arrays(Y, prepared)
    refit = lmm.refit_sufficient(
        Y @ prepared.X, Y @ prepared.Z, np.einsum("gi,gi->g", Y, Y), prepared, method=method, theta0=reference.theta
    )
    assert refit.converged.all()
    np.testing.assert_allclose(refit.sigma2, reference.sigma2, rtol=1e-6)
    np.testing.assert_allclose(refit.beta, reference.beta, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.abs(refit.theta), np.abs(reference.theta), rtol=1e-4, atol=1e-4)


def test_corrected_expression_takes_a_repeated_blup_as_the_pivot_did(small):
    """fit() gives each (gene, level, term) once; a table that repeats one goes through the pivot:
    its first non-missing value counts, and a missing mode contributes nothing."""
    import dataclasses

    expression, samples = small
    result = lmm.fit(expression, samples, "~ condition + (1 | batch)")
    plain = lmm.corrected_expression(expression, samples, result, groups=["batch"])
    blups = result.blups.copy()
    first = blups.iloc[[0]].copy()
    first["value"] = np.nan  # a NaN ahead of the real value: skipped
    repeated = pd.concat([first, blups], ignore_index=True)
    again = lmm.corrected_expression(expression, samples, dataclasses.replace(result, blups=repeated), groups=["batch"])
    pd.testing.assert_frame_equal(again, plain)
    blups.loc[0, "value"] = np.nan  # the gene's only mode for that level missing: nothing subtracted there
    missing = lmm.corrected_expression(expression, samples, dataclasses.replace(result, blups=blups), groups=["batch"])
    gene, level = blups.loc[0, "gene_id"], blups.loc[0, "level"]
    at_level = (samples.loc[expression.columns, "batch"].astype(str) == level).to_numpy()
    np.testing.assert_array_equal(missing.loc[gene].to_numpy()[at_level], expression.loc[gene].to_numpy()[at_level])
    np.testing.assert_array_equal(missing.loc[gene].to_numpy()[~at_level], plain.loc[gene].to_numpy()[~at_level])
