"""The stage registry, its logging and run records, and the one definition of every output path."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
from batchmix.io import InputError
from batchmix.pipeline import paths
from batchmix.pipeline.logs import read_run_records
from batchmix.pipeline.registry import STAGES, Stage, run_stage

CONFIG = {
    "expression": "data/counts.tsv",
    "samples": "data/samples.tsv",
    "model": "~ Infection + (1|Batch)",
    "batch": "Batch",
    "simpson": {"enabled": True},
    "uncertainty": {"bootstrap": 0, "bayes": False},
}


def test_the_registry_holds_every_stage_of_the_workflow():
    assert list(STAGES) == [
        "validate", "stabilise", "split_genes", "lmm_chunk", "gather_lmm", "design", "de", "diagnostics", "summary",
        "simpson_prepare", "simpson_block", "simpson_null", "simpson", "uncertainty", "report", "compare", "index",
        "run_record",
    ]  # fmt: skip
    assert [name for name, stage in STAGES.items() if stage.per_chunk] == ["lmm_chunk", "simpson_block", "simpson_null"]
    # compare and index take the whole config (all analyses); their paths are paths.COMPARE_OUTPUTS
    assert [name for name, stage in STAGES.items() if stage.whole_config] == ["compare", "index"]
    assert set(paths.STAGE_OUTPUTS) == {name for name, stage in STAGES.items() if not stage.whole_config}


def test_paths_are_relative_to_the_outdir_and_follow_the_config():
    out = paths.stage_outputs("gather_lmm", CONFIG, outdir="/tmp/x/")
    assert out == {
        "gene_fits": "/tmp/x/lmm/gene_fits.tsv",
        "blups": "/tmp/x/lmm/blups.tsv",
        "fixed_vcov": "/tmp/x/lmm/fixed_vcov.tsv",
        "model": "/tmp/x/lmm/model.json",
        "corrected": "/tmp/x/corrected/expression.parquet",
    }
    as_text = dict(CONFIG, outputs={"matrices": "tsv.gz"})
    assert paths.stage_outputs("gather_lmm", as_text)["corrected"] == "results/corrected/expression.tsv.gz"
    assert paths.stage_outputs("stabilise", dict(CONFIG, outputs={"matrices": "h5ad"}))["expression"] == (
        "results/vst/expression.h5ad"
    )
    fixed_batch = dict(CONFIG, model="~ Infection + Batch")
    assert "corrected" not in paths.stage_outputs("gather_lmm", fixed_batch)
    assert paths.stage_outputs("lmm_chunk", CONFIG, scatteritem="2-of-3")["fixed_vcov"] == (
        "results/lmm/chunks/2-of-3.fixed_vcov.tsv"
    )
    assert paths.stage_outputs("split_genes", CONFIG, n_chunks=2)["chunks"] == [
        "results/lmm/chunks/1-of-2.genes.json",
        "results/lmm/chunks/2-of-2.genes.json",
    ]
    # a chunk job reads its gene range and the stabilised matrix itself (its row groups), no copy
    chunk_inputs = paths.stage_inputs("lmm_chunk", CONFIG, scatteritem="2-of-3")
    assert chunk_inputs["genes"] == "results/lmm/chunks/2-of-3.genes.json"
    assert chunk_inputs["expression"] == "results/vst/expression.parquet"
    gather = paths.stage_inputs("gather_lmm", fixed_batch, n_chunks=2)
    assert gather["fits"] == ["results/lmm/chunks/1-of-2.fits.parquet", "results/lmm/chunks/2-of-2.fits.parquet"]
    assert gather["corrected"] == [] and gather["samples"] == "data/samples.tsv"
    assert paths.log_path("lmm_chunk", scatteritem="1-of-2") == "results/logs/lmm_chunk/1-of-2.log"
    assert paths.warnings_path("simpson") == "results/logs/simpson.warnings.json"


def test_report_inputs_follow_the_config():
    inputs = paths.report_inputs(CONFIG)
    assert inputs["model"] == "results/lmm/model.json" and inputs["fixed_vcov"] == "results/lmm/fixed_vcov.tsv"
    assert inputs["reversals"] == "results/simpson/reversals.tsv" and "uncertainty_summary" not in inputs
    off = paths.report_inputs(dict(CONFIG, simpson={"enabled": False}, uncertainty={"bootstrap": 10, "bayes": False}))
    assert "reversals" not in off and off["uncertainty_figures"] == "results/uncertainty/figures"


def _noisy_stage(config, inputs, outputs, params):
    logging.getLogger("batchmix.test").info("working on %s", inputs["table"])
    for _ in range(3):
        warnings.warn("a column was dropped", UserWarning, stacklevel=1)
    logging.getLogger("batchmix.test").warning("two genes have no variance")
    if params.get("fail"):
        raise InputError("data/x.tsv: bad")
    return {"genes": 7}


def test_run_stage_logs_to_file_and_console_and_records_warnings(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(STAGES, "noisy", Stage("noisy", _noisy_stage, "a test stage"))
    log, record = tmp_path / "logs/noisy.log", tmp_path / "logs/noisy.warnings.json"
    counts = run_stage("noisy", {}, {"table": "t.tsv"}, {}, {}, log_path=str(log), record_path=str(record))
    assert counts == {"genes": 7}
    text = log.read_text()
    for expected in ("stage noisy: start", "working on t.tsv", "a column was dropped", "two genes have no variance",
                     "stage noisy: done in", "genes=7"):  # fmt: skip
        assert expected in text, expected
    assert "working on t.tsv" in capsys.readouterr().err
    written = json.loads(record.read_text())
    assert written["stage"] == "noisy" and written["status"] == "ok" and written["counts"] == {"genes": 7}
    by_source = {w["source"]: w for w in written["warnings"]}
    assert by_source["warning"]["category"] == "UserWarning" and by_source["warning"]["count"] == 3
    assert by_source["warning"]["message"] == "a column was dropped"
    assert by_source["log"] == {"source": "log", "category": "WARNING", "message": "two genes have no variance",
                                "where": "batchmix.test", "count": 1}  # fmt: skip
    assert read_run_records(tmp_path / "logs") == [written]
    # logging is back as it was: nothing more reaches the log file
    logging.getLogger("batchmix.test").warning("after the stage")
    assert "after the stage" not in log.read_text()


def test_a_failing_stage_is_recorded_and_raised(tmp_path, monkeypatch):
    monkeypatch.setitem(STAGES, "noisy", Stage("noisy", _noisy_stage, "a test stage"))
    record = tmp_path / "noisy.warnings.json"
    with pytest.raises(InputError, match="bad"):
        run_stage("noisy", {}, {"table": "t"}, {}, {"fail": True}, record_path=str(record), console=False)
    written = json.loads(record.read_text())
    assert written["status"] == "failed" and written["error"] == "InputError: data/x.tsv: bad"


def test_unknown_stages_are_named():
    with pytest.raises(KeyError, match="the stages are validate, stabilise"):
        run_stage("nope", {}, {}, {})
    with pytest.raises(KeyError, match="unknown stage 'nope'"):
        paths.stage_outputs("nope", CONFIG)


def test_chunk_counts_come_from_an_integer_or_a_mapping_per_stage():
    assert paths.chunk_count({"chunks": 6}) == 6 and paths.chunk_count({"chunks": 6}, "simpson") == 1
    per_stage = {"chunks": {"lmm": 8, "simpson": 3}}
    assert paths.chunk_count(per_stage) == 8 and paths.chunk_count(per_stage, "simpson") == 3
    assert paths.chunk_count({"chunks": {"simpson": 2}}) == 4  # the schema's default for the LMM
