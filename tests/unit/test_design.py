"""batchmix.design: lme4-style formula parsing and design matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix.design import (
    ModelFormula,
    RandomTerm,
    categorize,
    check_levels,
    fixed_design,
    fixed_term_columns,
    formula_columns,
    parse_formula,
    random_design,
)
from batchmix.io import read_result_table

LIMMA_DE = Path(__file__).resolve().parents[1] / "data" / "limma_de"


@pytest.fixture
def samples() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "condition": ["ctrl", "treat", "ctrl", "treat", "ctrl", "treat"],
            "batch": ["b2", "b2", "b1", "b1", "b3", "b3"],
            "experiment.number": [6, 6, 4, 4, 7, 7],
            "dose": [0.5, 1.0, 0.0, 2.0, 1.5, 3.0],
            "strain": ["C57BL/6J", "DBA/2J", "DBA/2J", "C57BL/6J", "C57BL/6J", "DBA/2J"],
        },
        index=[f"s{i}" for i in range(6)],
    )


def test_parse_simple_intercept():
    assert parse_formula("~ condition + (1 | batch)") == ModelFormula(
        response=None, fixed="condition", random=[RandomTerm("1", "batch")]
    )


def test_parse_response_and_slopes():
    parsed = parse_formula("Reaction ~ Days + (Days|Subject)")
    assert parsed.response == "Reaction"
    assert parsed.fixed == "Days"
    assert parsed.random == [RandomTerm("Days", "Subject")]


def test_parse_two_groups_and_interaction_group():
    parsed = parse_formula("~ x + (1|g1) + (1 | g2:g3)")
    assert parsed.random == [RandomTerm("1", "g1"), RandomTerm("1", "g2:g3")]
    assert parsed.fixed == "x"


def test_parse_uncorrelated_splits_terms():
    parsed = parse_formula("~ x + (x || g)")
    assert parsed.random == [RandomTerm("1", "g"), RandomTerm("0 + x", "g")]


def test_parse_only_random_gives_intercept_fixed():
    assert parse_formula("~ (1|g)").fixed == "1"


@pytest.mark.parametrize(
    "bad", ["x + (1|g)", "~ x + (1|g", "~ x + 1|g", "~ x + (|g)", "~ x + (1|)", "~ x + + (1|g)", "y ~ x ~ z"]
)
def test_parse_errors(bad):
    with pytest.raises(ValueError):
        parse_formula(bad)


def test_formula_columns_order_and_no_response():
    cols = formula_columns("y ~ condition + dose:condition + (dose | batch) + (1|experiment.number)")
    assert cols == ["condition", "dose", "batch", "experiment.number"]


def test_fixed_design_r_names(samples):
    X, names = fixed_design("~ condition + strain + dose + (1|batch)", samples)
    assert names == ["Intercept", "conditiontreat", "strainDBA_2J", "dose"]
    np.testing.assert_array_equal(X[:, 1], [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(X[:, 2], [0, 1, 1, 0, 0, 1])
    np.testing.assert_array_equal(X[:, 3], samples["dose"].to_numpy())


def test_fixed_design_drops_aliased_columns_with_warning(samples):
    frame = samples.assign(copy_of_condition=samples["condition"])
    with pytest.warns(UserWarning, match="rank deficient"):
        X, names = fixed_design("~ condition + copy_of_condition + (1|batch)", frame)
    assert names == ["Intercept", "conditiontreat"]
    assert X.shape == (6, 2)


def test_fixed_design_categorical_reference_level(samples):
    frame = samples.assign(condition=pd.Categorical(samples["condition"], ["treat", "ctrl"]))
    _, names = fixed_design("~ condition + (1|batch)", frame)
    assert names == ["Intercept", "conditionctrl"]


def test_fixed_term_columns(samples):
    terms = fixed_term_columns("~ condition * dose + (1|batch)", samples)
    assert terms == {
        "Intercept": ["Intercept"],
        "condition": ["conditiontreat"],
        "dose": ["dose"],
        "condition_dose": ["conditiontreat_dose"],
    }


def test_random_design_intercept_levels_sorted(samples):
    rd = random_design("~ condition + (1|batch)", samples)
    (block,) = rd.blocks
    assert block.levels == ["b1", "b2", "b3"]
    assert block.terms == ["Intercept"]
    expected = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1]])
    np.testing.assert_array_equal(block.Z, expected)


def test_random_design_numeric_group_and_slopes(samples):
    rd = random_design("~ 1 + (dose | experiment.number)", samples)
    (block,) = rd.blocks
    assert block.levels == ["4", "6", "7"]
    assert block.terms == ["Intercept", "dose"]
    assert block.n_theta == 3
    # level-major columns: (4, Intercept), (4, dose), (6, Intercept), ...
    assert block.Z.shape == (6, 6)
    np.testing.assert_array_equal(block.Z[3], [1, 2, 0, 0, 0, 0])
    np.testing.assert_array_equal(block.Z[0], [0, 0, 1, 0.5, 0, 0])
    np.testing.assert_array_equal(block.Z[1], [0, 0, 1, 1, 0, 0])


def test_random_design_interaction_group(samples):
    rd = random_design("~ (1 | batch:condition)", samples)
    assert rd.blocks[0].levels == ["b1:ctrl", "b1:treat", "b2:ctrl", "b2:treat", "b3:ctrl", "b3:treat"]
    np.testing.assert_array_equal(rd.blocks[0].Z, np.eye(6)[[2, 3, 0, 1, 4, 5]])


def test_missing_column_is_reported(samples):
    with pytest.raises(ValueError, match="not in the sample sheet"):
        fixed_design("~ nosuch + (1|batch)", samples)


# ---- levels and categorical columns


def test_numeric_batch_is_a_factor_when_categorical_as_r_model_matrix():
    """``~ strain + Batch`` with batches coded 4, 6, 7: two contrasts, as R's factor(); R's matrix is the reference."""
    samples = read_result_table(LIMMA_DE / "bottomly_samples.tsv").set_index("sample_id")
    samples["experiment.number"] = samples["experiment.number"].astype(int)
    reference = read_result_table(LIMMA_DE / "design_batch_fixed.tsv").set_index("sample_id")
    X, names = fixed_design("~ strain + experiment.number", samples, categorical=("experiment.number",))
    assert names == list(reference.columns) == ["Intercept", "strainDBA_2J", "experiment.number6", "experiment.number7"]
    np.testing.assert_array_equal(X, reference.loc[samples.index].to_numpy(dtype=float))
    # without it the numeric column is one slope, as before
    _, slope_names = fixed_design("~ strain + experiment.number", samples)
    assert slope_names == ["Intercept", "strainDBA_2J", "experiment.number"]


def test_levels_set_the_reference_and_the_coefficient_names(samples):
    X, names = fixed_design(
        "~ condition + strain + (1|batch)",
        samples,
        levels={"condition": ["treat", "ctrl"], "strain": ["DBA/2J", "C57BL/6J"]},
    )
    assert names == ["Intercept", "conditionctrl", "strainC57BL_6J"]
    np.testing.assert_array_equal(X[:, 1], [1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(X[:, 2], [1, 0, 0, 1, 1, 0])
    assert fixed_term_columns("~ condition + (1|batch)", samples, levels={"condition": ["treat", "ctrl"]}) == {
        "Intercept": ["Intercept"],
        "condition": ["conditionctrl"],
    }


def test_levels_on_a_numeric_column_make_it_a_factor_in_that_order(samples):
    _, names = fixed_design("~ experiment.number", samples, levels={"experiment.number": [7, 4, 6]})
    assert names == ["Intercept", "experiment.number4", "experiment.number6"]


def test_levels_order_the_grouping_factor_of_a_random_term(samples):
    rd = random_design("~ condition + (1|batch)", samples, levels={"batch": ["b3", "b1", "b2"]})
    assert rd.blocks[0].levels == ["b3", "b1", "b2"]
    np.testing.assert_array_equal(rd.blocks[0].Z[0], [0, 0, 1])


@pytest.mark.parametrize(
    "levels, words",
    [
        ({"condition": ["ctrl", "treat", "placebo"]}, ["'condition'", "ctrl, treat", "not in the column: placebo"]),
        ({"condition": ["ctrl"]}, ["'condition'", "ctrl, treat", "not listed: treat"]),
        ({"condition": ["ctrl", "ctrl", "treat"]}, ["'condition'", "listed twice: ctrl"]),
        ({"nosuch": ["a", "b"]}, ["'nosuch'", "not in the sample sheet"]),
    ],
)
def test_bad_levels_name_the_column_and_its_levels(samples, levels, words):
    with pytest.raises(ValueError) as info:
        check_levels(samples, levels)
    for word in words:
        assert word in str(info.value)
    if "nosuch" not in levels:
        with pytest.raises(ValueError, match="condition"):
            fixed_design("~ condition + (1|batch)", samples, levels=levels)


def test_categorize_gives_the_same_designs_as_the_arguments(samples):
    levels = {"condition": ["treat", "ctrl"], "batch": ["b3", "b1", "b2"]}
    sheet = categorize(samples, levels=levels, categorical=("experiment.number",))
    assert list(sheet["experiment.number"].cat.categories) == ["4", "6", "7"]
    formula = "~ condition + experiment.number + (dose | batch)"
    X1, names1 = fixed_design(formula, sheet)
    X2, names2 = fixed_design(formula, samples, levels=levels, categorical=("experiment.number",))
    assert names1 == names2 == ["Intercept", "conditionctrl", "experiment.number6", "experiment.number7"]
    np.testing.assert_array_equal(X1, X2)
    assert random_design(formula, sheet).blocks[0].levels == ["b3", "b1", "b2"]
    np.testing.assert_array_equal(random_design(formula, sheet).Z, random_design(formula, samples, levels=levels).Z)
    with pytest.raises(ValueError, match="'condition' has the levels ctrl, treat"):
        categorize(samples, levels={"condition": ["ctrl", "other"]})


def test_model_matrices_are_reused_only_for_the_same_sheet():
    # fixed_design builds each formulaic matrix once per process (batchmix.design._model_matrix):
    # a changed value, level order or column must still give its own design
    sheet = pd.DataFrame(
        {"g": pd.Categorical(["a", "b", "a", "b", "c", "c"], categories=["a", "b", "c"]), "x": [1.0, 2, 3, 4, 5, 7]},
        index=[f"s{i}" for i in range(6)],
    )
    X1, names1 = fixed_design("~ g + x", sheet)
    X1_again, _ = fixed_design("~ g + x", sheet.copy())
    np.testing.assert_array_equal(X1, X1_again)
    X1_again[:] = -1.0  # the caller's copy: the shared matrix is not changed
    np.testing.assert_array_equal(fixed_design("~ g + x", sheet)[0], X1)
    other_value = sheet.assign(x=[1.0, 2, 3, 4, 5, 8])
    assert fixed_design("~ g + x", other_value)[0][5, 3] == 8.0
    reordered = sheet.assign(g=sheet["g"].cat.reorder_categories(["c", "b", "a"]))
    X2, names2 = fixed_design("~ g + x", reordered)
    assert names1 == ["Intercept", "gb", "gc", "x"] and names2 == ["Intercept", "gb", "ga", "x"]
    np.testing.assert_array_equal(X2[:, 2], [1.0, 0, 1, 0, 0, 0])
