"""batchmix.design_check: every finding code on a small synthetic design, the report's content, the errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from batchmix.design_check import FINDING_CODES, check_design, cramers_v, nested_columns
from batchmix.io import InputError


def sheet(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    return pd.DataFrame(columns, index=[f"s{i:02d}" for i in range(n)])


def balanced(n_batches: int = 6, per_batch: int = 4) -> pd.DataFrame:
    """Every batch holds both conditions: nothing to find."""
    return sheet(
        condition=["ctrl", "treat"] * (n_batches * per_batch // 2),
        batch=[f"B{b}" for b in range(n_batches) for _ in range(per_batch)],
    )


def finding(report, code):
    matches = [f for f in report.findings if f.code == code]
    assert matches, f"no finding {code}: {report.codes()}"
    return matches[0]


def test_a_balanced_design_has_no_findings_and_the_expected_summary():
    report = check_design(balanced(), formula="~ condition + (1|batch)", batch="batch")
    assert report.findings == []
    d = report.to_dict()
    json.dumps(d)  # the design file is JSON
    assert d["n_samples"] == 24 and d["fixed_rank"] == 2 and d["full_rank"] == 7 and d["residual_df"] == 17
    assert d["batch_levels"] == {f"B{b}": 4 for b in range(6)}
    (factor,) = d["factors"]
    assert factor["column"] == "condition" and factor["levels"] == ["ctrl", "treat"]
    assert factor["crosstab"]["B0"] == {"ctrl": 2, "treat": 2}
    assert factor["cramers_v"] == 0.0 and factor["single_level_batches"] == [] and factor["confounded"] is False
    (term,) = d["random_terms"]
    assert term == {
        "group": "batch",
        "terms": ["Intercept"],
        "n_levels": 6,
        "obs_per_level": {"min": 4, "median": 4.0, "max": 4},
        "identifiable": True,
        "reason": None,
    }


def test_confounded_names_the_factor_and_the_batches():
    samples = balanced()
    samples.loc[samples["batch"].isin(["B1", "B4"]), "condition"] = "ctrl"
    samples.loc[samples["batch"] == "B2", "condition"] = "treat"
    report = check_design(samples, formula="~ condition + (1|batch)", batch="batch")
    f = finding(report, "confounded")
    assert f.severity == "warning"
    for word in ("'condition'", "B1 (only ctrl)", "B2 (only treat)", "B4 (only ctrl)"):
        assert word in f.message
    (factor,) = report.factors
    assert factor["single_level_batches"] == ["B1", "B2", "B4"] and factor["confounded"] is True
    assert report.confounded
    assert report.errors == []


def test_a_single_sample_batch_with_one_level_is_not_confounding():
    samples = balanced()
    samples = pd.concat([samples, sheet(condition=["ctrl"], batch=["B9"]).set_axis(["extra"])])
    report = check_design(samples, formula="~ condition + (1|batch)", batch="batch")
    assert report.factors[0]["single_level_batches"] == ["B9"]
    assert report.factors[0]["confounded"] is False
    assert "confounded" not in report.codes()


@pytest.mark.parametrize("formula, column", [("~ group + (1|group)", "group"), ("~ condition + (1|batch)", "batch")])
def test_fixed_effect_aliased_with_the_random_term_is_an_error(formula, column):
    samples = sheet(
        group=[f"G{g}" for g in range(6) for _ in range(3)],
        batch=[f"B{g}" for g in range(6) for _ in range(3)],
        condition=[f"c{g}" for g in range(6) for _ in range(3)],
    )  # condition equals batch
    report = check_design(samples, formula=formula, batch="batch")
    f = finding(report, "aliased_fixed_random")
    assert f.severity == "error" and f"({'1'} | {column})" in f.message
    assert ("'condition'" if column == "batch" else "'group' itself") in f.message
    assert report.random_terms[0]["identifiable"] is False


def test_one_sample_per_batch_is_an_error_naming_the_column():
    samples = sheet(condition=["ctrl", "treat"] * 4, batch=[f"B{b}" for b in range(8)])
    report = check_design(samples, formula="~ condition + (1|batch)", batch="batch")
    f = finding(report, "one_observation_per_level")
    assert f.severity == "error" and "'batch'" in f.message
    assert "no_residual_df" in report.codes("error")
    with pytest.raises(InputError) as info:
        report.raise_on_errors()
    assert "[one_observation_per_level]" in str(info.value) and "[no_residual_df]" in str(info.value)


@pytest.mark.parametrize(
    "samples, formula",
    [
        (sheet(condition=["a", "b", "a"], batch=["B1", "B1", "B2"]), "~ condition + (1|batch)"),  # three samples
        (
            sheet(x1=[1.0, 2, 3, 4], x2=[1.0, 4, 9, 16], x3=[1.0, 8, 27, 64], batch=["B1", "B1", "B2", "B2"]),
            "~ x1 + x2 + x3",
        ),  # as many coefficients as samples
    ],
)
def test_no_residual_df_is_an_error(samples, formula):
    report = check_design(samples, formula=formula, batch="batch")
    assert finding(report, "no_residual_df").severity == "error"


def test_few_residual_df_is_a_warning():
    samples = sheet(condition=["a", "b"] * 3, batch=["B1", "B1", "B2", "B2", "B3", "B3"])
    report = check_design(samples, formula="~ condition + (1|batch)", batch="batch")
    assert finding(report, "few_residual_df").severity == "warning"


@pytest.mark.parametrize("n_batches, strong", [(2, True), (3, True), (4, False)])
def test_few_levels_is_strongly_worded_at_two_or_three(n_batches, strong):
    report = check_design(balanced(n_batches), formula="~ condition + (1|batch)", batch="batch")
    f = finding(report, "few_levels")
    assert f.severity == "warning" and f"only {n_batches} levels" in f.message
    assert ("not trustworthy" in f.message) is strong
    assert ("fixed effect" in f.message) is strong
    assert "few_levels" not in check_design(balanced(5), formula="~ condition + (1|batch)", batch="batch").codes()


def test_single_level_factors():
    samples = balanced().assign(site="A")
    report = check_design(samples, formula="~ condition + site + (1|batch)", batch="batch")
    assert finding(report, "single_level_factor").severity == "warning"
    assert "'site'" in finding(report, "single_level_factor").message
    report = check_design(samples, formula="~ condition + (1|site)", batch="batch")
    f = finding(report, "single_level_factor")
    assert f.severity == "error" and "'site'" in f.message


def test_rank_deficient_fixed_design_is_a_warning():
    samples = balanced().assign(copy=lambda d: d["condition"])
    report = check_design(samples, formula="~ condition + copy + (1|batch)", batch="batch")
    assert finding(report, "rank_deficient_fixed").severity == "warning"


def test_random_slope_without_within_level_variation_is_an_error():
    samples = balanced().assign(dose=lambda d: d["batch"].str[1:].astype(float))  # constant within each batch
    report = check_design(samples, formula="~ dose + (dose | batch)", batch="batch")
    f = finding(report, "slope_not_identifiable")
    assert f.severity == "error" and "'dose'" in f.message
    varying = balanced().assign(dose=[0.0, 1, 2, 3] * 6)
    assert check_design(varying, formula="~ dose + (dose | batch)", batch="batch").errors == []


def test_numeric_batch_is_categorical_and_numeric_covariates_get_a_note():
    samples = balanced().assign(batch=lambda d: d["batch"].str[1:].astype(int) + 1, day=[0, 1, 2, 3] * 6)
    report = check_design(samples, formula="~ condition + day + batch", batch="batch")
    assert report.fixed_rank == 1 + 1 + 1 + 5  # intercept, condition, day, and five batch contrasts (not a slope)
    f = finding(report, "numeric_few_values")
    assert f.severity == "note" and "'day'" in f.message and "levels:" in f.message
    assert (
        "numeric_few_values"
        not in check_design(
            samples, formula="~ condition + day + batch", batch="batch", levels={"day": [0, 1, 2, 3]}
        ).codes()
    )


def test_numeric_codes_get_the_note_and_two_valued_numbers_are_checked_as_factors():
    samples = balanced().assign(
        code=[1, 2, 3, 4, 5, 6, 7, 8] * 3, dose=np.linspace(0, 1, 24), sex=lambda d: (d["batch"] == "B0").astype(int)
    )
    report = check_design(samples, formula="~ code + dose + (1|batch)", batch="batch")
    assert "'code' is numeric with 8 distinct values" in finding(report, "numeric_few_values").message
    assert len([f for f in report.findings if f.code == "numeric_few_values"]) == 1  # not the continuous dose
    report = check_design(samples, formula="~ sex + (1|batch)", batch="batch")
    assert "numeric_few_values" not in report.codes()
    (factor,) = report.factors
    assert factor["column"] == "sex" and factor["levels"] == ["0", "1"] and factor["confounded"] is True
    assert factor["single_batch_levels"] == ["1"]


def test_columns_nested_in_the_batch_outside_the_model_get_a_note():
    samples = balanced().assign(celltype=lambda d: d["batch"].map({"B0": "lung", "B1": "lung"}).fillna("blood"))
    f = finding(check_design(samples, formula="~ condition + (1|batch)", batch="batch"), "nested_in_batch")
    assert f.severity == "note" and "'celltype'" in f.message
    assert (
        "nested_in_batch"
        not in check_design(samples, formula="~ condition + celltype + (1|batch)", batch="batch").codes()
    )


def test_looks_like_counts_only_for_log_input_with_large_integers():
    samples = balanced()
    counts = pd.DataFrame(np.arange(24 * 3).reshape(3, 24) * 50, columns=samples.index)
    report = check_design(
        samples, formula="~ condition + (1|batch)", batch="batch", input_type="log", expression=counts
    )
    assert finding(report, "looks_like_counts").severity == "warning"
    for quiet in (
        dict(input_type="counts", expression=counts),
        dict(input_type="log", expression=counts + 0.5),
        dict(input_type="log", expression=counts // 100),
    ):
        assert (
            "looks_like_counts"
            not in check_design(samples, formula="~ condition + (1|batch)", batch="batch", **quiet).codes()
        )


def test_every_documented_code_is_produced_by_some_test_here():
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    for code in FINDING_CODES:
        assert f'"{code}"' in source, code


def test_nested_columns_and_cramers_v():
    samples = balanced().assign(
        site=lambda d: d["batch"].map({"B0": "x", "B1": "x"}).fillna("y"),
        constant="k",
        donor=[f"d{i}" for i in range(24)],
    )
    assert nested_columns(samples, "batch") == ["site"]
    assert cramers_v(pd.DataFrame([[5, 0], [0, 5]])) == pytest.approx(1.0)
    assert cramers_v(pd.DataFrame([[2, 2], [2, 2]])) == pytest.approx(0.0)
    assert cramers_v(pd.DataFrame([[3, 1]])) is None


def test_without_batch_and_with_bad_levels():
    report = check_design(balanced(), formula="~ condition", batch=None)
    assert report.batch_levels == {} and report.factors == [] and report.nested_columns == []
    with pytest.raises(ValueError, match="'condition' has the levels ctrl, treat"):
        check_design(balanced(), formula="~ condition + (1|batch)", batch="batch", levels={"condition": ["x", "y"]})


def test_raise_on_errors_is_silent_without_errors():
    samples = balanced(3)
    report = check_design(samples, formula="~ condition + (1|batch)", batch="batch")
    assert report.codes() == ["few_levels"] and report.errors == []
    report.raise_on_errors()


def test_a_random_slope_covariate_gets_no_numeric_note():
    samples = balanced().assign(day=[0, 1, 2, 3] * 6)
    assert "numeric_few_values" not in check_design(samples, formula="~ day + (day | batch)", batch="batch").codes()
    assert "numeric_few_values" in check_design(samples, formula="~ day + (1 | batch)", batch="batch").codes()


def test_a_slope_only_term_is_not_aliased_by_a_fixed_grouping():
    samples = balanced().assign(dose=[0.0, 1, 2, 3] * 6)
    assert check_design(samples, formula="~ batch + dose + (0 + dose | batch)", batch="batch").errors == []
    assert "aliased_fixed_random" in check_design(
        samples, formula="~ batch + dose + (dose | batch)", batch="batch"
    ).codes("error")
