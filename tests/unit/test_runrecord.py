"""The run record (run.json): its content, and the checks a replay makes before it runs anything."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys

import numpy
import pandas
import pytest
import scipy
from batchmix.io import InputError
from batchmix.pipeline import paths
from batchmix.pipeline.registry import run_stage
from batchmix.runrecord import (
    DEPENDENCIES,
    FORMAT,
    build_run_record,
    read_run_record,
    replay_config,
    verify_inputs,
    write_run_record,
)

# Small inputs with known bytes: the test hashes them itself.
COUNTS = b"gene_id\ts1\ts2\ts3\ts4\ng1\t10\t20\t30\t40\ng2\t5\t6\t7\t8\n"
SAMPLES = b"sample\tcondition\tbatch\ns1\ta\tx\ns2\tb\tx\ns3\ta\ty\ns4\tb\ty\n"
KINSHIP = b"sample\ts1\ts2\ts3\ts4\ns1\t1\t0\t0\t0\ns2\t0\t1\t0\t0\ns3\t0\t0\t1\t0\ns4\t0\t0\t0\t1\n"


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A working directory with the inputs under data/ (relative paths, as in a real config)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/counts.tsv").write_bytes(COUNTS)
    (tmp_path / "data/samples.tsv").write_bytes(SAMPLES)
    (tmp_path / "data/kinship.tsv").write_bytes(KINSHIP)
    return tmp_path


def config(**extra) -> dict:
    return {
        "expression": "data/counts.tsv",
        "samples": "data/samples.tsv",
        "input_type": "counts",
        "model": "~ condition + (1|batch)",
        "batch": "batch",
        **extra,
    }


def test_the_record_holds_the_resolved_config_the_inputs_and_the_versions(study):
    record = build_run_record(config(), command="batchmix run --config my.yaml")
    assert record["format"] == FORMAT == 1
    assert record["analysis"] is None
    assert record["command"] == "batchmix run --config my.yaml"
    assert record["inputs"] == {
        "expression": {"path": "data/counts.tsv", "bytes": len(COUNTS), "md5": hashlib.md5(COUNTS).hexdigest()},
        "samples": {"path": "data/samples.tsv", "bytes": len(SAMPLES), "md5": hashlib.md5(SAMPLES).hexdigest()},
    }
    assert record["inputs"]["expression"]["bytes"] == 46  # 20 + 15 + 11, counted by hand
    # defaults filled in: keys the config left out
    assert record["config"]["reml"] is True
    assert record["config"]["de"] == {"fdr": 0.05}
    assert record["config"]["simpson"]["enabled"] is True
    assert record["config"]["model"] == "~ condition + (1|batch)"
    assert record["workdir"] == str(study)
    assert record["batchmix"]["version"]
    git = record["batchmix"]["git"]
    assert git is None or (len(git["commit"]) == 40 and git["dirty"] in (True, False, None))
    assert set(record["dependencies"]) == {"python", *DEPENDENCIES}
    assert len(DEPENDENCIES) == 10
    # checked against the modules' own version attributes (the record reads the installed metadata)
    deps = record["dependencies"]
    assert deps["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert (deps["numpy"], deps["scipy"], deps["pandas"]) == (numpy.__version__, scipy.__version__, pandas.__version__)
    assert deps["anndata"] == (
        None if importlib.util.find_spec("anndata") is None else __import__("anndata").__version__
    )
    assert isinstance(deps["snakemake"], str) and deps["snakemake"].startswith("9.")
    assert record["created"].endswith("+00:00")
    json.dumps(record)  # serialisable as it is


def test_a_kinship_matrix_is_an_input_too(study):
    record = build_run_record(config(covariance={"kinship": "data/kinship.tsv"}))
    assert record["inputs"]["kinship"] == {
        "path": "data/kinship.tsv",
        "bytes": len(KINSHIP),
        "md5": hashlib.md5(KINSHIP).hexdigest(),
    }
    assert record["command"] is None


def test_one_analysis_of_a_config_with_analyses(study):
    whole = config(analyses={"random": {}, "fixed": {"model": "~ condition + batch", "reml": False}})
    record = build_run_record(whole, analysis="fixed")
    assert record["analysis"] == "fixed"
    assert record["config"]["model"] == "~ condition + batch" and record["config"]["reml"] is False
    assert "analyses" not in record["config"]
    with pytest.raises(InputError, match="'other' is not under analyses"):
        build_run_record(whole, analysis="other")


def test_a_missing_input_is_named_when_recording(study):
    os.remove("data/samples.tsv")
    with pytest.raises(InputError, match="data/samples.tsv: the samples input does not exist"):
        build_run_record(config())


def test_write_and_read_give_the_same_record(study):
    record = build_run_record(config())
    write_run_record("out/run.json", record)
    assert read_run_record("out/run.json") == record
    assert verify_inputs(record) == {"expression": "data/counts.tsv", "samples": "data/samples.tsv"}


def test_a_changed_input_is_refused_with_both_md5s(study):
    record = build_run_record(config())
    changed = COUNTS.replace(b"40", b"41")  # one byte
    (study / "data/counts.tsv").write_bytes(changed)
    with pytest.raises(InputError) as err:
        verify_inputs(record)
    message = str(err.value)
    assert message.startswith("data/counts.tsv: the expression input differs")
    assert hashlib.md5(COUNTS).hexdigest() in message and hashlib.md5(changed).hexdigest() in message
    assert "restore the original file" in message and "Nothing was written" in message


def test_a_changed_size_is_reported(study):
    record = build_run_record(config())
    (study / "data/samples.tsv").write_bytes(SAMPLES + b"s5\ta\tz\n")
    with pytest.raises(
        InputError, match=rf"data/samples.tsv: .*\({len(SAMPLES)} bytes\), now MD5 \w+ \({len(SAMPLES) + 7} bytes\)"
    ):
        verify_inputs(record)


def test_a_missing_input_is_refused(study):
    record = build_run_record(config())
    os.remove("data/counts.tsv")
    with pytest.raises(InputError, match="data/counts.tsv: the expression input of the run record is missing"):
        verify_inputs(record)


def test_relative_inputs_are_found_from_the_recorded_workdir(study, tmp_path_factory, monkeypatch):
    record = build_run_record(config())
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    located = verify_inputs(record)
    assert located["expression"] == str(study / "data/counts.tsv")
    replayed = replay_config(record, located)
    assert replayed["expression"] == str(study / "data/counts.tsv")
    assert replayed["model"] == record["config"]["model"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"format": 1, "config": {', "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b'{"format": 1}', "not a batchmix run record"),
        (b"[1, 2]", "not a batchmix run record"),
        (b'{"format": 99, "config": {}, "inputs": {}}', "format 99; this batchmix reads format 1"),
    ],
)
def test_a_corrupt_record_is_refused(tmp_path, content, expected):
    (tmp_path / "run.json").write_bytes(content)
    with pytest.raises(InputError, match=expected) as err:
        read_run_record(tmp_path / "run.json")
    assert str(err.value).startswith(f"{tmp_path / 'run.json'}: ")


def test_a_missing_record_is_refused(tmp_path):
    with pytest.raises(InputError, match="the run record does not exist"):
        read_run_record(tmp_path / "run.json")


def test_the_stage_writes_run_json_under_the_outdir(study, monkeypatch):
    monkeypatch.setenv("BATCHMIX_COMMAND", "snakemake --cores 2")
    cfg = config()
    outputs = paths.stage_outputs("run_record", cfg, outdir="res")
    assert outputs == {"record": "res/run.json"}
    inputs = paths.stage_inputs("run_record", cfg, outdir="res")
    assert inputs == {"expression": "data/counts.tsv", "samples": "data/samples.tsv", "report": "res/report.html"}
    counts = run_stage("run_record", cfg, inputs, outputs, {"analysis": None}, console=False)
    assert counts == {"inputs": 2}
    record = json.loads((study / "res/run.json").read_text())
    # without a command parameter, the one the Snakemake main process left in the environment
    assert record["command"] == "snakemake --cores 2"
    assert record["inputs"]["samples"]["md5"] == hashlib.md5(SAMPLES).hexdigest()
    run_stage("run_record", cfg, inputs, outputs, {"command": "batchmix run"}, console=False)
    assert json.loads((study / "res/run.json").read_text())["command"] == "batchmix run"
