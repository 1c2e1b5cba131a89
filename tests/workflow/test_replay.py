"""``batchmix replay``: a run record (run.json) reruns its analysis and gives byte-identical tables.

A run of the fixture with ``batchmix run`` and the workflow's own run (Snakemake) are each replayed
into another folder; every table must be the same, byte for byte, and the matrices equal. A replay
whose input differs by one byte is refused, naming the file, and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from batchmix.io import read_matrix
from batchmix.runrecord import verify_inputs
from conftest import FIXTURE

BATCHMIX = Path(sys.executable).with_name("batchmix")

# Tables every run of the fixture writes (its model has a random batch, Simpson is on).
EXPECTED_TABLES = {
    "lmm/gene_fits.tsv",
    "lmm/blups.tsv",
    "lmm/fixed_vcov.tsv",
    "de/InfectionSARS_CoV_2.tsv",
    "simpson/reversals.tsv",
    "simpson/excluded_genes.tsv",
    "vst/size_factors.tsv",
    "vst/gene_status.tsv",
    "vst/mean_sd.tsv",
    "diagnostics/pca_scores.tsv",
}
MATRICES = ("vst/expression.parquet", "corrected/expression.parquet")


def batchmix(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BATCHMIX), *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def tables(outdir: Path) -> list[str]:
    """Every ``*.tsv`` under ``outdir`` (recursively), logs excluded, relative to it."""
    return sorted(
        str(p.relative_to(outdir)) for p in outdir.rglob("*.tsv") if "logs" not in p.relative_to(outdir).parts
    )


def assert_same_results(recorded: Path, replayed: Path) -> None:
    names = tables(recorded)
    assert EXPECTED_TABLES <= set(names), sorted(EXPECTED_TABLES - set(names))
    assert tables(replayed) == names
    differing = [name for name in names if (recorded / name).read_bytes() != (replayed / name).read_bytes()]
    assert differing == []
    for name in MATRICES:
        pd.testing.assert_frame_equal(read_matrix(replayed / name), read_matrix(recorded / name), check_exact=True)


def new_study(root: Path) -> Path:
    """A working directory with the fixture's data and config (relative paths, as a user has them)."""
    root.mkdir(parents=True)
    shutil.copytree(FIXTURE / "data", root / "data")
    shutil.copy(FIXTURE / "config.yaml", root / "fixture.yaml")
    return root


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """The fixture run once with ``batchmix run`` into ``first/``; returns the working directory."""
    work = new_study(tmp_path_factory.mktemp("replay") / "study")
    proc = batchmix("run", "--config", "fixture.yaml", "--outdir", "first", cwd=work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "outputs under first" in proc.stdout
    return work


def test_replay_of_a_batchmix_run_gives_byte_identical_tables(cli_run):
    proc = batchmix("replay", "first/run.json", "--outdir", "second", cwd=cli_run)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "second" in proc.stdout
    assert_same_results(cli_run / "first", cli_run / "second")
    first = json.loads((cli_run / "first/run.json").read_text())
    second = json.loads((cli_run / "second/run.json").read_text())
    assert first["command"] == "batchmix run --config fixture.yaml --outdir first"
    assert second["command"] == "batchmix replay first/run.json --outdir second"
    assert second["config"] == first["config"] and second["inputs"] == first["inputs"]
    counts = (FIXTURE / "data/counts.tsv").read_bytes()
    assert first["inputs"]["expression"] == {
        "path": "data/counts.tsv",
        "bytes": len(counts),
        "md5": hashlib.md5(counts).hexdigest(),
    }


def test_replay_refuses_an_input_changed_by_one_byte_and_writes_nothing(cli_run, tmp_path):
    record = json.loads((cli_run / "first/run.json").read_text())
    copy = cli_run / "copy"
    copy.mkdir(exist_ok=True)
    shutil.copy(cli_run / "data/counts.tsv", copy / "counts.tsv")
    record["inputs"]["expression"]["path"] = record["config"]["expression"] = "copy/counts.tsv"
    # pointed at the unchanged copy, the record's inputs check out: the refusal below is the byte's
    assert verify_inputs(record)["expression"] == str(cli_run / "copy/counts.tsv")
    original = (copy / "counts.tsv").read_bytes()
    position = original.rindex(b"1")
    changed = original[:position] + b"2" + original[position + 1 :]
    (copy / "counts.tsv").write_bytes(changed)
    pointed = tmp_path / "run.json"
    pointed.write_text(json.dumps(record))
    outdir = tmp_path / "replayed"
    proc = batchmix("replay", str(pointed), "--outdir", str(outdir), cwd=cli_run)
    assert proc.returncode == 2, proc.stderr
    assert "copy/counts.tsv: the expression input differs" in proc.stderr
    assert hashlib.md5(original).hexdigest() in proc.stderr and hashlib.md5(changed).hexdigest() in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not outdir.exists()


def test_replay_refuses_a_folder_that_is_not_empty(cli_run, tmp_path):
    outdir = tmp_path / "taken"
    outdir.mkdir()
    (outdir / "notes.txt").write_text("mine\n")
    proc = batchmix("replay", "first/run.json", "--outdir", str(outdir), cwd=cli_run)
    assert proc.returncode == 2
    assert f"{outdir}: --outdir is not empty" in proc.stderr and "--force" in proc.stderr
    assert [p.name for p in outdir.iterdir()] == ["notes.txt"]


def test_replay_refuses_a_corrupt_record(cli_run, tmp_path):
    damaged = tmp_path / "run.json"
    damaged.write_text((cli_run / "first/run.json").read_text()[:-40])
    proc = batchmix("replay", str(damaged), "--outdir", str(tmp_path / "out"), cwd=cli_run)
    assert proc.returncode == 2
    assert f"{damaged}: the run record is not valid JSON" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_replay_of_the_workflow_run_gives_byte_identical_tables(fixture_run, tmp_path):
    """The Snakemake run's results/run.json, replayed in-process: the same tables as the workflow's."""
    record = json.loads((fixture_run / "results/run.json").read_text())
    assert record["analysis"] is None
    assert "snakemake" in record["command"] and "--configfile fixture.yaml" in record["command"]
    assert set(record["inputs"]) == {"expression", "samples"}
    outdir = tmp_path / "replayed"
    proc = batchmix("replay", "results/run.json", "--outdir", str(outdir), cwd=fixture_run)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_same_results(fixture_run / "results", outdir)


STUDY = """\
expression: data/counts.tsv
samples: data/samples.tsv
input_type: counts
model: "~ Infection + (1|Batch)"
batch: Batch
chunks: 2
simpson: {enabled: false}
analyses:
  random_batch: {}
  fixed_batch: {model: "~ Infection + Batch"}
"""


def test_run_picks_one_analysis_of_a_config_with_analyses(tmp_path):
    work = new_study(tmp_path / "study")
    (work / "study.yaml").write_text(STUDY)
    proc = batchmix("run", "--config", "study.yaml", "--analysis", "fixed_batch", cwd=work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "outputs under results/fixed_batch" in proc.stdout
    assert sorted(p.name for p in (work / "results").iterdir()) == ["fixed_batch"]
    record = json.loads((work / "results/fixed_batch/run.json").read_text())
    assert record["analysis"] == "fixed_batch"
    assert record["config"]["model"] == "~ Infection + Batch" and "analyses" not in record["config"]
    # a fixed batch: no batch-corrected matrix, and the batch's contrasts are not DE tables
    assert not (work / "results/fixed_batch/corrected").exists()
    assert sorted(p.name for p in (work / "results/fixed_batch/de").glob("*.tsv")) == ["InfectionSARS_CoV_2.tsv"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config", "study.yaml", "--analysis", "other"], "no analysis 'other' under analyses:"),
        (["--config", "fixture.yaml", "--analysis", "fixed_batch"], "the config has no analyses:"),
        (["--config", "absent.yaml"], "absent.yaml: config file does not exist"),
    ],
)
def test_run_refuses_an_analysis_it_cannot_find(tmp_path, args, expected):
    work = new_study(tmp_path / "study")
    (work / "study.yaml").write_text(STUDY)
    proc = batchmix("run", *args, cwd=work)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert not (work / "results").exists()
