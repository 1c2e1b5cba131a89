"""The exact grid posterior (batchmix.uncertainty.posterior) against Stan and a brute-force integral.

References:
* brms 2.18 / rstan 2.21 long runs (10⁶ draws) of the sleepstudy intercept model with the same
  priors (tests/data/sleepstudy_uncertainty/, made by make_refs.R there);
* an independent dense computation in this file: the marginal posterior of λ from n × n matrices
  (no rotation, no tables) on a very fine grid, and quantiles by scipy root finding on CDFs built
  from scipy.stats distributions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix import uncertainty as unc
from batchmix.defaults import DEFAULT_SEED  # the R and Stan references were made with this seed
from scipy import integrate, optimize, special, stats

DATA = Path(__file__).resolve().parents[1] / "data" / "sleepstudy_uncertainty"
PRIOR_MODEL = {"unif_icc": "intercept_flat_unifICC", "half_cauchy": "intercept_flat_hcauchy"}


@pytest.fixture(scope="module")
def stan():
    return pd.read_csv(DATA / "brms_posterior.tsv", sep="\t")


@pytest.mark.parametrize("prior", ["unif_icc", "half_cauchy"])
def test_sleepstudy_matches_million_draw_stan_runs(sleep, stan, prior):
    expr, samples = sleep
    res = unc.posterior(expr, samples, "Reaction ~ Days + (1 | Subject)", prior=prior)
    s = res.summary.set_index("param")
    assert (s["status"] == "ok").all()
    assert set(s.index) == {"b_Intercept", "b_Days", "sd_Subject__Intercept", "sigma", "ICC"}
    long = stan[(stan.model == PRIOR_MODEL[prior]) & (stan.draws == 1_000_000)]
    assert len(long) >= 5
    worst_sd, worst_z = 0.0, 0.0
    for _, r in long.iterrows():
        p = r["param"]
        for col, mcse in [
            ("mean", "mcse_mean"),
            ("q2.5", "mcse_q2.5"),
            ("q50", "mcse_q50"),
            ("q97.5", "mcse_q97.5"),
            ("sd", None),
        ]:
            diff = s.loc[p, col] - r[col]
            worst_sd = max(worst_sd, abs(diff) / r["sd"])
            if mcse:
                worst_z = max(worst_z, abs(diff) / r[mcse])
    # the target: within 0.05 posterior SD of the 10⁶-draw runs (measured: ≤ 0.021)
    assert worst_sd < 0.05, worst_sd
    # and within Monte Carlo error of them (README: an exact method gives |z| ≲ 3–4; measured 2.6)
    assert worst_z < 4.0, worst_z


def test_sleepstudy_differs_from_default_prior_run(sleep, stan):
    """The check above can fail: brms's default priors give a visibly different sd posterior."""
    expr, samples = sleep
    s = unc.posterior(expr, samples, "~ Days + (1 | Subject)").summary.set_index("param")
    r = stan[(stan.model == "intercept_default") & (stan.seed == DEFAULT_SEED)].set_index("param")
    p = "sd_Subject__Intercept"
    assert abs(s.loc[p, "q97.5"] - r.loc[p, "q97.5"]) / r.loc[p, "sd"] > 0.1


# ---------------------------------------------------------------------------------------------
# brute force: dense n × n algebra on a fine grid, scipy distributions, root finding
# ---------------------------------------------------------------------------------------------


def _brute(y, X, K, prior, t_lo=-40.0, t_hi=15.0, m=8001):
    n, p = X.shape
    nu = n - p
    t = np.linspace(t_lo, t_hi, m)
    lam = np.exp(t)
    lp = np.empty(m)
    bh = np.empty((m, p))
    ainv = np.empty((m, p))
    S = np.empty(m)
    for i, lam_i in enumerate(lam):
        V = np.eye(n) + lam_i * K
        Vi = np.linalg.inv(V)
        A = X.T @ Vi @ X
        b = np.linalg.solve(A, X.T @ Vi @ y)
        r = y - X @ b
        S[i] = r @ Vi @ r
        bh[i] = b
        ainv[i] = np.diag(np.linalg.inv(A))
        if prior == "unif_icc":
            logp = -2 * np.log1p(lam_i)
        else:
            logp = -np.log(np.pi) - 0.5 * np.log(lam_i) - np.log1p(lam_i)
        lp[i] = logp + t[i] - 0.5 * np.linalg.slogdet(V)[1] - 0.5 * np.linalg.slogdet(A)[1] - nu / 2 * np.log(S[i])
    w = np.exp(lp - lp.max())
    w /= w.sum()
    assert w[0] < 1e-7 and w[-1] < 1e-7  # the grid covers the mass

    def quant(cdf, lo, hi, q):
        return optimize.brentq(lambda x: cdf(x) - q, lo, hi, xtol=1e-12)

    out = {}
    for j in range(p):
        sc = np.sqrt(S / nu * ainv[:, j])

        def cdf(x, j=j, sc=sc):
            return float(np.sum(w * stats.t.cdf((x - bh[:, j]) / sc, nu)))

        mean = np.sum(w * bh[:, j])
        sd = np.sqrt(np.sum(w * (sc**2 * nu / (nu - 2) + bh[:, j] ** 2)) - mean**2)
        out[f"beta:{j}"] = (mean, sd, [quant(cdf, mean - 20 * sd, mean + 20 * sd, q) for q in (0.025, 0.5, 0.975)])
    for key, f in (("sigma", np.ones(m)), ("sd_b", lam)):
        # σ² | λ ~ Inv-Gamma(ν/2, scale S/2); σ_b² = λ σ²
        dist = stats.invgamma(nu / 2, scale=S * f / 2)
        e1 = np.sum(w * np.sqrt(S * f / 2) * np.exp(special.gammaln((nu - 1) / 2) - special.gammaln(nu / 2)))
        e2 = np.sum(w * S * f / (nu - 2))

        def cdf(x, dist=dist):
            return float(np.sum(w * dist.cdf(x * x)))

        out[key] = (e1, np.sqrt(e2 - e1**2), [quant(cdf, 0.0, 50 * e1 + 1, q) for q in (0.025, 0.5, 0.975)])
    icc = lam / (1 + lam)
    mean = np.sum(w * icc)
    # the CDF of t from the cumulative trapezoid of the density (smooth on this fine grid)
    dens = np.exp(lp - lp.max())
    cum = integrate.cumulative_trapezoid(dens, t, initial=0.0)
    cum /= cum[-1]
    tq = [np.interp(q, cum, t) for q in (0.025, 0.5, 0.975)]
    out["ICC"] = (mean, np.sqrt(np.sum(w * icc**2) - mean**2), list(special.expit(tq)))
    return out


def _simulated(n_batches=6, per=6, seed=7):
    rng = np.random.default_rng(seed)
    batch = np.repeat(np.arange(n_batches), per)
    n = len(batch)
    Z = np.zeros((n, n_batches))
    Z[np.arange(n), batch] = 1.0
    X = np.column_stack([np.ones(n), rng.normal(size=n), (batch % 2 == 0).astype(float)])
    y = X @ np.array([5.0, 0.7, -1.0]) + Z @ rng.normal(scale=1.2, size=n_batches) + rng.normal(size=n)
    samples = pd.DataFrame(
        {"x": X[:, 1], "cond": np.where(X[:, 2] > 0, "a", "b"), "batch": [f"b{i}" for i in batch]},
        index=[f"s{i}" for i in range(n)],
    )
    return y, X, Z, samples


def _compare(got, ref, tol):
    worst = 0.0
    for key, (mean, sd, qs) in ref.items():
        g = got[key]
        worst = max(
            worst,
            abs(g["mean"][0] - mean) / sd,
            abs(g["sd"][0] - sd) / sd,
            *(abs(a - b) / sd for a, b in zip(g["quantiles"][0], qs)),
        )
    assert worst < tol, worst
    return worst


@pytest.mark.parametrize("prior", ["unif_icc", "half_cauchy"])
def test_arrays_match_dense_brute_force(prior):
    y, X, Z, _ = _simulated()
    ref = _brute(y, X, Z @ Z.T, prior)
    got = unc.posterior_arrays(y[:, None], X, Z=Z, prior=prior)["params"]
    _compare(got, ref, 0.005)


def test_known_covariance_matches_dense_brute_force():
    y, X, Z, _ = _simulated(seed=11)
    rng = np.random.default_rng(3)
    L = rng.normal(size=(len(y), 8))
    K = L @ L.T / 8 + 0.05 * np.eye(len(y))  # full rank, like a kinship matrix
    ref = _brute(y, X, K, "unif_icc")
    got = unc.posterior_arrays(y[:, None], X, K=K)["params"]
    _compare(got, ref, 0.005)


def test_near_zero_batch_variance_matches_brute_force():
    """A gene with no batch effect: the posterior of log λ has a long left tail."""
    rng = np.random.default_rng(99)
    y, X, Z, _ = _simulated(seed=5)
    y = X @ np.array([1.0, 0.3, 0.0]) + rng.normal(size=len(y))
    for prior in ("unif_icc", "half_cauchy"):
        ref = _brute(y, X, Z @ Z.T, prior, t_lo=-60.0, m=12001)
        got = unc.posterior_arrays(y[:, None], X, Z=Z, prior=prior)["params"]
        _compare(got, ref, 0.01)


def test_formula_interface_names_missing_values_and_statuses():
    y, X, Z, samples = _simulated()
    rng = np.random.default_rng(1)
    Y = np.vstack([y, y + rng.normal(size=len(y)), np.full(len(y), 3.0), y])
    Y[3, [0, 7, 20]] = np.nan
    expr = pd.DataFrame(Y, index=["g1", "g2", "const", "gap"], columns=samples.index)
    status = pd.Series({"g1": "ok", "g2": "filtered:low_counts", "const": "ok", "gap": "ok"})
    res = unc.posterior(expr, samples, "~ x + cond + (1 | batch)", gene_status=status)
    s = res.summary
    assert list(s.columns) == unc.SUMMARY_COLUMNS
    assert list(s["param"].unique()) == [
        "b_Intercept",
        "b_x",
        "b_conda",
        "sigma",
        "sd_batch__Intercept",
        "ICC",
    ] or list(s["param"].unique()) == ["b_Intercept", "b_x", "b_condb", "sigma", "sd_batch__Intercept", "ICC"]
    by = s.groupby("gene_id")["status"].first()
    assert by["g1"] == "ok" and by["g2"] == "filtered:low_counts" and by["const"].startswith("failed")
    assert s.loc[s.gene_id.isin(["g2", "const"]), "mean"].isna().all()
    assert s.loc[s.gene_id == "g1", "mean"].notna().all()
    # the gene with gaps equals the brute force on its observed samples
    keep = np.setdiff1d(np.arange(len(y)), [0, 7, 20])
    Xd = np.column_stack([np.ones(len(y)), samples["x"], (samples["cond"] == "b").astype(float)])[keep]
    ref = _brute(y[keep], Xd, (Z @ Z.T)[np.ix_(keep, keep)], "unif_icc")
    g = s[(s.gene_id == "gap") & (s.param == "sigma")].iloc[0]
    assert abs(g["q97.5"] - ref["sigma"][2][2]) / ref["sigma"][1] < 0.005
    g = s[(s.gene_id == "gap") & (s.param == "ICC")].iloc[0]
    assert abs(g["q50"] - ref["ICC"][2][1]) / ref["ICC"][1] < 0.005


def test_more_than_one_component_goes_to_importance_sampling(sleep):
    expr, samples = sleep
    res = unc.posterior(expr, samples, "~ Days + (Days | Subject)")
    assert (res.summary["status"] == "ok").all()
    assert "cor_Subject__Intercept__Days" in set(res.summary["param"])
    assert res.summary["mean"].notna().all()
    assert res.diagnostics is not None


def test_blocks_and_threads_do_not_change_results():
    rng = np.random.default_rng(2)
    y, X, Z, _ = _simulated()
    Y = y[:, None] + rng.normal(size=(len(y), 23)) * np.linspace(0.2, 3, 23)
    a = unc.posterior_arrays(Y, X, Z=Z, chunk_size=1000)
    b = unc.posterior_arrays(Y, X, Z=Z, chunk_size=5, n_threads=2)
    c = unc.posterior_arrays(Y[:, ::-1], X, Z=Z, chunk_size=7)
    for k in a["params"]:
        np.testing.assert_allclose(a["params"][k]["quantiles"], b["params"][k]["quantiles"], rtol=1e-12)
        np.testing.assert_allclose(a["params"][k]["quantiles"], c["params"][k]["quantiles"][::-1], rtol=1e-9)


@pytest.mark.parametrize("prior, scale", [("unif_icc", 1.0), ("half_cauchy", 1.0), ("half_cauchy", 0.3)])
def test_priors_are_proper_densities(prior, scale):
    total, _ = integrate.quad(
        lambda t: np.exp(unc.log_prior_lambda(np.array([t]), prior, scale)[0] + t), -60, 60, limit=400
    )
    assert abs(total - 1.0) < 1e-6
    # half-Cauchy on σ_b/σ: P(√λ ≤ 1) = 2/π·atan(1/s)
    if prior == "half_cauchy":
        mass, _ = integrate.quad(
            lambda t: np.exp(unc.log_prior_lambda(np.array([t]), prior, scale)[0] + t), -60, 0, limit=400
        )
        assert abs(mass - 2 / np.pi * np.arctan(1 / scale)) < 1e-6
    else:  # ICC uniform: P(ICC ≤ 1/2) = P(λ ≤ 1) = 1/2
        mass, _ = integrate.quad(lambda t: np.exp(unc.log_prior_lambda(np.array([t]), prior, scale)[0] + t), -60, 0)
        assert abs(mass - 0.5) < 1e-8


def test_bad_inputs_raise():
    y, X, Z, _ = _simulated()
    with pytest.raises(ValueError, match="prior"):
        unc.posterior_arrays(y, X, Z=Z, prior="flat")
    with pytest.raises(ValueError, match="exactly one"):
        unc.posterior_arrays(y, X)
    with pytest.raises(ValueError, match="missing"):
        unc.posterior_arrays(np.where(np.arange(len(y)) == 3, np.nan, y), X, Z=Z)
