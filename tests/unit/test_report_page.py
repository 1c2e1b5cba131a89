"""batchmix.report: the shrinkage estimates and the page, on synthetic studies and against lme4."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix import report
from batchmix.config import fill_defaults
from batchmix.io import read_matrix, read_samples
from batchmix.lmm import fit, model_metadata
from batchmix.pipeline.summary import diagnostics_stage
from batchmix.report import summaries

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The synthetic study: J batches x 2 conditions x m replicates, a random batch intercept.
J, M = 4, 3
SIGMA2_BATCH, SIGMA2 = 0.8, 0.25


# ---------------------------------------------------------------------------------------------
# Synthetic study with closed-form mixed-model estimates


def _samples() -> pd.DataFrame:
    rows = []
    for j in range(J):
        for condition in ("Mock", "CoV"):
            for r in range(M):
                rows.append(
                    {"sample_id": f"B{j + 1}_{condition}_{r + 1}", "Infection": condition, "Batch": f"B{j + 1}"}
                )
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
        "coef_Intercept": cov_mean,
        "coef_InfectionMock": mock_mean - cov_mean,
        "se_Intercept": np.sqrt(sigma2_batch / J + sigma2 / (J * M)),
        "se_InfectionMock": np.sqrt(2 * sigma2 / (J * M)),
        "var_Batch": sigma2_batch,
        "var_residual": sigma2,
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


def make_study(
    root: Path,
    model: str = "~ Infection + (1|Batch)",
    n_genes: int = 12,
    reversals: int = 3,
    simpson: bool = True,
    genes: list[str] | None = None,
    report_genes: list[str] | None = None,
) -> tuple[dict, dict]:
    """Write every report input of a synthetic run; returns (config, inputs)."""
    rng = np.random.default_rng(7)
    samples = _samples()
    n = len(samples)
    genes = genes if genes is not None else [f"G{i:02d}" for i in range(n_genes)]
    n_genes = len(genes)
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
            row.update(
                {
                    "loglik": -20.0,
                    "aic": 48.0 - 10 * frac_batch,
                    "bic": 52.0 - 10 * frac_batch,
                    "ols_loglik": -25.0,
                    "ols_aic": 44.0,
                    "ols_bic": 47.0,
                    "lrt_stat": 10 * frac_batch,
                    "lrt_p": float(np.exp(-10 * frac_batch)),
                    "frac_Infection": (1 - frac_batch) / 2,
                    "frac_Batch": frac_batch,
                    "frac_residual": (1 - frac_batch) / 2,
                    "d0": 4.0,
                    "s0": 0.5,
                }
            )
            if has_random:
                blup_rows += [
                    {"gene_id": g, "group": "Batch", "level": b, "term": "Intercept", "value": v}
                    for b, v in blups.items()
                ]
        fit_rows.append(row)
    gene_fits = pd.DataFrame(fit_rows)
    if not has_random:
        gene_fits = gene_fits.drop(columns=["var_Batch", "frac_Batch"])
    gene_status = pd.DataFrame(
        {
            "gene_id": genes,
            "status": ["filtered:low_counts" if s == "filtered:low_counts" else "ok" for s in status],
            "base_mean": 100.0,
            "n_observed": n,
        }
    )
    ranks = np.arange(n_genes - 1, dtype=float)
    mean_sd = pd.concat(
        [
            pd.DataFrame(
                {
                    "rank_of_mean": ranks,
                    "mean": ranks,
                    "sd": 1 + ranks / 10,
                    "running_median_sd": 1 + ranks / 10,
                    "scale": "before",
                }
            ),
            pd.DataFrame(
                {
                    "rank_of_mean": ranks,
                    "mean": ranks,
                    "sd": 0.5 + 0 * ranks,
                    "running_median_sd": 0.5 + 0 * ranks,
                    "scale": "after",
                }
            ),
        ]
    )
    pairs = pd.DataFrame(
        {
            "gene_a": genes[:reversals],
            "gene_b": genes[1 : reversals + 1],
            "r_pooled": 0.7,
            "r_within": -0.6,
            "r_between": 0.95,
            "between_share": 1.4,
            "p": 1e-6,
            "q": 1e-4,
            "n_batches_within_sign": 4,
            "per_batch_r": "B1:-0.5;B2:-0.6;B3:-0.7;B4:-0.4",
        }
    )
    d = root / "results"
    counts_path = root / "data" / "counts.tsv"
    counts_path.parent.mkdir(parents=True, exist_ok=True)
    counts_path.write_text("gene_id\t" + "\t".join(samples.index) + "\n")
    # The model's metadata from the design alone, and Cov(β̂) in closed form (see _balanced_fit).
    metadata = model_metadata(model, samples)
    (d / "lmm").mkdir(parents=True, exist_ok=True)
    metadata.write_json(d / "lmm/model.json")
    vcov_rows = []
    if has_random:
        cov = {
            ("Intercept", "Intercept"): SIGMA2_BATCH / J + SIGMA2 / (J * M),
            ("Intercept", "InfectionMock"): -SIGMA2 / (J * M),
            ("InfectionMock", "InfectionMock"): 2 * SIGMA2 / (J * M),
        }
        vcov_rows = [
            {"gene_id": g, "coef_a": a, "coef_b": b, "value": v}
            for g, s in zip(genes, status)
            if s in ("ok", "singular")
            for (a, b), v in cov.items()
        ]
    fixed_vcov = pd.DataFrame(vcov_rows, columns=["gene_id", "coef_a", "coef_b", "value"])
    inputs = {
        "model": str(d / "lmm/model.json"),
        "fixed_vcov": _write_tsv(fixed_vcov, d / "lmm/fixed_vcov.tsv"),
        "vst_info": str(d / "vst/info.json"),
        "size_factors": _write_tsv(
            pd.DataFrame({"sample_id": samples.index, "size_factor": np.linspace(0.8, 1.2, n)}),
            d / "vst/size_factors.tsv",
        ),
        "gene_status": _write_tsv(gene_status, d / "vst/gene_status.tsv"),
        "mean_sd": _write_tsv(mean_sd, d / "vst/mean_sd.tsv"),
        "vst_expression": _write_tsv(expression.rename_axis("gene_id"), d / "vst/expression.tsv.gz", index=True),
        "gene_fits": _write_tsv(gene_fits, d / "lmm/gene_fits.tsv"),
        "blups": _write_tsv(
            pd.DataFrame(blup_rows, columns=["gene_id", "group", "level", "term", "value"]), d / "lmm/blups.tsv"
        ),
        "samples": _write_tsv(samples, root / "data/samples.tsv", index=True),
        "expression": str(counts_path),
    }
    (d / "vst/info.json").write_text(
        json.dumps(
            {
                "input_type": "counts",
                "n_genes": n_genes,
                "n_samples": n,
                "n_genes_ok": n_genes - 1,
                "n_genes_filtered": 1,
                "vst_fit_type_used": "parametric",
                "vst_fit_type_requested": "parametric",
                "vst_blind": True,
                "vst_nsub": None,
                "size_factor_method": "ratio",
                "before_scale": "log2(normalised count + 1)",
                "notes": [],
            }
        )
    )
    if has_random:
        corrected = expression.copy()
        for g, s in zip(genes, status):
            if s in ("ok", "singular"):
                _, blups = _balanced_fit(expression.loc[g], samples, SIGMA2_BATCH, SIGMA2)
                corrected.loc[g] -= samples["Batch"].map(blups).to_numpy()
        inputs["corrected"] = _write_tsv(
            corrected.rename_axis("gene_id"), d / "corrected/expression.tsv.gz", index=True
        )
    if simpson:
        inputs["reversals"] = _write_tsv(pairs, d / "simpson/reversals.tsv")
        summary = {
            "n_genes_scanned": n_genes - 1,
            "n_pairs": (n_genes - 1) * (n_genes - 2) // 2,
            "n_candidates": 5,
            "n_reversals": reversals,
            "fdr": 0.05,
            "method": "bh",
            "adjust_for": [],
        }
        (d / "simpson/summary.json").write_text(json.dumps(summary))
        inputs["simpson_summary"] = str(d / "simpson/summary.json")
        from matplotlib.figure import Figure

        fig = Figure(figsize=(2, 2))
        fig.add_subplot().plot([0, 1], [1, 0])
        fig.savefig(d / "simpson/top_pairs.png")
        inputs["simpson_figure"] = str(d / "simpson/top_pairs.png")
    config = fill_defaults(
        {
            "expression": inputs["expression"],
            "samples": inputs["samples"],
            "input_type": "counts",
            "model": model,
            "batch": "Batch",
            "simpson": {"enabled": simpson, "fdr": 0.05},
            "report": {"genes": report_genes or [], "top_pairs": 2},
        }
    )
    # The batch figures draw the diagnostics stage's PCA: run it on the study.
    (d / "diagnostics").mkdir(exist_ok=True)
    diagnostics_inputs = {k: inputs[k] for k in ("gene_status", "samples")} | {"expression": inputs["vst_expression"]}
    if "corrected" in inputs:
        diagnostics_inputs["corrected"] = inputs["corrected"]
    inputs["pca"], inputs["pca_scores"] = str(d / "diagnostics/pca.json"), str(d / "diagnostics/pca_scores.tsv")
    diagnostics_stage(config, diagnostics_inputs, {"pca": inputs["pca"], "scores": inputs["pca_scores"]}, {})
    return config, inputs


def _read_study(inputs: dict) -> dict:
    return report.load_tables(inputs)


def test_shrinkage_estimates_match_the_balanced_closed_form(tmp_path):
    config, inputs = make_study(tmp_path)
    tables = _read_study(inputs)
    samples = tables["samples"]
    y = tables["vst_expression"].loc["G00"]
    est = summaries.shrinkage_estimates(
        "G00",
        tables["vst_expression"],
        samples,
        tables["gene_fits"],
        tables["blups"],
        tables["model"],
        "Batch",
        fixed_vcov=tables["fixed_vcov"],
    )
    assert est.kind == "categorical" and est.x == "Infection" and est.band_note == ""
    cells = est.cells.set_index(["group", "x"])
    cov_mean = y[samples["Infection"] == "CoV"].mean()
    mock_mean = y[samples["Infection"] == "Mock"].mean()
    for j in range(J):
        batch = f"B{j + 1}"
        in_batch = samples["Batch"] == batch
        batch_residual = np.mean(
            np.where(samples.loc[in_batch, "Infection"] == "CoV", y[in_batch] - cov_mean, y[in_batch] - mock_mean)
        )
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


def test_shrinkage_band_is_left_out_with_a_note_without_the_covariance(tmp_path):
    config, inputs = make_study(tmp_path)
    tables = _read_study(inputs)
    args = (
        "G00",
        tables["vst_expression"],
        tables["samples"],
        tables["gene_fits"],
        tables["blups"],
        tables["model"],
        "Batch",
    )
    without_gene = tables["fixed_vcov"][tables["fixed_vcov"]["gene_id"] != "G00"]
    est = summaries.shrinkage_estimates(*args, fixed_vcov=without_gene)
    assert "no finite covariance" in est.band_note
    assert est.cells["population_se"].isna().all() and est.cells["population"].notna().all()
    est = summaries.shrinkage_estimates(*args, fixed_vcov=None)
    assert "fixed_vcov.tsv" in est.band_note and est.cells["population_se"].isna().all()


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
    samples = pd.DataFrame(
        {"Days": data["Days"].astype(float).to_numpy(), "Subject": data["Subject"].to_numpy()},
        index=pd.Index(ids, name="sample_id"),
    )
    return expression, samples


@pytest.mark.parametrize(
    "model,formula,reml",
    [
        ("slopes_reml", "Reaction ~ Days + (Days | Subject)", True),
        ("uncorrelated_reml", "Reaction ~ Days + (Days || Subject)", True),
        ("intercept_ml", "Reaction ~ Days + (1 | Subject)", False),
    ],
)
def test_sleepstudy_band_and_predictions_match_lme4(model, formula, reml):
    expression, samples = _sleepstudy()
    result = fit(expression, samples, formula, reml=reml)
    est = summaries.shrinkage_estimates(
        "Reaction",
        expression,
        samples,
        result.gene_fits,
        result.blups,
        result.metadata,
        "Subject",
        fixed_vcov=result.fixed_vcov,
    )
    assert est.kind == "numeric" and est.x == "Days" and est.band_note == ""
    lme4_fits, lme4_blups = _lme4_fit("sleepstudy", model)
    row = lme4_fits.iloc[0]
    obs = est.observations
    # At Days = 0 the population fit is the intercept and its standard error lme4's se_Intercept.
    day0 = obs[obs["x"] == 0.0]
    np.testing.assert_allclose(day0["population"], row["coef_Intercept"], rtol=1e-6)
    np.testing.assert_allclose(day0["population_se"], row["se_Intercept"], rtol=1e-5)
    # The band's matrix is lme4's vcov: its diagonal gives lme4's standard errors of both coefficients.
    vcov = result.fixed_vcov.set_index(["coef_a", "coef_b"])["value"]
    np.testing.assert_allclose(np.sqrt(vcov[("Days", "Days")]), row["se_Days"], rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(vcov[("Intercept", "Intercept")]), row["se_Intercept"], rtol=1e-5)
    # The LMM line of subject 308: lme4's fixed effects plus its conditional modes.
    own = lme4_blups[lme4_blups["level"] == "308"].set_index("term")["value"]
    subject = obs[obs["group"] == "308"]
    expected = (
        row["coef_Intercept"]
        + own.get("Intercept", 0.0)
        + (row["coef_Days"] + own.get("Days", 0.0)) * subject["x"].to_numpy(dtype=float)
    )
    np.testing.assert_allclose(subject["lmm"], expected, rtol=1e-5)


def test_categorical_band_matches_lme4_standard_errors_on_an_unbalanced_design():
    samples = read_samples(LME4 / "gse147507_samples.tsv")
    expression = read_matrix(LME4 / "gse147507_vst.tsv.gz")
    lme4_fits, _ = _lme4_fit("gse147507", "batch_reml")
    genes = list(lme4_fits.loc[lme4_fits["status"] == "ok", "gene_id"][:15])
    formula = "~ Infection + (1 | Batch)"
    result = fit(expression.loc[genes], samples, formula)
    coefficients = [c.removeprefix("Infection") for c in result.metadata.coefficients if c.startswith("Infection")]
    reference = sorted(set(samples["Infection"]) - set(coefficients))[0]
    for gene in genes:
        est = summaries.shrinkage_estimates(
            gene,
            expression,
            samples,
            result.gene_fits,
            result.blups,
            result.metadata,
            "Batch",
            fixed_vcov=result.fixed_vcov,
        )
        assert est.band_note == "", gene
        # Every cell of the reference condition has population fit = intercept, se = lme4's se_Intercept.
        cells = est.cells[est.cells["x"] == reference]
        row = lme4_fits.set_index("gene_id").loc[gene]
        assert len(cells) > 0
        np.testing.assert_allclose(cells["population"], row["coef_Intercept"], rtol=1e-6)
        np.testing.assert_allclose(cells["population_se"], row["se_Intercept"], rtol=1e-4)


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
    assert set(written) == {
        "pca.png",
        "batch_share.png",
        "variance_fractions.png",
        "top_batch_genes.png",
        "shrinkage_1.png",
        "shrinkage_2.png",
        "shrinkage_3.png",
        "shrinkage_4.png",
        "mean_sd.png",
    }
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
    downloads = dict(
        re.findall(r'href="data:text/tab-separated-values;base64,([A-Za-z0-9+/=]+)" download="([^"]+)"', page)[::1]
    )
    names = {name: base64.b64decode(data).decode() for data, name in downloads.items()}
    assert {
        "gene_accounting.tsv",
        "genes_not_fitted.tsv",
        "top_batch_genes.tsv",
        "lmm_vs_ols.tsv",
        "simpson_reversals.tsv",
        "size_factors.tsv",
        "batch_metrics.tsv",
    } <= set(names)
    not_fitted = names["genes_not_fitted.tsv"].splitlines()
    assert not_fitted == ["gene_id\tstatus", "G10\tfiltered:low_counts", "G11\tfailed:no convergence"]
    reversals = names["simpson_reversals.tsv"].splitlines()
    assert reversals[0].split("\t")[-1] == "per_batch_r" and len(reversals) == 4
    # The page's table leaves the long per-batch correlations to the download.
    header = re.search(
        r'<table id="table-simpson_reversals" class="sortable">\s*<thead>(.*?)</thead>', page, re.S
    ).group(1)
    assert re.findall(r"<th[^>]*>([^<]+)</th>", header) == [
        "gene_a",
        "gene_b",
        "r_pooled",
        "r_within",
        "r_between",
        "between_share",
        "p",
        "q",
        "n_batches_within_sign",
    ]


def test_gene_ids_that_look_like_numbers_or_missing_values_stay_verbatim(tmp_path):
    # Read as numbers, 007 became 7 and 1e5 became 100000.0, and no longer matched gene_fits.tsv.
    # (A gene called NA is the io package's own test: its matrix reader keeps it once merged.)
    ids = ["007", "1e5", "null", "1.50", "TRUE", "gene 6", "0x1F", "-0", "inf", "nan", "000123", "1E-3"]
    config, inputs = make_study(tmp_path, genes=ids, report_genes=["007", "1e5"])
    tables = report.load_tables(inputs)
    assert list(tables["gene_fits"]["gene_id"]) == ids
    assert list(tables["vst_expression"].index) == ids
    assert set(tables["blups"]["gene_id"]) == set(ids[:-2])
    assert set(tables["fixed_vcov"]["gene_id"]) == set(ids[:-2])
    html_path = tmp_path / "results/report.html"
    report.build_report(config, inputs, html_path, tmp_path / "results/figures")
    page = html_path.read_text()
    # The two requested genes are drawn (found in every table), under their own names.
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", _section(page, "shrinkage"), re.S)
    assert [c.split(" ")[0] for c in captions] == ["007", "1e5"]
    assert "not in the expression table" not in page
    downloads = _downloads(page)
    # make_study: the last two genes are filtered and failed, the other ten fitted.
    assert downloads["genes_not_fitted.tsv"].splitlines()[1:] == [
        "000123\tfiltered:low_counts",
        "1E-3\tfailed:no convergence",
    ]
    top = [line.split("\t")[0] for line in downloads["top_batch_genes.tsv"].splitlines()[1:]]
    assert sorted(top) == sorted(ids[:10])


def test_log_input_has_one_mean_sd_panel(tmp_path):
    import matplotlib.image

    config, inputs = make_study(tmp_path)
    # As the stabilise stage writes it for input_type: log (no VST requested).
    info = json.loads(Path(inputs["vst_info"]).read_text())
    for key in ("vst_fit_type_requested", "vst_blind", "vst_nsub", "size_factor_method"):
        del info[key]
    info.update(
        {"input_type": "log", "vst_fit_type_used": "none (input_type: log)", "before_scale": "input (log scale)"}
    )
    Path(inputs["vst_info"]).write_text(json.dumps(info))
    report.build_report(config, inputs, tmp_path / "report.html", tmp_path / "figures")
    page = (tmp_path / "report.html").read_text()
    assert "there is no before and after" in _section(page, "vst")
    # One panel of 5 inches at 110 dpi, where counts get two (1100 pixels).
    assert matplotlib.image.imread(tmp_path / "figures/mean_sd.png").shape[1] == 550
    report.build_report(*make_study(tmp_path / "counts"), tmp_path / "counts.html", tmp_path / "counts_figures")
    assert matplotlib.image.imread(tmp_path / "counts_figures/mean_sd.png").shape[1] == 1100


def test_without_model_json_the_structure_comes_from_the_design(default_build, tmp_path):
    page, _, _ = default_build
    config, inputs = make_study(tmp_path)
    del inputs["model"], inputs["fixed_vcov"]
    report.build_report(config, inputs, tmp_path / "report.html", tmp_path / "figures")
    fallback = (tmp_path / "report.html").read_text()
    # The same tables; the shrinkage figures say why they have no band.
    assert _downloads(fallback)["top_batch_genes.tsv"] == _downloads(page)["top_batch_genes.tsv"]
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", _section(fallback, "shrinkage"), re.S)
    assert len(captions) == 4 and all("No band: the covariance of the fixed effects" in c for c in captions)
    assert "No band" not in page


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
    assert keys == {
        "pca",
        "batch_share",
        "variance_fractions",
        "top_batch_genes",
        "shrinkage",
        "mean_sd",
        "volcano",
        "bootstrap_band",
        "posterior",
    }


# ---------------------------------------------------------------------------------------------
# The Uncertainty section (inputs of batchmix.uncertainty, written here by hand)


def _png(colour: str) -> bytes:
    """A small PNG whose bytes differ by colour, to tell the copied figures apart."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().fill_between([0, 1], 0, 1, color=colour)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


# bootstrap.tsv and posterior.tsv rows of the figure gene G00, as batchmix.uncertainty writes them.
BOOT_ROWS = [
    # param, estimate, q2.5, q50, q97.5, boot_mean, boot_sd
    ("b_Intercept", 7.5, 6.9, 7.49, 8.1, 7.48, 0.31),
    ("b_InfectionMock", -1.5, -1.8, -1.51, -1.2, -1.5, 0.15),
    ("sd_Batch__Intercept", 0.9, 0.2, 0.85, 1.6, 0.86, 0.36),
    ("sigma", 0.5, 0.38, 0.49, 0.61, 0.49, 0.06),
    ("ICC", 0.76, 0.2, 0.74, 0.93, 0.7, 0.18),
]
POST_ROWS = [
    # param, mean, sd, q2.5, q50, q97.5
    ("b_Intercept", 7.5, 0.5, 6.5, 7.5, 8.5),
    ("b_InfectionMock", -1.5, 0.16, -1.82, -1.5, -1.18),
    ("sigma", 0.52, 0.07, 0.4, 0.51, 0.67),
    ("sd_Batch__Intercept", 1.1, 0.6, 0.4, 0.95, 2.7),
    ("ICC", 0.72, 0.15, 0.35, 0.75, 0.95),
]
OLS_VS_LMM = [
    {"model": "OLS", "logLik": -25.0, "AIC": 44.0, "BIC": 47.0, "LRT": None, "df": None, "p": None},
    {"model": "LMM", "logLik": -20.0, "AIC": 41.25, "BIC": 45.5, "LRT": 10.0, "df": 1.0, "p": 0.0016},
]


def add_uncertainty(
    root: Path,
    inputs: dict,
    *,
    posterior_status: str = "ok",
    bootstrap: int = 400,
    bayes: bool = True,
    prior: str = "unif_icc",
) -> dict[str, bytes]:
    """Write the uncertainty stage's outputs for figure gene G00 and add them to ``inputs``.

    Returns the two figures' bytes, keyed ``bootstrap_band`` and ``posterior`` (the posterior
    figure exists only when ``posterior_status`` is ``ok``).
    """
    d = root / "results/uncertainty"
    (d / "figures").mkdir(parents=True, exist_ok=True)
    columns = [
        "gene_id",
        "param",
        "status",
        "estimate",
        "q2.5",
        "q50",
        "q97.5",
        "boot_mean",
        "boot_sd",
        "n_singular",
        "n_fail",
        "n_na",
    ]
    boot = pd.DataFrame([("G00", p, "ok", *v, 3, 1, 1) for p, *v in BOOT_ROWS], columns=columns)
    # Another gene, not drawn: it must not reach the page's table.
    boot = pd.concat([boot, boot.assign(gene_id="G01", estimate=99.0)], ignore_index=True)
    if not bootstrap:
        boot = boot.iloc[:0]
    _write_tsv(boot, d / "bootstrap.tsv")
    post_columns = ["gene_id", "param", "status", "mean", "sd", "q2.5", "q50", "q97.5"]
    if posterior_status == "ok":
        post = pd.DataFrame([("G00", p, "ok", *v) for p, *v in POST_ROWS], columns=post_columns)
    else:
        post = pd.DataFrame(
            [("G00", p, posterior_status, *[np.nan] * 5) for p in ("b_Intercept", "b_InfectionMock", "sigma")],
            columns=post_columns,
        )
    if not bayes:
        post = post.iloc[:0]
    _write_tsv(post, d / "posterior.tsv")
    written = {"bootstrap_band": _png("tab:orange")}
    names = {"bootstrap_band": "G00.bootstrap_band.png"}
    if bayes and posterior_status == "ok":
        written["posterior"] = _png("tab:blue")
        names["posterior"] = "G00.posterior.png"
    if not bootstrap:
        del written["bootstrap_band"], names["bootstrap_band"]
    for kind, data in written.items():
        (d / "figures" / names[kind]).write_bytes(data)
    summary = {
        "formula": "~ Infection + (1|Batch)",
        "n_genes": 12,
        "n_selected": 2,
        "bootstrap": {"nsim": bootstrap, "seed": 11, "n_genes": 2, "n_singular": 6, "n_fail": 2, "seconds": 0.5},
        "posterior": {
            "enabled": bayes,
            "prior": prior,
            "prior_scale": 2.5,
            "seconds": 0.1,
            "status_counts": {posterior_status: 2},
        },
        "figures": {"G00": names},
        "ols_vs_lmm": {"G00": OLS_VS_LMM},
    }
    (d / "summary.json").write_text(json.dumps(summary))
    inputs.update(
        {
            "uncertainty_summary": str(d / "summary.json"),
            "uncertainty_bootstrap": str(d / "bootstrap.tsv"),
            "uncertainty_posterior": str(d / "posterior.tsv"),
            "uncertainty_figures": str(d / "figures"),
        }
    )
    return written


def _build_with_uncertainty(tmp_path: Path, **options) -> tuple[str, Path, dict[str, bytes]]:
    config, inputs = make_study(tmp_path)
    written = add_uncertainty(tmp_path, inputs, **options)
    config["uncertainty"] = {"bootstrap": options.get("bootstrap", 400), "bayes": options.get("bayes", True)}
    html_path = tmp_path / "results/report.html"
    figures = tmp_path / "results/figures"
    report.build_report(config, inputs, html_path, figures)
    return html_path.read_text(), figures, written


def _section(page: str, section: str) -> str:
    return re.search(rf'<section id="{section}">(.*?)</section>', page, re.S).group(1)


def _downloads(page: str) -> dict[str, str]:
    found = re.findall(r'href="data:text/tab-separated-values;base64,([A-Za-z0-9+/=]+)" download="([^"]+)"', page)
    return {name: base64.b64decode(data).decode() for data, name in found}


def test_uncertainty_intervals_join_bootstrap_and_posterior_by_parameter():
    boot = pd.DataFrame(
        {
            "gene_id": ["A", "A", "B"],
            "param": ["b_x", "sd_g", "b_x"],
            "status": "ok",
            "estimate": [1.0, 2.0, 3.0],
            "q2.5": [0.5, 1.0, 2.5],
            "q50": [1.0, 2.0, 3.0],
            "q97.5": [1.5, 3.0, 3.5],
            "boot_mean": 0.0,
            "boot_sd": [0.25, 0.5, 0.25],
        }
    )
    post = pd.DataFrame(
        {
            "gene_id": ["A", "A", "A"],
            "param": ["sigma", "sd_g", "b_x"],
            "status": "ok",
            "mean": [4.0, 2.5, 1.0],
            "sd": [0.1, 0.6, 0.2],
            "q2.5": [3.8, 1.4, 0.6],
            "q50": [4.0, 2.4, 1.0],
            "q97.5": [4.2, 3.9, 1.4],
        }
    )
    table = summaries.uncertainty_intervals(boot, post, ["A"])
    assert list(table.columns) == [
        "gene_id",
        "param",
        "estimate",
        "boot_q2.5",
        "boot_q50",
        "boot_q97.5",
        "boot_sd",
        "post_mean",
        "post_q2.5",
        "post_q50",
        "post_q97.5",
        "post_sd",
    ]
    # The bootstrap's parameters in its order, then the one only the posterior has; B is not asked for.
    assert list(table["param"]) == ["b_x", "sd_g", "sigma"]
    assert table.loc[1].drop(["gene_id", "param"]).tolist() == [2.0, 1.0, 2.0, 3.0, 0.5, 2.5, 1.4, 2.4, 3.9, 0.6]
    assert table.loc[2, ["estimate", "boot_q2.5", "boot_sd"]].isna().all()
    assert table.loc[2, ["post_mean", "post_q97.5"]].tolist() == [4.0, 4.2]
    # Without a posterior: the bootstrap columns only.
    only_boot = summaries.uncertainty_intervals(boot, post.iloc[:0], ["B", "A"])
    assert list(only_boot["gene_id"]) == ["B", "A", "A"] and "post_mean" not in only_boot.columns


def test_report_without_uncertainty_has_no_uncertainty_section(default_build):
    page, figures, _ = default_build
    assert 'id="uncertainty"' not in page and 'href="#uncertainty"' not in page
    assert not list(figures.glob("bootstrap_band_*.png")) and not list(figures.glob("posterior_*.png"))


def test_report_uncertainty_section_embeds_the_figures_and_tables(tmp_path):
    page, figures, written = _build_with_uncertainty(tmp_path)
    assert 'href="#uncertainty"' in page
    section = _section(page, "uncertainty")
    # Both figures embedded and copied byte for byte, under the names figures.rst captions.
    images = _images(section)
    assert images == [written["bootstrap_band"], written["posterior"]]
    assert (figures / "bootstrap_band_1.png").read_bytes() == written["bootstrap_band"]
    assert (figures / "posterior_1.png").read_bytes() == written["posterior"]
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", section, re.S)
    assert captions[0].startswith("G00. ") and "400 parametric-bootstrap refits" in captions[0]
    # Infection is a factor: the band figure is the per-level one.
    assert "For each level of Batch" in captions[0]
    assert "ICC = σ_b²/(σ_b² + σ²) uniform on (0, 1)" in captions[1] and "sd_Batch__Intercept" in captions[1]
    # Settings: replicates, singular refits and failures over all genes, then G00's own, and the prior.
    text = re.sub(r"<[^>]+>", "", section)
    assert "400 replicates per gene (seed 11) for 2 genes; in all 6 singular refits" in text
    assert "and 2 failed refits" in text
    assert "Bootstrap of G00: 400 refits, 3 singular, 1 failed." in text
    assert (
        "exact grid posterior with a flat prior on the fixed effects, p(σ²) ∝ 1/σ² and the intraclass "
        "correlation ICC = σ_b²/(σ_b² + σ²) uniform on (0, 1)"
    ) in text
    assert 'id="posterior-multiple-components"' not in section
    downloads = _downloads(section)
    assert downloads["ols_vs_lmm_G00.tsv"].splitlines() == [
        "model\tlogLik\tAIC\tBIC\tLRT\tdf\tp",
        "OLS\t-25\t44\t47\tNA\tNA\tNA",
        "LMM\t-20\t41.25\t45.5\t10\t1\t0.0016",
    ]
    intervals = downloads["uncertainty_intervals.tsv"].splitlines()
    assert intervals[0].split("\t") == [
        "gene_id",
        "param",
        "estimate",
        "boot_q2.5",
        "boot_q50",
        "boot_q97.5",
        "boot_sd",
        "post_mean",
        "post_q2.5",
        "post_q50",
        "post_q97.5",
        "post_sd",
    ]
    # G00 only, in the bootstrap's order of parameters; values as written above.
    assert intervals[1:] == [
        "G00\tb_Intercept\t7.5\t6.9\t7.49\t8.1\t0.31\t7.5\t6.5\t7.5\t8.5\t0.5",
        "G00\tb_InfectionMock\t-1.5\t-1.8\t-1.51\t-1.2\t0.15\t-1.5\t-1.82\t-1.5\t-1.18\t0.16",
        "G00\tsd_Batch__Intercept\t0.9\t0.2\t0.85\t1.6\t0.36\t1.1\t0.4\t0.95\t2.7\t0.6",
        "G00\tsigma\t0.5\t0.38\t0.49\t0.61\t0.06\t0.52\t0.4\t0.51\t0.67\t0.07",
        "G00\tICC\t0.76\t0.2\t0.74\t0.93\t0.18\t0.72\t0.35\t0.75\t0.95\t0.15",
    ]


@pytest.mark.parametrize(
    ("status", "words"),
    [
        ("failed:importance_khat", "the Pareto k̂ of its importance weights exceeds 0.7"),
        ("failed:importance_ess", "the effective sample size of its importance weights is below 200"),
    ],
)
def test_report_explains_a_failed_importance_posterior_and_points_to_the_bootstrap(tmp_path, status, words):
    page, figures, written = _build_with_uncertainty(tmp_path, posterior_status=status)
    section = _section(page, "uncertainty")
    anchor = "posterior-" + status.split(":", 1)[1].replace("_", "-")
    note = re.search(rf'<div class="callout warn" id="{anchor}">(.*?)</div>', section, re.S)
    assert note, f"no note for {status}"
    text = re.sub(r"<[^>]+>", "", note.group(1))
    assert text.startswith("No posterior for 2 genes: the importance sampling over the variance parameters")
    assert words in text
    assert status in text and "Use the bootstrap percentiles instead" in text
    # Only the bootstrap figure; the posterior columns are empty.
    assert _images(section) == [written["bootstrap_band"]]
    assert not (figures / "posterior_1.png").exists()
    intervals = _downloads(section)["uncertainty_intervals.tsv"].splitlines()
    header = intervals[0].split("\t")
    for line in intervals[1:]:
        row = dict(zip(header, line.split("\t")))
        assert all(row[c] == "NA" for c in ("post_mean", "post_q2.5", "post_q50", "post_q97.5", "post_sd")), line
    assert [line.split("\t")[1] for line in intervals[1:]] == [p for p, *_ in BOOT_ROWS]


def test_report_uncertainty_without_bootstrap_and_with_the_half_cauchy_prior(tmp_path):
    page, _, written = _build_with_uncertainty(tmp_path, bootstrap=0, prior="half_cauchy")
    section = _section(page, "uncertainty")
    text = re.sub(r"<[^>]+>", "", section)
    assert "not run (uncertainty: bootstrap: 0)" in text
    assert "σ_b/σ half-Cauchy(0, 2.5)" in text
    assert _images(section) == [written["posterior"]]
    assert "boot_q2.5" not in _downloads(section)["uncertainty_intervals.tsv"]


def test_report_uncertainty_without_posterior(tmp_path):
    page, _, written = _build_with_uncertainty(tmp_path, bayes=False)
    text = re.sub(r"<[^>]+>", "", _section(page, "uncertainty"))
    assert "not computed (uncertainty: bayes: false)" in text
    assert _images(_section(page, "uncertainty")) == [written["bootstrap_band"]]


def test_snakemake_report_captions_of_the_uncertainty_figures(tmp_path):
    """figures.rst gives bootstrap_band_N and posterior_N their own caption, not the fallback."""
    from types import SimpleNamespace

    import jinja2

    _, figures, _ = _build_with_uncertainty(tmp_path)
    template = jinja2.Template((REPO / "workflow/report/figures.rst").read_text())
    fallback = template.render(snakemake=SimpleNamespace(wildcards=SimpleNamespace(name="no_such_figure"))).strip()
    rendered = {}
    for png in sorted(figures.glob("*.png")):
        text = template.render(snakemake=SimpleNamespace(wildcards=SimpleNamespace(name=png.stem))).strip()
        assert text != fallback, png.name
        rendered[png.stem] = text
    assert rendered["bootstrap_band_1"].startswith("Parametric bootstrap (lme4's bootMer)")
    assert rendered["posterior_1"].startswith("Exact grid posterior")
    assert rendered["shrinkage_1"].startswith("Shrinkage")


def test_parquet_matrices_give_the_same_page_reading_only_the_drawn_genes(tmp_path):
    from batchmix.io.matrices import write_matrix

    config, inputs = make_study(tmp_path / "text", report_genes=["G03", "G00", "G07"])
    text_html = tmp_path / "text.html"
    report.build_report(config, inputs, text_html, tmp_path / "text_figures")
    whole = read_matrix(inputs["vst_expression"])
    text_corrected = inputs["corrected"]
    for key in ("vst_expression", "corrected"):
        parquet = str(Path(inputs[key]).with_name("expression.parquet"))
        write_matrix(read_matrix(inputs[key]), parquet)
        inputs[key] = parquet
    parquet_html = tmp_path / "parquet.html"
    report.build_report(config, inputs, parquet_html, tmp_path / "parquet_figures")
    # the same page, naming the corrected matrix's file as the run wrote it
    assert f"<code>{text_corrected}</code>" in text_html.read_text()
    assert parquet_html.read_text() == text_html.read_text().replace(text_corrected, inputs["corrected"])
    # Only the asked genes' rows, in the matrix's order, every sample; a gene it lacks is left out.
    tables = report.load_tables(inputs, expression_genes=["G07", "G00", "nope"])
    pd.testing.assert_frame_equal(tables["vst_expression"], whole.loc[["G00", "G07"]])
    assert list(tables["corrected"].index) == ["G00", "G07"]
    assert list(report.load_tables(inputs, expression_genes=[])["vst_expression"].columns) == list(whole.columns)
    # A text matrix without genes asked: its samples from the header, no rows.
    text_inputs = {**inputs, "vst_expression": str(Path(inputs["corrected"]).parent.parent / "vst/expression.tsv.gz")}
    empty = report.load_tables(text_inputs, expression_genes=[])["vst_expression"]
    assert empty.shape == (0, whole.shape[1]) and list(empty.columns) == list(whole.columns)
    # A matrix whose rows are not in gene_fits' order is searched a row group at a time.
    shuffled = whole.iloc[::-1]
    write_matrix(shuffled, inputs["vst_expression"])
    tables = report.load_tables(inputs, expression_genes=["G07", "G00"])
    pd.testing.assert_frame_equal(tables["vst_expression"], shuffled.loc[["G07", "G00"]])
