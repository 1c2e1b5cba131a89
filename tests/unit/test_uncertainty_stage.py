"""The uncertainty stage (files to files), its figures and the sleepstudy walkthrough config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from batchmix import io, lmm
from batchmix import uncertainty as unc
from batchmix.defaults import DEFAULT_SEED  # the R and Stan references were made with this seed
from batchmix.pipeline.uncertainty import uncertainty_stage
from batchmix.plots.uncertainty import plot_bootstrap_band, plot_posterior

ROOT = Path(__file__).resolve().parents[2]
REFS = ROOT / "tests" / "data" / "sleepstudy_uncertainty"


def _stage_inputs(tmp_path: Path, expr: pd.DataFrame, samples_path: Path, formula: str) -> dict:
    samples = io.read_samples(samples_path).loc[expr.columns]
    paths = {
        "expression": tmp_path / "expression.tsv.gz",
        "gene_status": tmp_path / "gene_status.tsv",
        "gene_fits": tmp_path / "gene_fits.tsv",
        "samples": samples_path,
    }
    io.write_table(expr.rename_axis("gene_id"), paths["expression"], index=True)
    io.write_table(
        pd.DataFrame(
            {
                "gene_id": expr.index,
                "status": "ok",
                "base_mean": expr.mean(axis=1).to_numpy(),
                "n_observed": expr.shape[1],
            }
        ),
        paths["gene_status"],
    )
    io.write_table(lmm.fit(expr, samples, formula).gene_fits, paths["gene_fits"])
    return paths


def _outputs(tmp_path: Path) -> dict:
    out = tmp_path / "out"
    return {
        "bootstrap": str(out / "bootstrap.tsv"),
        "posterior": str(out / "posterior.tsv"),
        "summary": str(out / "summary.json"),
        "figures": str(out / "figures"),
    }


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """The stage on the shipped walkthrough inputs with the shipped config (fewer replicates)."""
    tmp = tmp_path_factory.mktemp("sleep")
    config = yaml.safe_load((ROOT / "config" / "sleepstudy.yaml").read_text())
    config["uncertainty"]["bootstrap"] = 400
    expr = pd.read_csv(ROOT / config["expression"], sep="\t", index_col=0)
    paths = _stage_inputs(tmp, expr, ROOT / config["samples"], config["model"])
    out = _outputs(tmp)
    uncertainty_stage(
        config, str(paths["expression"]), str(paths["gene_status"]), str(paths["gene_fits"]), str(paths["samples"]), out
    )
    return config, out


def test_walkthrough_tables(walkthrough):
    _, out = walkthrough
    boot = pd.read_csv(out["bootstrap"], sep="\t")
    post = pd.read_csv(out["posterior"], sep="\t")
    assert list(boot.columns) == unc.BOOT_COLUMNS
    assert list(post.columns) == unc.SUMMARY_COLUMNS
    assert set(boot["param"]) == {"b_Intercept", "b_Days", "sd_Subject__Intercept", "sigma", "ICC"}
    assert (boot["status"] == "ok").all() and (post["status"] == "ok").all()
    # the estimates are lme4's, the posterior is Stan's (long run) to 0.05 posterior SD
    est = pd.read_csv(REFS / "lmer_estimates.tsv", sep="\t")
    est = est[est.model == "intercept"].set_index("param")["estimate"]
    np.testing.assert_allclose(boot.set_index("param").loc[est.index, "estimate"], est, rtol=2e-5)
    stan = pd.read_csv(REFS / "brms_posterior.tsv", sep="\t")
    stan = stan[(stan.model == "intercept_flat_unifICC") & (stan.draws == 1_000_000) & (stan.seed == DEFAULT_SEED)]
    p = post.set_index("param")
    for _, r in stan.iterrows():
        for col in ("mean", "q2.5", "q50", "q97.5"):
            assert abs(p.loc[r["param"], col] - r[col]) < 0.05 * r["sd"], (r["param"], col)


def test_walkthrough_summary_and_figures(walkthrough):
    import matplotlib.image

    _, out = walkthrough
    summary = json.loads(Path(out["summary"]).read_text())
    assert summary["bootstrap"]["nsim"] == 400 and summary["bootstrap"]["n_fail"] == 0
    figs = summary["figures"]["Reaction"]
    for name in ("bootstrap_band", "posterior"):
        image = matplotlib.image.imread(Path(out["figures"]) / figs[name])
        assert image.shape[0] > 300 and image.shape[1] > 600
        assert image[..., :3].std() > 0.05  # not blank
    # the OLS-against-LMM table: lme4's REML log-likelihood, and the LMM wins on AIC and BIC
    table = {row["model"]: row for row in summary["ols_vs_lmm"]["Reaction"]}
    ref = pd.read_csv(REFS / "lmer_estimates.tsv", sep="\t")
    assert table["LMM"]["logLik"] == pytest.approx(ref[ref.model == "intercept"]["logLik_REML"].iloc[0], abs=1e-5)
    assert table["LMM"]["AIC"] < table["OLS"]["AIC"] and table["LMM"]["BIC"] < table["OLS"]["BIC"]
    assert table["LMM"]["p"] < 1e-20


def test_figures_use_no_pyplot_state(walkthrough, tmp_path):
    config, _ = walkthrough
    expr = pd.read_csv(ROOT / config["expression"], sep="\t", index_col=0)
    samples = io.read_samples(ROOT / config["samples"]).loc[expr.columns]
    boot = unc.bootstrap(expr, samples, "~ Days + (Days | Subject)", nsim=100, keep_draws_for=["Reaction"])
    post = unc.posterior(expr, samples, "~ Days + (1 | Subject)", keep_grid_for=["Reaction"])
    fig1 = plot_bootstrap_band(
        expr.loc["Reaction"], samples, boot.draws["Reaction"], boot.fits["Reaction"], gene_id="Reaction"
    )
    grid, names = post.grids["Reaction"]
    draws = unc.posterior_draws(grid, names, 40000, 1)
    fig2 = plot_posterior(draws, names, post.summary, gene_id="Reaction", sd_name="sd_Subject__Intercept")
    from matplotlib.figure import Figure

    assert isinstance(fig1, Figure) and isinstance(fig2, Figure)
    # 1 population panel + 18 subject panels; 2 fixed effects + sigma + sd + ICC
    assert len([a for a in fig1.get_axes() if a.get_visible()]) == 19
    assert len([a for a in fig2.get_axes() if a.get_visible()]) == 5
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []
    fig1.savefig(tmp_path / "a.png")


def test_posterior_draws_follow_the_summary(walkthrough):
    config, _ = walkthrough
    expr = pd.read_csv(ROOT / config["expression"], sep="\t", index_col=0)
    samples = io.read_samples(ROOT / config["samples"]).loc[expr.columns]
    post = unc.posterior(expr, samples, config["model"], keep_grid_for=["Reaction"])
    grid, names = post.grids["Reaction"]
    draws = unc.posterior_draws(grid, names, n=200_000, seed=3)
    s = post.summary.set_index("param")
    for col, param in [("b_Days", "b_Days"), ("sigma", "sigma"), ("sd", "sd_Subject__Intercept"), ("ICC", "ICC")]:
        sd = s.loc[param, "sd"]
        assert abs(draws[col].mean() - s.loc[param, "mean"]) < 0.02 * sd, param
        assert abs(np.quantile(draws[col], 0.975) - s.loc[param, "q97.5"]) < 0.03 * sd, param


def test_gene_choice_and_disabled_methods(tmp_path):
    rng = np.random.default_rng(2)
    n = 40
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "batch": [f"b{i % 5}" for i in range(n)],
            "cond": np.where(np.arange(n) % 2, "t", "c"),
        }
    )
    samples_path = tmp_path / "samples.tsv"
    samples.to_csv(samples_path, sep="\t", index=False)
    codes = np.arange(n) % 5
    shares = np.array([0.1, 3.0, 0.5, 0.0])  # g1 has by far the largest batch share
    Y = 5 + rng.normal(size=(4, 5))[:, codes] * shares[:, None] + rng.normal(size=(4, n))
    expr = pd.DataFrame(Y, index=["g0", "g1", "g2", "g3"], columns=samples["sample_id"])
    paths = _stage_inputs(tmp_path, expr, samples_path, "~ cond + (1 | batch)")
    config = {
        "model": "~ cond + (1 | batch)",
        "batch": "batch",
        "reml": True,
        "report": {"genes": []},
        "uncertainty": {"bootstrap": 50, "bayes": False, "genes": 1, "figure_genes": ["g3"]},
    }
    out = _outputs(tmp_path)
    uncertainty_stage(
        config, str(paths["expression"]), str(paths["gene_status"]), str(paths["gene_fits"]), str(samples_path), out
    )
    boot = pd.read_csv(out["bootstrap"], sep="\t")
    by = boot.groupby("gene_id")["status"].first()
    # N = 1 picks the largest batch share; the figure gene is always done
    assert by["g1"] == "ok" and by["g3"] == "ok"
    assert by["g0"] == "skipped:not_selected" and by["g2"] == "skipped:not_selected"
    post = pd.read_csv(out["posterior"], sep="\t")
    assert list(post.columns) == unc.SUMMARY_COLUMNS and post.empty
    assert sorted(p.name for p in Path(out["figures"]).iterdir()) == ["g3.bootstrap_band.png"]


def test_walkthrough_config_is_valid():
    from batchmix.config import load_schema, validate_config

    config = yaml.safe_load((ROOT / "config" / "sleepstudy.yaml").read_text())
    assert config["uncertainty"]["bootstrap"] > 0 and config["uncertainty"]["bayes"] is True
    assert config["simpson"]["enabled"] is False
    if "uncertainty" not in load_schema()["properties"]:
        # until the schema declares the section, check everything else
        config = {k: v for k, v in config.items() if k != "uncertainty"}
    validate_config(config, "config/sleepstudy.yaml")
    inputs = io.validate_inputs(
        ROOT / config["expression"], ROOT / config["samples"], config["input_type"], config["model"], config["batch"]
    )
    assert inputs.expression.shape == (1, 180)
    raw = pd.read_csv(REFS / "sleepstudy.tsv", sep="\t")
    np.testing.assert_allclose(inputs.expression.loc["Reaction"].to_numpy(), raw["Reaction"].to_numpy())


@pytest.mark.parametrize(
    "ids",
    [
        ["007", "1e5", "gene 4", "0x1"],
        ["007", "1e5", "NA", "gene 4"],
    ],
)
def test_gene_ids_that_look_like_numbers_stay_text(tmp_path, ids):
    """Ids such as 007 or 1e5 are read back verbatim and match gene_fits (they used to become floats)."""
    rng = np.random.default_rng(7)
    n = 30
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "batch": [f"b{i % 5}" for i in range(n)],
            "cond": np.where(np.arange(n) % 2, "t", "c"),
        }
    )
    samples_path = tmp_path / "samples.tsv"
    samples.to_csv(samples_path, sep="\t", index=False)
    Y = 5 + rng.normal(size=(4, 5))[:, np.arange(n) % 5] + rng.normal(size=(4, n))
    expr = pd.DataFrame(Y, index=ids, columns=samples["sample_id"])
    paths = _stage_inputs(tmp_path, expr, samples_path, "~ cond + (1 | batch)")
    config = {
        "model": "~ cond + (1 | batch)",
        "batch": "batch",
        "reml": True,
        "report": {"genes": ["007"]},
        "uncertainty": {"bootstrap": 20, "bayes": True, "genes": "all"},
    }
    out = _outputs(tmp_path)
    uncertainty_stage(
        config, str(paths["expression"]), str(paths["gene_status"]), str(paths["gene_fits"]), str(samples_path), out
    )
    for table in (io.read_result_table(out["bootstrap"]), io.read_result_table(out["posterior"])):
        assert table["gene_id"].drop_duplicates().tolist() == ids
        assert (table["status"] == "ok").all()
    summary = json.loads(Path(out["summary"]).read_text())
    assert list(summary["figures"]) == ["007"] and list(summary["ols_vs_lmm"]) == ["007"]
    assert sorted(p.name for p in Path(out["figures"]).iterdir()) == ["007.bootstrap_band.png", "007.posterior.png"]


def test_random_slopes_walkthrough_with_brms_default_priors(tmp_path):
    """The issue's acceptance run: the walkthrough with (Days|Subject) and prior brms_default."""
    config = yaml.safe_load((ROOT / "config" / "sleepstudy.yaml").read_text())
    config["model"] = "~ Days + (Days | Subject)"
    config["uncertainty"].update({"bootstrap": 0, "bayes": True, "prior": "brms_default"})
    expr = pd.read_csv(ROOT / config["expression"], sep="\t", index_col=0)
    paths = _stage_inputs(tmp_path, expr, ROOT / config["samples"], config["model"])
    out = _outputs(tmp_path)
    out["posterior_diagnostics"] = str(tmp_path / "out" / "posterior_diagnostics.tsv")
    uncertainty_stage(
        config, str(paths["expression"]), str(paths["gene_status"]), str(paths["gene_fits"]), str(paths["samples"]), out
    )
    post = io.read_result_table(out["posterior"]).set_index("param")
    assert (post["status"] == "ok").all()
    assert {"cor_Subject__Intercept__Days", "sd_Subject__Days", "frac_Subject"} <= set(post.index)
    # brms 2.18's posterior mean of the correlation is 0.093 / 0.103 (two seeds, MCSE 0.01)
    assert abs(post.loc["cor_Subject__Intercept__Days", "mean"] - 0.098) < 0.05 * 0.30 + 0.02
    summary = json.loads(Path(out["summary"]).read_text())
    assert summary["posterior"]["engine"] == "importance_sampling"
    assert summary["posterior"]["status_counts"] == {"ok": 1}
    assert summary["figures"]["Reaction"]["posterior"] == "Reaction.posterior.png"
    diag = io.read_result_table(out["posterior_diagnostics"])
    assert list(diag["gene_id"]) == ["Reaction"] and diag.loc[0, "khat"] < 0.7
    assert diag.loc[0, "prior_location"] == 288.7 and diag.loc[0, "prior_scale"] == 59.3


def test_kinship_run_reads_the_matrix_from_the_config(tmp_path):
    from batchmix.lmm.kinship import attach_kinship, read_kinship

    data = ROOT / "tests" / "data" / "kinship"
    expr = io.read_matrix(data / "expression.tsv")
    samples = io.read_samples(data / "samples.tsv")
    sheet = attach_kinship(samples, read_kinship(data / "kinship.tsv", samples.index))
    formula = "~ cond + (1 | kinship)"
    paths = {"expression": tmp_path / "e.tsv.gz", "gene_status": tmp_path / "s.tsv", "gene_fits": tmp_path / "f.tsv"}
    io.write_table(expr.rename_axis("gene_id"), paths["expression"], index=True)
    io.write_table(pd.DataFrame({"gene_id": expr.index, "status": "ok"}), paths["gene_status"])
    io.write_table(lmm.fit(expr, sheet, formula).gene_fits, paths["gene_fits"])
    config = {
        "model": formula,
        "batch": "batch",
        "reml": True,
        "covariance": {"kinship": str(data / "kinship.tsv")},
        "uncertainty": {"bootstrap": 0, "bayes": True, "prior": "brms_default", "genes": "all"},
    }
    out = _outputs(tmp_path)
    uncertainty_stage(
        config,
        str(paths["expression"]),
        str(paths["gene_status"]),
        str(paths["gene_fits"]),
        str(data / "samples.tsv"),
        out,
    )
    post = io.read_result_table(out["posterior"])
    assert (post["status"] == "ok").all()
    assert set(post["gene_id"]) == set(expr.index)
    assert "sd_kinship__Intercept" in set(post["param"])
