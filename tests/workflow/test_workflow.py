"""The workflow end to end on the tiny fixture: outputs, nothing lost, up to date, lint, report archive."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import yaml
from batchmix.io import read_matrix
from conftest import REPO, SNAKEMAKE, make_run_dir, result_files, run_snakemake


def test_run_writes_every_output(fixture_run):
    files = set(result_files(fixture_run))
    expected = {
        "results/vst/expression.parquet",
        "results/vst/size_factors.tsv",
        "results/vst/gene_status.tsv",
        "results/vst/mean_sd.tsv",
        "results/vst/info.json",
        "results/lmm/gene_fits.tsv",
        "results/lmm/blups.tsv",
        "results/lmm/fixed_vcov.tsv",
        "results/lmm/model.json",
        "results/corrected/expression.parquet",
        "results/simpson/reversals.tsv",
        "results/simpson/summary.json",
        "results/simpson/top_pairs.png",
        "results/report.html",
    }
    assert expected <= files, sorted(expected - files)


def test_every_input_gene_has_one_row_with_a_status(fixture_run):
    counts = pd.read_csv(fixture_run / "data/counts.tsv", sep="\t", index_col=0)
    fits = pd.read_csv(fixture_run / "results/lmm/gene_fits.tsv", sep="\t")
    assert list(fits["gene_id"]) == list(counts.index)
    assert fits["status"].notna().all()
    allowed = ("ok", "singular", "filtered:", "failed:")
    assert all(s.startswith(allowed) for s in fits["status"])
    # The all-zero and low-count genes of the fixture are filtered, not dropped.
    zero = counts.index[counts.sum(axis=1) == 0]
    assert len(zero) == 3
    assert (fits.set_index("gene_id").loc[zero, "status"] == "filtered:low_counts").all()
    fitted = fits[fits["status"].isin(["ok", "singular"])]
    assert len(fitted) >= 180
    assert fitted["loglik"].notna().all() and fitted["var_residual"].gt(0).all()


def test_stabilised_and_corrected_tables_cover_all_genes(fixture_run):
    counts = pd.read_csv(fixture_run / "data/counts.tsv", sep="\t", index_col=0)
    vst = read_matrix(fixture_run / "results/vst/expression.parquet")
    corrected = read_matrix(fixture_run / "results/corrected/expression.parquet")
    assert list(vst.index) == list(counts.index) == list(corrected.index)
    assert list(vst.columns) == list(counts.columns) == list(corrected.columns)
    sf = pd.read_csv(fixture_run / "results/vst/size_factors.tsv", sep="\t")
    assert list(sf["sample_id"]) == list(counts.columns)
    info = json.loads((fixture_run / "results/vst/info.json").read_text())
    assert info["vst_fit_type_used"] in {"parametric", "local", "mean"}
    assert info["n_genes"] == len(counts)


def test_batch_correction_removes_the_batch_means(fixture_run):
    """After subtracting the batch BLUPs, per-batch means of a fitted gene move towards each other."""
    vst = read_matrix(fixture_run / "results/vst/expression.parquet")
    corrected = read_matrix(fixture_run / "results/corrected/expression.parquet")
    samples = pd.read_csv(fixture_run / "data/samples.tsv", sep="\t", index_col=0)
    fits = pd.read_csv(fixture_run / "results/lmm/gene_fits.tsv", sep="\t").set_index("gene_id")
    genes = fits.index[(fits["status"] == "ok") & (fits["frac_Batch"] > 0.3)]
    assert len(genes) >= 5
    spread_before = vst.loc[genes].T.groupby(samples["Batch"]).mean().std()
    spread_after = corrected.loc[genes].T.groupby(samples["Batch"]).mean().std()
    assert (spread_after < spread_before).all()


def test_second_run_has_nothing_to_do(fixture_run):
    proc = run_snakemake(fixture_run, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_snakemake_report_archive(fixture_run):
    proc = run_snakemake(fixture_run, "--report", "report.zip")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (fixture_run / "report.zip").stat().st_size > 10_000


@pytest.mark.parametrize("configfile", [[], ["--configfile", "config/study.yaml"]], ids=["default", "study"])
def test_lint_reports_nothing_on_the_repository(configfile):
    proc = subprocess.run(
        [str(SNAKEMAKE), "--lint", "--nocolor", *configfile], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Lints for" not in out, out


def test_model_without_random_term_runs_without_a_corrected_table(tmp_path):
    """A fixed-effects-only model is fitted by OLS per gene; there is no batch correction to write."""
    run_dir = make_run_dir(tmp_path / "run")
    config = yaml.safe_load((run_dir / "fixture.yaml").read_text())
    config.update({"model": "~ Infection + Batch", "simpson": {"enabled": False}})
    (run_dir / "fixture.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(run_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = set(result_files(run_dir))
    assert "results/corrected/expression.parquet" not in files
    assert {"results/lmm/gene_fits.tsv", "results/report.html"} <= files
    fits = pd.read_csv(run_dir / "results/lmm/gene_fits.tsv", sep="\t")
    fitted = fits[fits["status"] == "ok"]
    assert len(fitted) >= 180 and (fitted["loglik"] == fitted["ols_loglik"]).all()
    assert "frac_Batch" in fits.columns and "var_Batch" not in fits.columns


def test_every_job_leaves_a_log_and_a_run_record(fixture_run):
    """Each job logs to its file and writes its JSON run record (status, time, counts, warnings)."""
    logs = fixture_run / "results/logs"
    jobs = [
        "stabilise",
        "split_genes",
        "lmm_chunk/1-of-3",
        "lmm_chunk/2-of-3",
        "lmm_chunk/3-of-3",
        "gather_lmm",
        "simpson",
        "report",
    ]
    for job in jobs:
        log = (logs / f"{job}.log").read_text()
        assert "start" in log and "done in" in log, job
        record = json.loads((logs / f"{job}.warnings.json").read_text())
        assert record["stage"] == job.split("/")[0] and record["status"] == "ok", record
        assert record["seconds"] >= 0 and isinstance(record["warnings"], list)
    gather = json.loads((logs / "gather_lmm.warnings.json").read_text())
    fits = pd.read_csv(fixture_run / "results/lmm/gene_fits.tsv", sep="\t")
    assert gather["counts"]["genes"] == len(fits) == 200
    # chunks hold whole 2,000-gene fit blocks: the fixture's 200 genes are chunk 1's, chunks 2 and 3 are
    # empty jobs that still log and record
    first = json.loads((logs / "lmm_chunk/1-of-3.warnings.json").read_text())
    chunk = json.loads((logs / "lmm_chunk/2-of-3.warnings.json").read_text())
    assert first["job"] == "1-of-3" and first["counts"]["genes"] == 200
    assert chunk["job"] == "2-of-3" and chunk["counts"]["genes"] == 0
