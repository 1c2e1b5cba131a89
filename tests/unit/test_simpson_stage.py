"""The Simpson stages' helpers: the value of a zero count from the recorded VST trend, the settings
check, the job names and the display order."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from batchmix.io import InputError
from batchmix.pipeline import paths
from batchmix.pipeline.simpson import check_simpson_settings, consistent_reversals, job_of, zero_value_of
from batchmix.vst import transform_normalised, vst


def _counts(seed=0, genes=300, samples=12):
    rng = np.random.default_rng(seed)
    means = np.exp(rng.uniform(0, 8, genes))
    sf = rng.uniform(0.6, 1.6, samples)
    # negative binomial with dispersion 0.1 + 1/mean
    alpha = 0.1 + 1.0 / means
    p = 1.0 / (1.0 + np.outer(means, sf) * alpha[:, None])
    counts = rng.negative_binomial(1.0 / alpha[:, None] * np.ones((1, samples)), p)
    counts[:5, :6] = 0  # zeros in some samples
    return pd.DataFrame(counts, index=[f"g{i}" for i in range(genes)], columns=[f"s{j}" for j in range(samples)])


@pytest.mark.parametrize("fit_type", ["parametric", "mean"])
def test_transform_normalised_reproduces_the_vst(fit_type):
    counts = _counts()
    result = vst(counts, fit_type=fit_type, nsub=None)
    assert result.fit_type == fit_type
    normalised = counts / result.size_factors
    got = transform_normalised(normalised.to_numpy(float), fit_type=fit_type, coefficients=result.coefficients)
    np.testing.assert_allclose(got, result.values.to_numpy(), rtol=0, atol=1e-12)
    # a zero count has the same value in every sample
    zero = float(transform_normalised(0.0, fit_type=fit_type, coefficients=result.coefficients))
    assert np.allclose(result.values.to_numpy()[counts.to_numpy() == 0], zero, rtol=0, atol=1e-12)


def test_zero_value_from_the_recorded_trend():
    info = {
        "input_type": "counts",
        "vst_fit_type_used": "parametric",
        "vst_coefficients": {"a0": 0.3859779216278375, "a1": 31.815973916763173},
    }
    # DESeq2's parametric VST at q = 0: log2((1 + a1) / (4 a0)); 4.409736 in the embedded example
    assert zero_value_of(info) == pytest.approx(math.log2((1 + 31.815973916763173) / (4 * 0.3859779216278375)))
    assert zero_value_of(info) == pytest.approx(4.409736, abs=1e-6)
    mean_info = {"input_type": "counts", "vst_fit_type_used": "mean", "vst_coefficients": {"mean": 0.25}}
    assert zero_value_of(mean_info) == pytest.approx(-math.log2(4 * 0.25))
    assert zero_value_of({"input_type": "log", "vst_fit_type_used": "none (input_type: log)"}) is None
    assert zero_value_of({"input_type": "counts", "vst_fit_type_used": "local", "vst_coefficients": {}}) is None


def _sheet(n_batches):
    return pd.DataFrame(
        {"Batch": [f"b{i % n_batches}" for i in range(4 * n_batches)]},
        index=[f"s{i}" for i in range(4 * n_batches)],
    )


def test_min_batches_above_the_number_of_batches_is_an_input_error():
    config = {"batch": "Batch", "simpson": {"enabled": True, "within_test": "random_effects", "min_batches": 5}}
    with pytest.raises(InputError, match=r"simpson.min_batches is 5 but the sample sheet has 4 batches"):
        check_simpson_settings(config, _sheet(4))
    check_simpson_settings(config, _sheet(5))  # enough batches
    # the pooled test and a disabled scan do not use min_batches
    check_simpson_settings({**config, "simpson": {**config["simpson"], "within_test": "pooled"}}, _sheet(4))
    check_simpson_settings({**config, "simpson": {**config["simpson"], "enabled": False}}, _sheet(4))


def test_job_names():
    assert job_of("results/simpson/blocks/2-of-4.candidates.tsv") == (2, 4)
    assert job_of(paths.simpson_job_path("null", scatteritem="3-of-3")) == (3, 3)
    with pytest.raises(ValueError):
        job_of("results/simpson/blocks/5-of-4.candidates.tsv")
    with pytest.raises(ValueError):
        job_of("results/simpson/reversals.tsv")


def test_gather_inputs_follow_the_config():
    config = {"simpson": {"jobs": 3, "n_replicates": 2, "calibration": "sign_flip"}}
    inputs = paths.simpson_gather_inputs(config)
    assert inputs["candidates"] == [f"results/simpson/blocks/{i}-of-3.candidates.tsv" for i in (1, 2, 3)]
    assert inputs["null"] == ["results/simpson/null/1-of-2.json", "results/simpson/null/2-of-2.json"]
    # the data simpson_prepare wrote once for the block-pair jobs and the gather
    assert inputs["prepared"] == "results/simpson/prepared"
    for method in ("none", "permutation"):
        assert paths.simpson_gather_inputs({"simpson": {**config["simpson"], "calibration": method}})["null"] == []


def test_display_order_puts_the_most_consistent_pairs_first():
    reversals = pd.DataFrame(
        {
            "gene_a": ["a", "b", "c", "d"],
            "gene_b": ["w", "x", "y", "z"],
            "p": [1e-9, 1e-5, 1e-6, 1e-7],
            "n_agree": [3, 9, 9, 7],
            "k_usable": [10, 10, 9, 7],
        }
    )
    order = list(consistent_reversals(reversals)["gene_a"])
    # 9 of 9 before 9 of 10, then 7 of 7, then the smallest p with 3 of 10
    assert order == ["c", "b", "d", "a"]


def _section(empirical_fdr, fraction_driven):
    from batchmix.report.sections import simpson_section

    reversals = pd.DataFrame({"gene_a": ["a"], "gene_b": ["b"], "p": [1e-9], "q": [1e-5]})
    summary = {
        "n_reversals": 1000,
        "n_pairs": 10**6,
        "n_genes_scanned": 1415,
        "fdr": 0.05,
        "method": "bh",
        "within_test": "random_effects",
        "min_batches": 3,
        "min_sd": 0.1,
        "calibration": {
            "method": "sign_flip", "replicates": 2, "flagged_null": [90, 110], "empirical_fdr": empirical_fdr
        },
        "lurking": {
            "nested": ["Celltype"],
            "factors": {"Celltype": {"levels": ["A549", "Calu3"], "n_driven": 10, "fraction_driven": fraction_driven,
                                     "driving": fraction_driven >= 0.5}},
        },
    }  # fmt: skip
    tables = {"reversals": reversals, "simpson_summary": summary, "simpson_figure": None}
    return simpson_section({"simpson": {"enabled": True}, "report": {"top_pairs": 1}}, tables)


def test_report_section_warns_above_twice_the_nominal_fdr():
    assert _section(0.101, 0.9)["calibration"]["warn"] is True
    assert _section(0.1, 0.9)["calibration"]["warn"] is False  # exactly twice: no warning
    calm = _section(0.066, 0.9)["calibration"]
    assert calm["flagged_null"] == "90, 110" and calm["replicates"] == 2 and calm["nominal_fdr"] == 0.05


def test_report_section_names_the_driving_factor():
    section = _section(0.066, 0.865)
    assert [f["column"] for f in section["driving"]] == ["Celltype"]
    assert section["driving"][0]["percent_driven"] == pytest.approx(86.5)
    assert _section(0.066, 0.3)["driving"] == []
    assert "DerSimonian-Laird" in section["test"]
