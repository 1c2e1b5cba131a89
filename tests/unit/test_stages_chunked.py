"""Stages cut into blocks and chunks give the numbers of the single pass; no gene is lost when none is fitted."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from batchmix import vst as vst_mod
from batchmix.config import validate_config
from batchmix.io import read_matrix, read_result_table, write_table
from batchmix.pipeline import lmm as pipeline_lmm
from batchmix.pipeline import paths, stabilise
from batchmix.pipeline.registry import run_stage
from batchmix.pipeline.stabilise import ChunkedVST

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "workflow" / "data"


def _counts(path: Path, dtype: str = "int64") -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", index_col=0).astype(dtype)


@pytest.mark.parametrize("dtype", ["int64", "float64"])
@pytest.mark.parametrize(
    ("counts_path", "nsub"),
    [(FIXTURE / "counts.tsv", None), (REPO / "resources" / "example" / "counts.tsv.gz", 1000)],
    ids=["fixture", "embedded_default"],
)
@pytest.mark.parametrize("fit_type", ["parametric", "mean"])
def test_the_vst_in_blocks_equals_the_single_pass_bit_for_bit(counts_path, nsub, fit_type, dtype):
    counts = _counts(counts_path, dtype)
    single = vst_mod.vst(counts, fit_type=fit_type, nsub=nsub)
    block = 997  # not a divisor of anything: uneven last blocks
    model = ChunkedVST(fit_type=fit_type, nsub=nsub, block_genes=block).fit(counts)
    assert model.whole is None  # the blocked path ran, not the fallback
    values = pd.concat([model.transform(counts.iloc[g : g + block], start=g) for g in range(0, len(counts), block)])
    np.testing.assert_array_equal(model.size_factors.to_numpy(), single.size_factors.to_numpy())
    assert model.coefficients == single.coefficients and model.used_nsub == single.nsub
    np.testing.assert_array_equal(values.to_numpy(), single.values.to_numpy())


def test_the_local_trend_runs_on_the_whole_table():
    counts = _counts(FIXTURE / "counts.tsv")
    model = ChunkedVST(fit_type="local", nsub=None, block_genes=50).fit(counts)
    single = vst_mod.vst(counts, fit_type="local", nsub=None)
    assert model.whole is not None
    np.testing.assert_array_equal(model.transform(counts.iloc[50:120], start=50), single.values.iloc[50:120])


def _config(run_dir: Path, **changes) -> dict:
    shutil.copytree(FIXTURE, run_dir / "data")
    config = yaml.safe_load((REPO / "tests" / "workflow" / "config.yaml").read_text())
    config.update(changes)
    config = validate_config(config)
    config["expression"] = str(run_dir / "data" / "counts.tsv")
    config["samples"] = str(run_dir / "data" / "samples.tsv")
    return config


def _run(stage: str, config: dict, outdir: Path, **where) -> dict:
    inputs = paths.stage_inputs(stage, config, outdir=str(outdir), **where)
    outputs = paths.stage_outputs(stage, config, outdir=str(outdir), **where)
    return run_stage(stage, config, inputs, outputs, {"threads": 1}, console=False)


def _run_lmm(config: dict, outdir: Path, n_chunks: int) -> None:
    _run("split_genes", config, outdir, n_chunks=n_chunks)
    for item in paths.scatteritems(n_chunks):
        _run("lmm_chunk", config, outdir, scatteritem=item)
    _run("gather_lmm", config, outdir, n_chunks=n_chunks)


def test_stabilise_blocks_and_lmm_chunks_do_not_change_a_byte(tmp_path, monkeypatch):
    # fit blocks of 50 genes, so that the fixture's 200 genes make 3 chunks that are not empty (chunks
    # hold whole blocks: batchmix.pipeline.lmm.chunk_ranges)
    monkeypatch.setattr(pipeline_lmm, "FIT_BLOCK_GENES", 50)
    config = _config(tmp_path)
    one, many = tmp_path / "one", tmp_path / "many"
    _run("stabilise", config, one)
    _run_lmm(config, one, n_chunks=1)
    monkeypatch.setattr(stabilise, "WRITE_BLOCK_GENES", 23)
    _run("stabilise", config, many)
    _run_lmm(config, many, n_chunks=3)
    for relative in ["vst/gene_status.tsv", "vst/mean_sd.tsv", "vst/size_factors.tsv", "vst/info.json",
                     "lmm/gene_fits.tsv", "lmm/blups.tsv", "lmm/fixed_vcov.tsv"]:  # fmt: skip
        assert (many / relative).read_bytes() == (one / relative).read_bytes(), relative
    for relative in ["vst/expression.parquet", "corrected/expression.parquet"]:
        np.testing.assert_array_equal(read_matrix(many / relative), read_matrix(one / relative))
    # and the single-pass statistics of the whole table, computed here without the stage
    counts = _counts(FIXTURE / "counts.tsv", "float64")
    single = vst_mod.vst(counts, nsub=None)
    assert json.loads((one / "vst/info.json").read_text())["vst_coefficients"] == single.coefficients
    stabilised = read_matrix(one / "vst/expression.parquet")
    np.testing.assert_allclose(stabilised.to_numpy(), single.values.to_numpy(), rtol=5e-12, atol=0)
    mean_sd = read_result_table(one / "vst/mean_sd.tsv")
    status = read_result_table(one / "vst/gene_status.tsv")
    ok = status["status"].eq("ok").to_numpy()
    expected_after = vst_mod.mean_sd(single.values.loc[ok])
    after = mean_sd[mean_sd["scale"] == "after"]
    assert after["gene_id"].tolist() == expected_after["gene_id"].tolist()
    np.testing.assert_allclose(after["running_median_sd"], expected_after["running_median_sd"], rtol=1e-11)


def test_a_run_where_no_gene_can_be_fitted_keeps_every_gene_with_its_status(tmp_path, caplog):
    config = _config(tmp_path, filter={"min_count": 10**9, "min_samples": 3})
    out = tmp_path / "results"
    _run("stabilise", config, out)
    with caplog.at_level(logging.WARNING, logger="batchmix.pipeline.lmm"):
        _run_lmm(config, out, n_chunks=2)
    fits = read_result_table(out / "lmm/gene_fits.tsv")
    genes = pd.read_csv(FIXTURE / "counts.tsv", sep="\t", usecols=[0], dtype=str).iloc[:, 0].tolist()
    assert fits["gene_id"].tolist() == genes
    assert set(fits["status"]) == {"filtered:low_counts"}
    assert read_result_table(out / "lmm/blups.tsv").empty
    assert "no gene could be fitted" in caplog.text
    assert json.loads((out / "lmm/model.json").read_text())["formula"] == config["model"]


def test_the_matrix_formats_hold_the_same_numbers_and_text_is_the_old_bytes(tmp_path):
    runs = {}
    for fmt in ("parquet", "tsv.gz", "h5ad"):
        config = _config(tmp_path / fmt, outputs={"matrices": fmt})
        out = tmp_path / fmt / "results"
        _run("stabilise", config, out)
        _run_lmm(config, out, n_chunks=2)
        runs[fmt] = out
    suffix = {"parquet": ".parquet", "tsv.gz": ".tsv.gz", "h5ad": ".h5ad"}
    for name in ("vst/expression", "corrected/expression"):
        reference = read_matrix(runs["parquet"] / f"{name}.parquet")
        for fmt, out in runs.items():
            other = read_matrix(out / f"{name}{suffix[fmt]}")
            assert other.index.tolist() == reference.index.tolist()
            np.testing.assert_array_equal(other.to_numpy(), reference.to_numpy())
        # the text option writes what batchmix.io.write_table writes for the same matrix
        write_table(reference, tmp_path / "reference.tsv.gz", index=True)
        assert (runs["tsv.gz"] / f"{name}.tsv.gz").read_bytes() == (tmp_path / "reference.tsv.gz").read_bytes()
    for fmt in ("tsv.gz", "h5ad"):
        assert (runs[fmt] / "lmm/gene_fits.tsv").read_bytes() == (runs["parquet"] / "lmm/gene_fits.tsv").read_bytes()


@pytest.mark.parametrize(
    "table",
    [
        pd.DataFrame(
            {
                "gene_id": ["007", "007", "NA", "NA", "1e5"],
                "group": "Batch",
                "level": ["b1", "b2", "b1", "b2", "b1"],
                "term": "(Intercept)",
                "value": [0.5, -0.0, np.nan, 1e-300, 123456789.0123456],
            }
        ),
        pd.DataFrame({"gene_id": ["g1", "g2"], "level": ["a\tb", "c"], "value": [1.0, 2.0]}),  # quoted by pandas
        pd.DataFrame({"gene_id": ["g1", None], "value": [1.0, 2.0]}),  # a missing text
        pd.DataFrame(columns=["gene_id", "group", "level", "term", "value"]),
    ],
    ids=["plain", "tab_in_text", "missing_text", "empty"],
)
def test_long_tables_are_written_as_write_table_writes_them(tmp_path, table):
    from batchmix.pipeline.lmm import write_long_table

    write_table(table, tmp_path / "expected.tsv")
    write_long_table(table, tmp_path / "got.tsv")
    assert (tmp_path / "got.tsv").read_bytes() == (tmp_path / "expected.tsv").read_bytes()
