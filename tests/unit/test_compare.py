"""batchmix.compare: ML information criteria against lme4 (tests/data/compare/), best models, DE agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix.compare import (
    AGREEMENT_COLUMNS,
    BEST_COLUMNS,
    IC_COLUMNS,
    best_models,
    de_agreement,
    information_criteria,
    win_counts,
)
from batchmix.io import read_samples

DATA = Path(__file__).resolve().parents[1] / "data" / "compare"
MODELS = {"random": "~ Infection + (1|Batch)", "fixed": "~ Infection + Batch", "none": "~ Infection"}


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return pd.read_csv(DATA / "reference.tsv", sep="\t")


@pytest.fixture(scope="module")
def fits() -> dict[str, pd.DataFrame]:
    expression = pd.read_csv(DATA / "vst_200.tsv.gz", sep="\t", index_col=0)
    samples = read_samples(DATA / "samples.tsv")
    return {name: information_criteria(expression, samples, f, categorical=["Batch"]) for name, f in MODELS.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_information_criteria_agree_with_lme4(fits, reference, name):
    ic = fits[name]
    ref = reference[reference["model"] == MODELS[name]].set_index("gene_id")
    assert list(ic.columns) == IC_COLUMNS
    assert len(ic) == 200 and list(ic["gene_id"]) == list(ref.index)
    ref = ref.loc[ic["gene_id"]]
    for ours, theirs in (("loglik_ml", "loglik"), ("aic", "aic"), ("bic", "bic")):
        np.testing.assert_allclose(ic[ours].to_numpy(float), ref[theirs].to_numpy(float), rtol=1e-6)
    np.testing.assert_array_equal(ic["n_params"].to_numpy(int), ref["df"].to_numpy(int))


def test_singular_ml_fits_are_lme4s(fits, reference):
    ref = reference[reference["model"] == MODELS["random"]].set_index("gene_id")
    ic = fits["random"].set_index("gene_id")
    singular = ref["singular"].astype(str).str.upper().eq("TRUE")
    assert singular.sum() == 10  # the boundary genes make_input.py chose
    assert (ic.loc[singular[singular].index, "status"] == "singular").all()
    assert (ic.loc[singular[~singular].index, "status"] == "ok").all()


def test_best_models_pick_what_lme4s_numbers_pick(fits, reference):
    best = best_models(fits)
    assert list(best.columns) == BEST_COLUMNS
    wide_aic = reference.pivot(index="gene_id", columns="model", values="aic")
    wide_bic = reference.pivot(index="gene_id", columns="model", values="bic")
    by_formula = {f: n for n, f in MODELS.items()}
    best = best.set_index("gene_id").loc[wide_aic.index]
    assert (best["status"] == "ok").all()
    assert list(best["best_aic"]) == [by_formula[m] for m in wide_aic.idxmin(axis=1)]
    assert list(best["best_bic"]) == [by_formula[m] for m in wide_bic.idxmin(axis=1)]
    runner_up = np.sort(wide_aic.to_numpy(), axis=1)
    np.testing.assert_allclose(best["delta_aic"], runner_up[:, 1] - runner_up[:, 0], rtol=1e-6, atol=1e-8)
    # the example's batches differ a lot: both criteria prefer a model with the batch for most genes
    assert (best["best_bic"] != "none").mean() > 0.5


def test_genes_not_fitted_keep_their_status():
    expression = pd.read_csv(DATA / "vst_200.tsv.gz", sep="\t", index_col=0).iloc[:6]
    samples = read_samples(DATA / "samples.tsv")
    status = pd.Series(
        ["ok", "singular", "filtered:low_counts", "ok", "failed:numerical", "ok"], index=expression.index
    )
    status = status.drop(expression.index[5])  # a gene the analysis does not list
    ic = information_criteria(expression, samples, MODELS["random"], categorical=["Batch"], gene_status=status)
    assert list(ic["gene_id"]) == list(expression.index)
    assert list(ic["status"].iloc[[2, 4, 5]]) == ["filtered:low_counts", "failed:numerical", "missing"]
    assert ic.iloc[[2, 4, 5]][["loglik_ml", "aic", "bic"]].isna().all().all()
    assert ic["n_params"].iloc[[2, 4, 5]].isna().all()
    # a gene its analysis called singular (under REML) is refitted by ML like the others
    assert ic["status"].iloc[1] in ("ok", "singular") and np.isfinite(ic["aic"].iloc[1])


def _ic(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["gene_id", "status", "aic", "bic"])


def test_best_models_ties_and_missing_genes():
    a = _ic([("g1", "ok", 10.0, 20.0), ("g2", "ok", 5.0, 9.0), ("g3", "ok", 1.0, 1.0), ("g4", "ok", 3.0, 3.0)])
    b = _ic([("g1", "ok", 12.0, 15.0), ("g2", "singular", 5.0, 8.0), ("g3", "filtered:low_counts", np.nan, np.nan)])
    c = _ic([("g1", "ok", 11.0, 30.0), ("g2", "ok", 7.0, 8.0), ("g3", "ok", 2.0, 2.0), ("g5", "ok", 1.0, 1.0)])
    best = best_models({"a": a, "b": b, "c": c}).set_index("gene_id")
    assert list(best.index) == ["g1", "g2", "g3", "g4", "g5"]
    assert best.loc["g1", ["status", "best_aic", "best_bic"]].tolist() == ["ok", "a", "b"]
    assert best.loc["g1", "delta_aic"] == pytest.approx(1.0)
    assert best.loc["g1", "delta_bic"] == pytest.approx(5.0)
    assert best.loc["g2", ["status", "best_aic", "best_bic"]].tolist() == ["tie:aic,bic", "a|b", "b|c"]
    assert best.loc["g2", ["delta_aic", "delta_bic"]].tolist() == [0.0, 0.0]
    assert best.loc["g3", "status"] == "not_fitted:b"
    assert best.loc["g4", "status"] == "not_fitted:b,c"
    assert best.loc["g5", "status"] == "not_fitted:a,b"
    assert best.loc[["g3", "g4", "g5"], "best_aic"].isna().all()
    counts = win_counts(best.reset_index(), ["a", "b", "c"])
    assert counts["n_genes"] == 5 and counts["n_compared"] == 2 and counts["n_not_fitted"] == 3
    assert counts["aic"] == {"wins": {"a": 1, "b": 0, "c": 0}, "ties": 1, "close": 1, "median_delta": 1.0}
    assert counts["bic"] == {"wins": {"a": 0, "b": 1, "c": 0}, "ties": 1, "close": 0, "median_delta": 5.0}


def test_best_models_needs_two_analyses():
    with pytest.raises(ValueError, match="at least two"):
        best_models({"a": _ic([("g1", "ok", 1.0, 1.0)])})


def _de(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["gene_id", "status", "q"])


def test_de_agreement_on_a_small_example():
    # fdr 0.05: x calls g1 g2 g3 g6; y calls g1 g4 g5; g6 is not tested by y, g7 only y has
    x = {
        "Infection": _de(
            [
                ("g1", "ok", 0.001),
                ("g2", "ok", 0.04),
                ("g3", "singular", 0.01),
                ("g4", "ok", 0.2),
                ("g5", "ok", 0.06),
                ("g6", "ok", 0.001),
                ("g8", "ok", 0.5),
            ]
        ),
        "Celltype": _de([("g1", "ok", 0.5)]),
    }
    y = {
        "Infection": _de(
            [
                ("g1", "ok", 0.0001),
                ("g2", "ok", 0.3),
                ("g3", "ok", 0.9),
                ("g4", "ok", 0.02),
                ("g5", "ok", 0.05),
                ("g6", "filtered:low_counts", np.nan),
                ("g7", "ok", 0.001),
                ("g8", "ok", 0.7),
            ]
        )
    }
    table = de_agreement({"x": x, "y": y}, fdr=0.05)
    assert list(table.columns) == AGREEMENT_COLUMNS
    assert len(table) == 1  # Celltype is not a coefficient of y
    row = table.iloc[0]
    assert (row["analysis_a"], row["analysis_b"], row["coefficient"]) == ("x", "y", "Infection")
    assert row["n_genes"] == 8
    assert row["n_tested_both"] == 6
    assert (row["n_both"], row["n_only_a"], row["n_only_b"], row["n_neither"]) == (1, 2, 2, 1)
    assert row["n_not_tested"] == 2
    assert row["genes_only_a"] == ["g3", "g2"]  # by x's q
    assert row["genes_only_b"] == ["g4", "g5"]  # by y's q


def test_de_agreement_pairs_in_order():
    t = {"c": _de([("g1", "ok", 0.01)])}
    table = de_agreement({"a": t, "b": t, "c": t}, fdr=0.05)
    assert list(zip(table["analysis_a"], table["analysis_b"])) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert table["n_both"].tolist() == [1, 1, 1]
