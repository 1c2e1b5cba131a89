"""The stabilise stage's numpy shortcuts give the doubles of the pandas and NaN-aware numpy calls they replace."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from batchmix.config import validate_config
from batchmix.io import InputError
from batchmix.pipeline import paths, stabilise
from batchmix.pipeline.registry import run_stage
from batchmix.pipeline.stabilise import ChunkedVST
from batchmix.pipeline.validate import load_validated

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "workflow" / "data"


def _bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).view(np.uint64)


def _counts(order: str) -> pd.DataFrame:
    """Counts with a wide range (so that sums round), genes × samples in the given memory order."""
    rng = np.random.default_rng(7)
    values = rng.negative_binomial(2, rng.uniform(0.001, 0.5, size=(300, 1)), size=(300, 37)).astype(float)
    values = np.asarray(values, order=order)
    frame = pd.DataFrame(values, index=[f"g{i}" for i in range(300)], columns=[f"s{j}" for j in range(37)], copy=False)
    assert frame.to_numpy().flags[f"{order}_CONTIGUOUS"]
    return frame


@pytest.mark.parametrize("order", ["F", "C"])
def test_row_mean_and_sd_are_numpys_nan_functions_bit_for_bit(order):
    values = np.log2(_counts(order).to_numpy() / 3.7 + 1.0)
    mean, sd = stabilise.row_mean_sd(values)
    np.testing.assert_array_equal(_bits(mean), _bits(np.nanmean(values, axis=1)))
    np.testing.assert_array_equal(_bits(sd), _bits(np.nanstd(values, axis=1, ddof=1)))


def test_rows_with_missing_values_take_the_nan_functions():
    values = np.log2(_counts("F").to_numpy() + 1.0)
    values[3, 5] = np.nan
    mean, sd = stabilise.row_mean_sd(values)
    assert np.isfinite(mean[3]) and np.isfinite(sd[3])
    np.testing.assert_array_equal(_bits(mean), _bits(np.nanmean(values, axis=1)))
    np.testing.assert_array_equal(_bits(sd), _bits(np.nanstd(values, axis=1, ddof=1)))


@pytest.mark.parametrize("order", ["F", "C"])
def test_count_summaries_are_the_pandas_numbers(order):
    counts = _counts(order)
    sf = np.random.default_rng(3).uniform(0.5, 2.0, counts.shape[1])
    summaries = stabilise.summarise_counts(counts, sf, {"min_count": 10, "min_samples": 3}, block_genes=64)
    # what the stage computed with pandas before: block / sf, its row means, log2(. + 1) of the kept genes
    normalised = counts / sf
    np.testing.assert_array_equal(_bits(summaries.base_mean), _bits(normalised.mean(axis=1)))
    keep = (counts.to_numpy() >= 10).sum(axis=1) >= 3
    assert 0 < keep.sum() < len(keep)
    assert summaries.status.tolist() == ["ok" if k else "filtered:low_counts" for k in keep]
    before = np.log2(normalised + 1.0).loc[keep].to_numpy()
    np.testing.assert_array_equal(np.concatenate(summaries.before.positions), np.flatnonzero(keep))
    np.testing.assert_array_equal(_bits(np.concatenate(summaries.before.mean)), _bits(np.nanmean(before, axis=1)))
    np.testing.assert_array_equal(_bits(np.concatenate(summaries.before.sd)), _bits(np.nanstd(before, axis=1, ddof=1)))
    assert (summaries.n_observed == counts.shape[1]).all()


@pytest.mark.parametrize("order", ["F", "C"])
def test_the_transform_is_column_major_with_the_same_values(order):
    counts = _counts(order)
    model = ChunkedVST(nsub=None, fit_type="mean").fit(counts)
    values = model.transform(counts).to_numpy()
    assert values.flags.f_contiguous
    # the closed form of the mean trend, written out as numpy on the transposed copy the stage used to make
    alpha = model.coefficients["mean"]
    yt = np.ascontiguousarray(counts.to_numpy().T)
    expected = (
        2 * np.arcsinh(np.sqrt(alpha * (yt / model.size_factors.to_numpy()[:, None]))) - np.log(alpha)
    ) - np.log(4)
    np.testing.assert_array_equal(_bits(values.T), _bits(expected / np.log(2)))


def test_the_size_factors_are_handed_on_before_the_trend():
    counts = _counts("F")
    model = ChunkedVST(nsub=None)
    seen = []
    model.fit(counts, size_factors_ready=lambda sf: seen.append((sf.copy(), hasattr(model, "trend"))))
    assert len(seen) == 1
    assert not seen[0][1]  # called before the trend was fitted
    np.testing.assert_array_equal(_bits(seen[0][0]), _bits(model.size_factors.to_numpy()))


def _config(run_dir: Path) -> dict:
    shutil.copytree(FIXTURE, run_dir / "data")
    config = validate_config(yaml.safe_load((REPO / "tests" / "workflow" / "config.yaml").read_text()))
    config["expression"] = str(run_dir / "data" / "counts.tsv")
    config["samples"] = str(run_dir / "data" / "samples.tsv")
    return config


def test_one_and_two_threads_write_the_same_bytes(tmp_path):
    config = _config(tmp_path)
    for threads in (1, 2):
        outdir = tmp_path / f"threads{threads}"
        inputs = paths.stage_inputs("stabilise", config, outdir=str(outdir))
        outputs = paths.stage_outputs("stabilise", config, outdir=str(outdir))
        run_stage("stabilise", config, inputs, outputs, {"threads": threads}, console=False)
    for relative in ["vst/gene_status.tsv", "vst/mean_sd.tsv", "vst/size_factors.tsv", "vst/info.json"]:
        assert (tmp_path / "threads2" / relative).read_bytes() == (tmp_path / "threads1" / relative).read_bytes()
    one = pd.read_parquet(tmp_path / "threads1" / "vst" / "expression.parquet")
    two = pd.read_parquet(tmp_path / "threads2" / "vst" / "expression.parquet")
    assert one.index.tolist() == two.index.tolist()
    np.testing.assert_array_equal(_bits(one.to_numpy()), _bits(two.to_numpy()))


def test_two_threads_give_the_size_factors_of_one(monkeypatch):
    counts = _counts("F") + 1  # every gene positive in every sample
    one = ChunkedVST(nsub=None).fit(counts).size_factors.to_numpy()
    monkeypatch.setattr(stabilise, "_THREADED_SIZE_FACTOR_VALUES", 0)
    seen = []
    two = ChunkedVST(nsub=None, threads=2).fit(counts, size_factors_ready=seen.append).size_factors.to_numpy()
    np.testing.assert_array_equal(_bits(two), _bits(one))
    np.testing.assert_array_equal(_bits(seen[0]), _bits(one))


def test_a_design_that_cannot_be_fitted_is_refused_before_anything_is_written(tmp_path):
    config = _config(tmp_path)
    config["model"] = "~ Infection + Batch + (1|Batch)"  # the batch both fixed and random
    with pytest.raises(InputError) as expected:
        load_validated(config)  # the main process's check
    outdir = tmp_path / "out"
    inputs = paths.stage_inputs("stabilise", config, outdir=str(outdir))
    outputs = paths.stage_outputs("stabilise", config, outdir=str(outdir))
    with pytest.raises(InputError) as refused:
        stabilise.stabilise_stage(config, inputs, outputs, {"threads": 2})
    assert str(refused.value) == str(expected.value)
    assert not (outdir / "vst").exists()
