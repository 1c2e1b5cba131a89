"""The scattered Simpson scan of the workflow (block-pair jobs, one job per sign-flip replicate, the
gather) gives exactly what one call of ``batchmix.simpson.scan`` gives on the same stabilised matrix."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from batchmix import simpson
from batchmix.io import batch_labels, read_matrix, read_result_table, read_samples
from conftest import make_run_dir, run_snakemake

# Small blocks spread over three jobs: 191 scanned genes make 12 blocks and 78 block pairs.
SIMPSON = {"genes": "all", "fdr": 0.05, "block_size": 16, "jobs": 3, "n_replicates": 2, "seed": 7}


def _write_config(run_dir, **simpson_settings):
    config = yaml.safe_load((run_dir / "fixture.yaml").read_text())
    config["simpson"] = {**config.get("simpson", {}), **simpson_settings}
    (run_dir / "fixture.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def scattered_run(tmp_path_factory):
    run_dir = make_run_dir(tmp_path_factory.mktemp("simpson_scatter"))
    _write_config(run_dir, **SIMPSON)
    proc = run_snakemake(run_dir, "simpson")
    assert proc.returncode == 0, proc.stderr[-6000:]
    return run_dir


def _zero_value(info: dict) -> float:
    # DESeq2's parametric VST of a normalised count q = 0:
    # log2((1 + a1 + 2 a0 q + 2 sqrt(a0 q (1 + a1 + a0 q))) / (4 a0)) = log2((1 + a1) / (4 a0))
    a0, a1 = info["vst_coefficients"]["a0"], info["vst_coefficients"]["a1"]
    return math.log2((1.0 + a1) / (4.0 * a0))


def _single_scan_inputs(run_dir):
    results = run_dir / "results"
    expression = read_matrix(results / "vst/expression.parquet")
    status = read_result_table(results / "vst/gene_status.tsv").set_index("gene_id")["status"]
    expression = expression.loc[(status.reindex(expression.index) == "ok").to_numpy()]
    samples = read_samples(run_dir / "data/samples.tsv").loc[expression.columns]
    info = json.loads((results / "vst/info.json").read_text())
    return expression, batch_labels(samples, "Batch"), _zero_value(info)


def test_scattered_scan_equals_the_single_scan(scattered_run):
    expression, batch, zero_value = _single_scan_inputs(scattered_run)
    expected = simpson.scan(expression, batch, fdr=0.05, zero_value=zero_value).reversals
    assert len(expected) > 0  # the fixture holds the CCL2 / ALDH3B1 reversal and others
    got = read_result_table(scattered_run / "results/simpson/reversals.tsv")
    assert list(got["gene_a"]) == list(expected["gene_a"]) and list(got["gene_b"]) == list(expected["gene_b"])
    for column in ("r_pooled", "r_within", "p", "q", "mu_r", "tau2", "i2"):
        np.testing.assert_allclose(got[column].to_numpy(float), expected[column].to_numpy(float), rtol=1e-9)
    for column in ("k_usable", "n_agree"):
        assert list(got[column]) == list(expected[column])
    assert list(got["per_batch_r"]) == list(expected["per_batch_r"])
    # sorted by p, then by consistency
    order = got.sort_values(["p", "n_agree"], ascending=[True, False], kind="stable").index
    assert list(order) == list(got.index)
    summary = json.loads((scattered_run / "results/simpson/summary.json").read_text())
    assert summary["n_reversals"] == len(expected)
    assert summary["n_pairs"] == len(expression) * (len(expression) - 1) // 2
    assert summary["within_test"] == "random_effects" and summary["min_batches"] == 3
    assert summary["zero_value"] == pytest.approx(zero_value, rel=1e-12)


def test_each_replicate_is_its_own_job_and_reaches_the_summary(scattered_run):
    expression, batch, zero_value = _single_scan_inputs(scattered_run)
    data = simpson.prepare(expression, batch, zero_value=zero_value)
    expected = [simpson.sign_flip_replicate(data, r, seed=7) for r in range(2)]
    calibration = json.loads((scattered_run / "results/simpson/summary.json").read_text())["calibration"]
    assert calibration["method"] == "sign_flip" and calibration["replicates"] == 2
    assert calibration["flagged_null"] == expected
    flagged = json.loads((scattered_run / "results/simpson/summary.json").read_text())["n_reversals"]
    assert calibration["empirical_fdr"] == pytest.approx(np.mean(expected) / max(flagged, 1))
    logs = scattered_run / "results/logs"
    for job in ("simpson_block/1-of-3", "simpson_block/3-of-3", "simpson_null/1-of-2", "simpson_null/2-of-2"):
        assert (logs / f"{job}.warnings.json").exists(), job
    # the per-job files are temporary: the gather holds what they found
    assert not list((scattered_run / "results/simpson").glob("blocks/*.tsv"))


def test_lurking_factor_columns_in_the_table(scattered_run):
    # Celltype is nested in the fixture's four series (Series1 NHBE, Series2 and Series5 A549, Series7
    # Calu3): three levels for four batches, a lurking factor, as is the Instrument (two kits);
    # Infection varies inside every series
    got = read_result_table(scattered_run / "results/simpson/reversals.tsv")
    summary = json.loads((scattered_run / "results/simpson/summary.json").read_text())
    assert summary["lurking"]["nested"] == ["Celltype", "Instrument"]
    assert summary["lurking"]["factors"]["Celltype"]["levels"] == ["A549", "Calu3", "NHBE"]
    assert "share_Celltype" in got.columns and got["share_Celltype"].notna().all()


def test_min_batches_above_the_batches_stops_the_run_before_any_job(tmp_path):
    run_dir = make_run_dir(tmp_path / "too_many")
    _write_config(run_dir, min_batches=5)  # the fixture has 4 batches
    proc = run_snakemake(run_dir, "-n")
    assert proc.returncode != 0
    assert "simpson.min_batches is 5 but the sample sheet has 4 batches" in proc.stderr + proc.stdout
    assert not (run_dir / "results/vst").exists()
