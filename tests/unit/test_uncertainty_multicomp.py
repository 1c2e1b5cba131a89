"""The importance-sampling posterior (several variance components, brms's default priors).

References, none computed by the code under test:
* brms 2.18 / rstan 2.21 runs with default priors of ``Reaction ~ Days + (Days | Subject)`` and
  ``Reaction ~ Days + (1 | Subject)`` (two seeds × 4000 draws, tests/data/brms_slopes/);
* brms's own prior summary for the prior's location and scale;
* for one variance component, the exact grid posterior (validated against 10⁶-draw Stan runs in
  test_uncertainty_posterior.py);
* for crossed factors, a brute-force integral in this file over a 3-D grid with dense n × n algebra.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix import uncertainty as unc
from batchmix.uncertainty import multicomp, priors
from scipy import stats

DATA = Path(__file__).resolve().parents[1] / "data" / "brms_slopes"
MODELS = {
    "slopes_default": "Reaction ~ Days + (Days | Subject)",
    "intercept_default": "Reaction ~ Days + (1 | Subject)",
}


@pytest.fixture(scope="module")
def brms():
    return pd.read_csv(DATA / "brms_posterior_default.tsv", sep="\t")


@pytest.mark.parametrize("model", sorted(MODELS))
def test_brms_default_priors_match_brms(sleep, brms, model):
    expr, samples = sleep
    res = unc.posterior(expr, samples, MODELS[model], prior="brms_default", n_draws=16384)
    s = res.summary.set_index("param")
    assert (s["status"] == "ok").all()
    ref = brms[brms.model == model]
    params = sorted(set(ref["param"]))
    assert len(params) == (6 if model == "slopes_default" else 5)
    worst = {"mean": 0.0, "q": 0.0}
    for p in params:
        two = ref[ref.param == p]
        assert len(two) == 2  # two seeds
        sd = two["sd"].mean()
        for col, mcse, tol in [
            ("mean", "mcse_mean", 0.05),
            ("q2.5", "mcse_q2.5", 0.1),
            ("q50", "mcse_q50", 0.1),
            ("q97.5", "mcse_q97.5", 0.1),
        ]:
            # the average of the two seeds, with its Monte Carlo standard error
            target = two[col].mean()
            mc = np.sqrt((two[mcse] ** 2).sum()) / 2
            diff = abs(s.loc[p, col] - target)
            assert diff <= tol * sd + 2 * mc, (p, col, diff / sd, mc / sd)
            key = "mean" if col == "mean" else "q"
            worst[key] = max(worst[key], diff / sd)
        # the posterior SD within 5% of brms's (their SD has a ~2% Monte Carlo error)
        assert abs(s.loc[p, "sd"] / sd - 1) < 0.05, (p, s.loc[p, "sd"], sd)
    # without any Monte Carlo allowance (measured: slopes means ≤ 0.02 SD, quantiles ≤ 0.13 SD;
    # intercept means ≤ 0.055 SD, where brms's two seeds differ by up to 0.066 SD between them)
    assert worst["mean"] < 0.075 and worst["q"] < 0.2, worst


def test_brms_location_and_scale_are_brms_own(sleep):
    """The prior summary brms printed for this response: student_t(3, 288.7, 59.3)."""
    expr, _ = sleep
    text = (DATA / "brms_priors_default.tsv").read_text()
    loc, scale = map(float, re.search(r"student_t\(3, ([0-9.]+), ([0-9.]+)\)\tIntercept", text).groups())
    assert priors.brms_default_location_scale(expr.loc["Reaction"].to_numpy()) == (loc, scale)
    assert re.search(rf"student_t\(3, 0, {scale}\)\tsd", text) and re.search(
        rf"student_t\(3, 0, {scale}\)\tsigma", text
    )


@pytest.mark.parametrize(
    "x, expected",  # printed by R 4.2.2 here: round(x, 1)
    [
        (0.15, 0.1),
        (0.25, 0.2),
        (0.35, 0.3),
        (0.45, 0.4),
        (2.6500001, 2.7),
        (-0.15, -0.1),
        (59.2889, 59.3),
        (0.05, 0.0),
        (1.45, 1.4),
        (2.45, 2.5),
        (288.65, 288.6),
    ],
)
def test_r_round(x, expected):
    assert priors.r_round(x, 1) == expected


def test_brms_scale_has_a_floor_of_2_5():
    y = np.array([1.0, 1.1, 1.2, 0.9, 1.05])  # mad ≈ 0.15 → scale 2.5
    assert priors.brms_default_location_scale(y) == (1.0, 2.5)


def test_one_component_agrees_with_the_exact_grid(sleep):
    """Same priors (flat β, 1/σ², ICC uniform) by importance sampling and by the exact grid."""
    expr, samples = sleep
    formula = "Reaction ~ Days + (1 | Subject)"
    grid = unc.posterior(expr, samples, formula, prior="unif_icc").summary.set_index("param")
    X, names, blocks, meta = multicomp.design_for(formula, samples)
    res = multicomp.importance_posterior(expr.to_numpy().T, X, names, blocks, meta, prior="unif_icc", n_draws=16384)
    assert res.status[0] == "ok" and res.khat[0] < 0.5
    for p, g in [
        ("b_Intercept", "b_Intercept"),
        ("b_Days", "b_Days"),
        ("sigma", "sigma"),
        ("sd_Subject__Intercept", "sd_Subject__Intercept"),
        ("ICC", "ICC"),
    ]:
        v = res.params[p][0]
        sd = grid.loc[g, "sd"]
        assert abs(v[0] - grid.loc[g, "mean"]) < 0.02 * sd, p
        assert abs(v[1] / sd - 1) < 0.02, p
        for j, q in enumerate(["q2.5", "q50", "q97.5"]):
            assert abs(v[2 + j] - grid.loc[g, q]) < 0.05 * sd, (p, q)


def _crossed_data(seed=5):
    rng = np.random.default_rng(seed)
    a = np.repeat(list("ABCDEF"), 6)
    b = np.tile(list("uvwxyz"), 6)
    samples = pd.DataFrame({"a": a, "b": b, "x": rng.normal(size=36)}, index=[f"s{i}" for i in range(36)])
    ea = dict(zip("ABCDEF", rng.normal(0, 1.5, 6)))
    eb = dict(zip("uvwxyz", rng.normal(0, 0.8, 6)))
    y = 5 + 0.5 * samples["x"] + samples["a"].map(ea) + samples["b"].map(eb) + rng.normal(0, 1.0, 36)
    return samples, y.to_numpy()


def _brute_force_crossed(samples, y):
    """Posterior means by a 3-D grid over (log σ, log sd_a, log sd_b), dense n × n algebra."""
    n = len(y)
    X = np.column_stack([np.ones(n), samples["x"].to_numpy()])
    Za = pd.get_dummies(samples["a"]).to_numpy(float)
    Zb = pd.get_dummies(samples["b"]).to_numpy(float)
    Ka, Kb = Za @ Za.T, Zb @ Zb.T
    ls = np.linspace(-1.2, 1.0, 45)
    la = np.linspace(-2.5, 2.5, 45)
    lb = np.linspace(-5.0, 1.8, 60)
    out = []
    for s_ in ls:
        for a_ in la:
            for b_ in lb:
                s2, va, vb = np.exp(2 * s_), np.exp(2 * a_), np.exp(2 * b_)
                V = s2 * np.eye(n) + va * Ka + vb * Kb
                c = np.linalg.cholesky(V)
                Vi_X = np.linalg.solve(V, X)
                A = X.T @ Vi_X
                beta = np.linalg.solve(A, Vi_X.T @ y)
                r = y - X @ beta
                ll = -np.log(np.diag(c)).sum() - 0.5 * np.linalg.slogdet(A)[1] - 0.5 * r @ np.linalg.solve(V, r)
                lam_a, lam_b = va / s2, vb / s2
                # p(σ) ∝ 1/σ (flat in log σ); λ ~ (1+λ)⁻², density in log sd: p(λ)·2λ
                lp = ll - 2 * np.log1p(lam_a) + np.log(lam_a) - 2 * np.log1p(lam_b) + np.log(lam_b)
                out.append((lp, np.exp(s_), np.exp(a_), np.exp(b_), beta[1]))
    arr = np.array(out)
    w = np.exp(arr[:, 0] - arr[:, 0].max())
    w /= w.sum()
    # the grid must hold the mass: the edges carry almost nothing
    return {k: (w * arr[:, i]).sum() for i, k in enumerate(["sigma", "sd_a", "sd_b", "b_x"], start=1)}, arr, w


def test_crossed_factors_match_a_brute_force_integral():
    samples, y = _crossed_data()
    ref, arr, w = _brute_force_crossed(samples, y)
    expr = pd.DataFrame([y], index=["g"], columns=samples.index)
    res = unc.posterior(expr, samples, "~ x + (1 | a) + (1 | b)", prior="unif_icc", n_draws=16384)
    s = res.summary.set_index("param")
    assert (s["status"] == "ok").all()
    assert {"cor_a__Intercept__Intercept"}.isdisjoint(s.index)
    for ours, theirs in [("sigma", "sigma"), ("sd_a__Intercept", "sd_a"), ("sd_b__Intercept", "sd_b"), ("b_x", "b_x")]:
        col = {"sigma": 1, "sd_a": 2, "sd_b": 3, "b_x": 4}[theirs]
        sd = np.sqrt((w * (arr[:, col] - ref[theirs]) ** 2).sum())
        assert abs(s.loc[ours, "mean"] - ref[theirs]) < 0.05 * sd, (ours, s.loc[ours, "mean"], ref[theirs], sd)
    fracs = s.loc[["frac_x", "frac_a", "frac_b", "frac_residual"], "mean"]
    assert abs(fracs.sum() - 1) < 1e-9  # per draw they sum to 1, hence so do their means


def test_every_gene_gets_numbers_or_a_status_that_says_why(sleep):
    expr, samples = sleep
    rng = np.random.default_rng(3)
    base = expr.to_numpy()[0]
    rows = [base + rng.normal(0, s, len(base)) for s in (0, 5, 30, 200)]
    rows.append(rng.normal(0, 1, len(base)))  # no subject structure at all
    table = pd.DataFrame(rows, index=[f"g{i}" for i in range(5)], columns=expr.columns)
    table.iloc[2, [3, 50]] = np.nan  # a gene with missing values: fitted on its observed samples
    status = pd.Series("ok", index=table.index)
    status["g4"] = "filtered:constant"
    res = unc.posterior(table, samples, "~ Days + (Days | Subject)", prior="brms_default", gene_status=status)
    s = res.summary
    per_gene = s.groupby("gene_id")["status"].first()
    assert per_gene["g4"] == "filtered:constant"
    for g in ["g0", "g1", "g2", "g3"]:
        assert per_gene[g] == "ok", per_gene[g]
    values = s[["mean", "sd", "q2.5", "q50", "q97.5"]]
    assert values[s["status"] == "ok"].notna().all().all()
    assert values[s["status"] != "ok"].isna().all().all()
    d = res.diagnostics.set_index("gene_id")
    assert (d.loc[["g0", "g1", "g2", "g3"], "khat"] < multicomp.MAX_KHAT).all()
    assert np.isnan(d.loc["g4", "khat"])
    # g0 is Reaction itself: brms's location for it
    assert d.loc["g0", "prior_location"] == 288.7


def test_too_few_draws_fail_with_a_diagnostic_status(sleep):
    expr, samples = sleep
    res = unc.posterior(expr, samples, "~ Days + (Days | Subject)", prior="brms_default", n_draws=64)
    s = res.summary
    assert (s["status"] == "failed:importance_ess").all()
    assert s["mean"].isna().all()
    assert res.diagnostics.loc[0, "ess"] < multicomp.MIN_ESS


@pytest.mark.parametrize("k", [0.2, 0.5, 0.9])
def test_pareto_khat_recovers_the_tail_index(k):
    rng = np.random.default_rng(11)
    u = rng.random((20, 4000))
    x = (u ** (-k) - 1) / k  # generalised Pareto with shape k
    est = multicomp.pareto_khat(np.log(x + 1e-6))
    assert abs(np.median(est) - k) < 0.08, est
    normal = multicomp.pareto_khat(rng.normal(0, 0.3, (20, 4000)))
    assert np.median(normal) < 0.3


def test_brms_default_student_t_is_stan_s():
    x = np.array([0.0, 3.0, 50.0])
    np.testing.assert_allclose(priors.log_student_t(x, 3.0, 1.0, 2.0), stats.t.logpdf(x, 3.0, 1.0, 2.0), rtol=1e-13)
    np.testing.assert_allclose(
        priors.log_half_student_t(x + 1, 3.0, 2.0), np.log(2) + stats.t.logpdf(x + 1, 3.0, 0.0, 2.0), rtol=1e-13
    )


def test_figures_of_the_importance_engine_and_of_heritability(sleep):
    from batchmix.plots.uncertainty import plot_heritability, plot_posterior_intervals

    expr, samples = sleep
    rows = unc.posterior(expr, samples, MODELS["slopes_default"], prior="brms_default").summary
    fig = plot_posterior_intervals(rows, gene_id="Reaction")
    assert len(fig.axes) == 3
    labels = [t.get_text() for t in fig.axes[2].get_yticklabels()]
    assert "cor_Subject__Intercept__Days" in labels
    h2 = np.array([0.1, 0.5, np.nan, 0.9])
    fig = plot_heritability(h2, np.array([0.1, 0.1, np.nan, 0.05]), lrt_p=np.array([0.5, 0.01, np.nan, 0.001]))
    assert len(fig.axes) == 2
    assert "3 genes" in fig.axes[0].get_title()


OTHER = {
    "crossed_default": ("other_crossed.tsv", "y ~ x + (1 | a) + (1 | b)"),
    "slopes_unbalanced_default": ("other_slopes_unbalanced.tsv", "y ~ x + (x | g)"),
}


@pytest.mark.parametrize("model", sorted(OTHER))
def test_brms_default_priors_match_brms_on_other_data(model):
    """Crossed factors and unbalanced random slopes: brms 2.18 runs made by make_brms_other.R (12,000 draws)."""
    file, formula = OTHER[model]
    data = pd.read_csv(DATA / file, sep="\t", dtype={"a": str, "b": str, "g": str})
    data.index = [f"s{i}" for i in range(len(data))]
    expr = pd.DataFrame([data["y"].to_numpy()], index=["y"], columns=data.index)
    res = unc.posterior(expr, data, formula, prior="brms_default", n_draws=16384)
    s = res.summary.set_index("param")
    assert (s["status"] == "ok").all()
    ref = pd.read_csv(DATA / "brms_posterior_other.tsv", sep="\t")
    ref = ref[ref.model == model]
    assert len(ref) >= 5
    text = (DATA / "brms_priors_other.tsv").read_text()
    loc, scale = (
        float(v) for v in re.search(rf"{model}\tstudent_t\(3, ([-0-9.]+), ([0-9.]+)\)\tIntercept", text).groups()
    )
    d = res.diagnostics.iloc[0]
    assert (d["prior_location"], d["prior_scale"]) == (loc, scale)
    for _, r in ref.iterrows():
        for col, mcse, tol in [
            ("mean", "mcse_mean", 0.05),
            ("q2.5", "mcse_q2.5", 0.1),
            ("q50", "mcse_q50", 0.1),
            ("q97.5", "mcse_q97.5", 0.1),
        ]:
            diff = abs(s.loc[r["param"], col] - r[col])
            assert diff <= tol * r["sd"] + 2 * r[mcse], (r["param"], col, diff / r["sd"], r[mcse] / r["sd"])
