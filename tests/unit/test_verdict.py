"""batchmix.verdict: each batch-effect class, design class and recommendation on small synthetic inputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from batchmix.design_check import check_design
from batchmix.verdict import RECOMMENDATIONS, classify


def sheet(n_batches: int = 6, per_batch: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "condition": ["ctrl", "treat"] * (n_batches * per_batch // 2),
            "Batch": [f"run{b}" for b in range(n_batches) for _ in range(per_batch)],
        },
        index=[f"s{i:02d}" for i in range(n_batches * per_batch)],
    )


def fits(fractions, lrt_p=None, *, column="frac_Batch", singular=0) -> pd.DataFrame:
    """gene_fits with the given batch fractions (fitted genes) plus two filtered genes with NA."""
    n = len(fractions)
    status = ["singular"] * singular + ["ok"] * (n - singular)
    frame = pd.DataFrame(
        {
            "gene_id": [f"g{i}" for i in range(n)],
            "status": status,
            column: fractions,
            "lrt_p": lrt_p if lrt_p is not None else np.full(n, 0.5),
        }
    )
    filtered = pd.DataFrame(
        {"gene_id": ["f1", "f2"], "status": ["filtered:low_counts"] * 2, column: [np.nan] * 2, "lrt_p": [np.nan] * 2}
    )
    return pd.concat([frame, filtered], ignore_index=True)


MODEL = "~ condition + (1|Batch)"


def verdict_for(fractions, samples=None, *, lrt_p=None, model=MODEL, **kwargs):
    samples = sheet() if samples is None else samples
    report = check_design(samples, formula=model, batch="Batch")
    return classify(design_report=report, gene_fits=fits(fractions, lrt_p, **kwargs), batch="Batch")


@pytest.mark.parametrize(
    "fractions, expected",
    [
        (np.full(100, 0.005), "none"),
        (np.full(100, 0.03), "weak"),
        (np.r_[np.full(85, 0.0), np.full(15, 0.2)], "weak"),  # 90th percentile 0.2
        (np.full(100, 0.12), "moderate"),
        (np.r_[np.full(85, 0.01), np.full(15, 0.4)], "moderate"),  # 90th percentile 0.4
        (np.full(100, 0.3), "strong"),
        (np.r_[np.full(85, 0.05), np.full(15, 0.7)], "strong"),  # 90th percentile 0.7
    ],
)
def test_batch_effect_classes(fractions, expected):
    verdict = verdict_for(fractions)
    assert verdict.batch_effect == expected
    assert verdict.figures["batch_fraction_median"] == pytest.approx(np.median(fractions))
    assert verdict.figures["n_fitted"] == 100


def test_many_significant_lrts_make_a_small_effect_weak():
    small = np.full(100, 0.005)
    lrt_p = np.r_[np.full(10, 1e-6), np.full(90, 0.5)]
    verdict = verdict_for(small, lrt_p=lrt_p)
    assert verdict.figures["lrt_share_q05"] == pytest.approx(0.10)
    assert verdict.batch_effect == "weak"
    assert verdict_for(small, lrt_p=np.r_[np.full(2, 1e-6), np.full(98, 0.5)]).batch_effect == "none"


@pytest.mark.parametrize(
    "fractions, recommendation",
    [
        (np.full(100, 0.005), "no_action"),
        (np.full(100, 0.03), "correct_for_visualisation_only"),
        (np.full(100, 0.12), "block_in_de"),
        (np.full(100, 0.5), "block_in_de"),
    ],
)
def test_recommendation_follows_the_effect_on_a_good_design(fractions, recommendation):
    verdict = verdict_for(fractions)
    assert verdict.design == "ok"
    assert verdict.recommendation == recommendation
    assert verdict.recommendation in RECOMMENDATIONS


def test_confounded_design_names_the_factor_and_the_batches():
    samples = sheet()
    samples.loc[samples["Batch"].isin(["run1", "run4"]), "condition"] = "treat"
    verdict = verdict_for(np.full(100, 0.5), samples)
    assert verdict.design == "confounded"
    assert verdict.recommendation == "do_not_correct_confounded"
    assert verdict.figures["confounded"] == [{"factor": "condition", "batches": ["run1", "run4"]}]
    for words in ("'condition'", "run1 and run4", "do not batch-correct"):
        assert words in verdict.text


def test_two_batches_say_not_to_trust_the_batch_variance():
    verdict = verdict_for(np.full(100, 0.3), sheet(n_batches=2, per_batch=6), singular=40)
    assert verdict.design == "few_batches"
    assert verdict.recommendation == "model_batch_as_fixed"
    assert "do not trust the batch variance" in verdict.text
    assert "only 2 batches" in verdict.text and "singular" in verdict.text
    assert verdict.figures["singular_share"] == pytest.approx(0.4)
    # mostly singular fits (batch variance 0) are no evidence of no batch effect
    mostly_singular = verdict_for(np.full(100, 0.0), sheet(n_batches=2, per_batch=6), singular=63)
    assert mostly_singular.batch_effect == "none"
    assert mostly_singular.recommendation == "model_batch_as_fixed"
    assert "63% of the fits are singular" in mostly_singular.text


def test_not_identifiable_design_recommends_fixing_it():
    one_per_batch = pd.DataFrame(
        {"condition": ["ctrl", "treat"] * 4, "Batch": [f"run{b}" for b in range(8)]}, index=[f"s{i}" for i in range(8)]
    )
    verdict = verdict_for(np.full(100, 0.9), one_per_batch)
    assert verdict.design == "not_identifiable"
    assert verdict.recommendation == "fix_design"
    assert "one_observation_per_level" in verdict.text


def test_without_batch_nothing_is_assessed():
    report = check_design(sheet(), formula="~ condition", batch=None)
    verdict = classify(design_report=report.to_dict(), gene_fits=fits(np.full(10, 0.5)), batch=None)
    assert (verdict.batch_effect, verdict.design, verdict.recommendation) == ("not_assessed", "ok", "no_action")
    assert "No batch column" in verdict.text


def test_metadata_names_the_fraction_column_and_pcs_are_reported():
    report = check_design(sheet(), formula=MODEL, batch="Batch")
    metadata = {"groups": [{"group": "Batch", "fraction_column": "frac_Batch_2"}], "fixed_fraction_columns": {}}
    verdict = classify(
        design_report=report,
        gene_fits=fits(np.full(50, 0.4), column="frac_Batch_2"),
        batch="Batch",
        metadata=metadata,
        batch_r2_before={"PC1": 0.81, "PC2": 0.1},
        batch_r2_after=[0.02, 0.01],
    )
    assert verdict.batch_effect == "strong"
    assert verdict.figures["batch_r2_before"] == [0.81, 0.1]
    assert "81% of the variance of the first principal component before correction, 2% after" in verdict.text
    json.dumps(verdict.to_dict())


def test_columns_nested_in_the_batch_are_named_in_the_text():
    samples = sheet().assign(celltype=lambda d: d["Batch"].map({"run0": "lung", "run1": "lung"}).fillna("blood"))
    verdict = verdict_for(np.full(100, 0.7), samples)
    assert verdict.figures["nested_columns"] == ["celltype"]
    assert "'celltype' takes a single value in every batch" in verdict.text
    assert "nested_columns" in verdict.figures and verdict_for(np.full(100, 0.7)).figures["nested_columns"] == []


def test_a_batch_outside_the_model_is_not_assessed():
    report = check_design(sheet(), formula="~ condition", batch="Batch")
    verdict = classify(design_report=report, gene_fits=fits(np.full(10, 0.5), column="frac_other"), batch="Batch")
    assert verdict.batch_effect == "not_assessed" and verdict.recommendation == "no_action"
    assert "does not include the batch" in verdict.text
