"""The kinship matrix of ``covariance: {kinship: path}`` reaches every stage: the sheet, the job inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix.io import InputError
from batchmix.pipeline import paths
from batchmix.pipeline.validate import load_samples

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "kinship"
KINSHIP_STAGES = ("lmm_chunk", "gather_lmm", "uncertainty", "design")


def _config(kinship: str | None) -> dict:
    return {
        "samples": str(DATA / "samples.tsv"),
        "expression": str(DATA / "expression.tsv"),
        "model": "~ cond + (1 | kinship)",
        "batch": "batch",
        "covariance": {"kinship": kinship},
        "uncertainty": {"bootstrap": 0, "bayes": True},
        "simpson": {"enabled": False},
        "outputs": {"matrices": "parquet"},
    }


def test_load_samples_attaches_the_matrix_of_the_config():
    samples = load_samples(_config(str(DATA / "kinship.tsv")))
    # the expected values come from the file itself, read with pandas
    K = pd.read_csv(DATA / "kinship.tsv", sep="\t", index_col=0, dtype={"sample_id": str})
    ids = list(samples.index)
    block = samples[[f"kinship::{i}" for i in ids]].to_numpy(dtype=float)
    np.testing.assert_array_equal(block, K.loc[ids, ids].to_numpy(dtype=float))
    assert {"cond", "batch"} <= set(samples.columns)


def test_load_samples_without_a_matrix_adds_no_column():
    samples = load_samples(_config(None))
    assert not [c for c in samples.columns if str(c).startswith("kinship::")]


def test_a_bad_matrix_is_an_input_error_naming_the_file(tmp_path):
    bad = tmp_path / "K.tsv"
    shutil.copy(DATA / "kinship.tsv", bad)
    K = pd.read_csv(bad, sep="\t", index_col=0, dtype={"sample_id": str})
    K.iloc[0, 1] += 0.3  # K[0, 1] no longer equals K[1, 0]
    K.to_csv(bad, sep="\t")
    with pytest.raises(InputError, match=r"covariance: kinship: kinship matrix .*K\.tsv: not symmetric"):
        load_samples(_config(str(bad)))


@pytest.mark.parametrize("stage", KINSHIP_STAGES)
def test_the_matrix_is_an_input_of_the_stages_that_read_it(stage):
    matrix = str(DATA / "kinship.tsv")
    with_matrix = paths.stage_inputs(stage, _config(matrix), n_chunks=2)
    without = paths.stage_inputs(stage, _config(None), n_chunks=2)
    assert with_matrix["kinship"] == matrix
    assert "kinship" not in without


def test_the_matrix_is_an_input_of_the_report():
    matrix = str(DATA / "kinship.tsv")
    assert paths.report_inputs(_config(matrix))["kinship"] == matrix
    assert "kinship" not in paths.report_inputs(_config(None))


def test_the_uncertainty_stage_writes_posterior_diagnostics():
    assert paths.STAGE_OUTPUTS["uncertainty"]["posterior_diagnostics"] == "uncertainty/posterior_diagnostics.tsv"
