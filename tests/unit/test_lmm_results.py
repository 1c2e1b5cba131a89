"""The results contract of batchmix.lmm: ModelMetadata names the gene_fits columns, fixed_vcov is Cov(β̂).

Expected column names are written out by hand from each formula (the documented naming rule), not
produced by the code under test. Cov(β̂) is checked against an independent dense GLS built in this
file from lme4's own θ and σ (tests/data/lme4/fits.tsv.gz; lme4's vcov() off-diagonals are not in
the fixtures, but its standard errors are, and they anchor the GLS).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix import lmm
from batchmix.lmm.results import ModelMetadata

ROOT = Path(__file__).resolve().parents[1]
LME4 = ROOT / "data" / "lme4"
HEAD = [
    "gene_id",
    "status",
    "n",
    "loglik",
    "aic",
    "bic",
    "ols_loglik",
    "ols_aic",
    "ols_bic",
    "lrt_stat",
    "lrt_df",
    "lrt_p",
]


def coefficient_block(names):
    return [f"{kind}_{name}" for name in names for kind in ("coef", "se", "df", "t", "p")]


# formula → (coefficients, fixed fractions, groups as (group, terms, variance columns, correlation columns,
# fraction column)), written from the naming rule in the README / batchmix.lmm.results
SLEEP_MODELS = {
    "~ Days + (1 | Subject)": (
        ["Intercept", "Days"],
        {"Days": "frac_Days"},
        [("Subject", ["Intercept"], {"Intercept": "var_Subject"}, [], "frac_Subject")],
    ),
    "~ Days + (Days | Subject)": (
        ["Intercept", "Days"],
        {"Days": "frac_Days"},
        [
            (
                "Subject",
                ["Intercept", "Days"],
                {"Intercept": "var_Subject_Intercept", "Days": "var_Subject_Days"},
                [(["Intercept", "Days"], "cor_Subject_Intercept_Days")],
                "frac_Subject",
            )
        ],
    ),
    "~ 1 + (1 | Subject)": (
        ["Intercept"],
        {},
        [("Subject", ["Intercept"], {"Intercept": "var_Subject"}, [], "frac_Subject")],
    ),
    "~ Days + (Days || Subject)": (
        ["Intercept", "Days"],
        {"Days": "frac_Days"},
        [
            ("Subject", ["Intercept"], {"Intercept": "var_Subject"}, [], "frac_Subject"),
            ("Subject", ["Days"], {"Days": "var_Subject_Days"}, [], "frac_Subject_Days"),
        ],
    ),
    # the clash rule: a second identical term gets _2
    "~ Days + (1 | Subject) + (1 | Subject)": (
        ["Intercept", "Days"],
        {"Days": "frac_Days"},
        [
            ("Subject", ["Intercept"], {"Intercept": "var_Subject"}, [], "frac_Subject"),
            ("Subject", ["Intercept"], {"Intercept": "var_Subject_2"}, [], "frac_Subject_2"),
        ],
    ),
}


def expected_columns(coefs, fixed_fracs, groups):
    var = [c for g in groups for c in list(g[2].values()) + [col for _, col in g[3]]]
    frac = list(fixed_fracs.values()) + [g[4] for g in groups] + ["frac_residual"]
    return HEAD + var + ["var_residual", "sigma", "df_residual"] + frac + coefficient_block(coefs)


def check_metadata(meta: ModelMetadata, formula, coefs, fixed_fracs, groups, levels):
    assert meta.formula == formula and meta.reml is True
    assert list(meta.coefficients) == coefs
    assert meta.fixed_fraction_columns == fixed_fracs
    assert meta.residual == {"variance_column": "var_residual", "fraction_column": "frac_residual"}
    assert len(meta.groups) == len(groups)
    for got, (group, terms, variances, cors, frac) in zip(meta.groups, groups):
        assert got.group == group and list(got.terms) == terms
        assert list(got.levels) == levels
        assert got.variance_columns == variances
        assert [(list(t), c) for t, c in got.correlation_columns] == cors
        assert got.fraction_column == frac


@pytest.fixture(scope="module")
def sleepstudy():
    frame = pd.read_csv(LME4 / "sleepstudy.csv.gz")
    frame.index = [f"obs{i}" for i in range(len(frame))]
    samples = frame[["Days", "Subject"]].assign(Subject=frame["Subject"].astype(str))
    expression = pd.DataFrame([frame["Reaction"].to_numpy()], index=["Reaction"], columns=frame.index)
    return expression, samples


@pytest.mark.parametrize("formula", list(SLEEP_MODELS))
def test_metadata_of_sleepstudy_models_names_the_gene_fits_columns(sleepstudy, formula):
    expression, samples = sleepstudy
    coefs, fixed_fracs, groups = SLEEP_MODELS[formula]
    levels = sorted(samples["Subject"].unique())
    meta = lmm.model_metadata(formula, samples)
    check_metadata(meta, formula, coefs, fixed_fracs, groups, levels)
    fit = lmm.fit(expression, samples, formula)
    assert fit.metadata == meta
    assert list(fit.gene_fits.columns) == expected_columns(coefs, fixed_fracs, groups)


def test_metadata_of_the_workflow_fixture_design(tmp_path):
    samples = pd.read_csv(ROOT / "workflow" / "data" / "samples.tsv", sep="\t", dtype=str, index_col=0)
    counts = pd.read_csv(ROOT / "workflow" / "data" / "counts.tsv", sep="\t", index_col=0).iloc[:20]
    expression = np.log2(counts[samples.index] + 1.0)
    formula = "~ Infection + (1|Batch)"
    levels = sorted(samples["Batch"].unique())
    coefs = ["Intercept", "InfectionSARS_CoV_2"]
    groups = [("Batch", ["Intercept"], {"Intercept": "var_Batch"}, [], "frac_Batch")]
    meta = lmm.model_metadata(formula, samples)
    check_metadata(meta, formula, coefs, {"Infection": "frac_Infection"}, groups, levels)
    assert meta.fixed_terms == {"Intercept": ["Intercept"], "Infection": ["InfectionSARS_CoV_2"]}
    fit = lmm.fit(expression, samples, formula)
    assert list(fit.gene_fits.columns) == expected_columns(coefs, {"Infection": "frac_Infection"}, groups)
    # the JSON round trip keeps everything (what results/lmm/model.json holds)
    path = tmp_path / "model.json"
    meta.write_json(path)
    assert ModelMetadata.read_json(path) == meta
    assert ModelMetadata.from_dict(meta.to_dict()) == meta
    assert meta.to_dict()["groups"][0]["variance_columns"] == {"Intercept": "var_Batch"}


def dense_gls_vcov(X, Z, T_blocks, sigma2):
    """σ² (Xᵀ V⁻¹ X)⁻¹ with V = I + Z (I ⊗ T Tᵀ) Zᵀ, all dense."""
    D = np.zeros((Z.shape[1], Z.shape[1]))
    offset = 0
    for T, J in T_blocks:
        s = T.shape[0]
        for j in range(J):
            D[offset + j * s : offset + (j + 1) * s, offset + j * s : offset + (j + 1) * s] = T @ T.T
        offset += J * s
    V = np.eye(X.shape[0]) + Z @ D @ Z.T
    return sigma2 * np.linalg.inv(X.T @ np.linalg.solve(V, X))


def lme4_reference(model):
    long = pd.read_csv(LME4 / "fits.tsv.gz", sep="\t", dtype={"gene_id": str})
    sub = long[(long["dataset"] == "sleepstudy") & (long["model"] == model)]
    return sub.set_index("stat")["value"].astype(float)


@pytest.mark.parametrize(
    "model, formula",
    [
        ("slopes_reml", "~ Days + (Days | Subject)"),
        ("intercept_reml", "~ Days + (1 | Subject)"),
        ("slopes_ml", "~ Days + (Days | Subject)"),
    ],
)
def test_fixed_vcov_is_lme4s_covariance_of_beta(sleepstudy, model, formula):
    expression, samples = sleepstudy
    reml = model.endswith("reml")
    ref = lme4_reference(model)
    subjects = sorted(samples["Subject"].unique())
    days = samples["Days"].to_numpy(dtype=float)
    X = np.column_stack([np.ones(len(days)), days])
    slopes = "Days |" in formula
    s = 2 if slopes else 1
    Z = np.zeros((len(days), len(subjects) * s))
    for j, subject in enumerate(subjects):
        rows = (samples["Subject"] == subject).to_numpy()
        Z[rows, j * s] = 1.0
        if slopes:
            Z[rows, j * s + 1] = days[rows]
    if slopes:
        T = np.array([[ref["theta_1"], 0.0], [ref["theta_2"], ref["theta_3"]]])
    else:
        T = np.array([[ref["theta_1"]]])
    expected = dense_gls_vcov(X, Z, [(T, len(subjects))], ref["sigma"] ** 2)
    # the dense GLS from lme4's θ reproduces lme4's standard errors: the reference is sound
    np.testing.assert_allclose(np.sqrt(np.diag(expected)), [ref["se_Intercept"], ref["se_Days"]], rtol=1e-6)
    fit = lmm.fit(expression, samples, formula, reml=reml)
    assert list(fit.fixed_vcov.columns) == ["gene_id", "coef_a", "coef_b", "value"]
    table = fit.fixed_vcov
    assert list(zip(table["coef_a"], table["coef_b"])) == [
        ("Intercept", "Intercept"),
        ("Intercept", "Days"),
        ("Days", "Days"),
    ]
    got = np.array([[table["value"][0], table["value"][1]], [table["value"][1], table["value"][2]]])
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert expected[0, 1] != 0.0


def test_fixed_vcov_diagonal_is_se_squared_with_missing_values_and_failures(rng=np.random.default_rng(5)):
    samples = pd.DataFrame(
        {"condition": ["a", "b"] * 9, "batch": np.repeat(["x", "y", "z"], 6)}, index=[f"s{i}" for i in range(18)]
    )
    values = rng.normal(size=(6, 18)) + np.repeat([0.0, 1.0, -1.0], 6)
    values[1, 3] = np.nan  # another missingness pattern
    values[2] = 4.0  # constant: filtered, no vcov rows
    expression = pd.DataFrame(values, index=["007", "1e5", "NA", "g 4", "g5", "g6"], columns=samples.index)
    fit = lmm.fit(expression, samples, "~ condition + (1 | batch)")
    fits = fit.gene_fits.set_index("gene_id")
    fitted = fits.index[fits["status"].isin(["ok", "singular"])].tolist()
    assert "NA" not in fitted and len(fitted) == 5
    table = fit.fixed_vcov
    assert table["gene_id"].drop_duplicates().tolist() == fitted  # input order, ids verbatim
    assert (table.groupby("gene_id", sort=False).size() == 3).all()
    for coef in ["Intercept", "conditionb"]:
        diag = table[(table["coef_a"] == coef) & (table["coef_b"] == coef)].set_index("gene_id")["value"]
        np.testing.assert_allclose(diag.to_numpy(), fits.loc[fitted, f"se_{coef}"].to_numpy() ** 2, rtol=1e-12)


def test_an_aliased_column_is_a_note_and_a_log_warning(caplog):
    samples = pd.DataFrame(
        {"a": ["u", "v"] * 6, "b": ["u", "v"] * 6, "batch": np.repeat(["x", "y", "z"], 4)},
        index=[f"s{i}" for i in range(12)],
    )
    rng = np.random.default_rng(1)
    expression = pd.DataFrame(rng.normal(size=(2, 12)), index=["g1", "g2"], columns=samples.index)
    with caplog.at_level("WARNING", logger="batchmix.lmm"):
        fit = lmm.fit(expression, samples, "~ a + b + (1 | batch)")
    assert fit.fixed_names == ["Intercept", "av"]
    assert len(fit.notes) == 1 and "bv" in fit.notes[0]
    assert any("bv" in r.getMessage() for r in caplog.records)
