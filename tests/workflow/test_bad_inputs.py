"""Every case of the bad-input corpus (tests/bad_inputs/corpus.py) through the workflow, as a user runs it.

An error case must stop the run before any job: exit non-zero, a message that names the file, the row or
column and the fix (the case's words), and nothing written under results/. A success must lose nothing:
every input gene is in every per-gene output, with a status.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from batchmix.io import read_matrix
from conftest import make_run_dir, result_files, run_snakemake

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bad_inputs"))
from corpus import CASES, COUNTS  # noqa: E402

BY_NAME = {case.name: case for case in CASES}


def _input_genes(run_dir: Path) -> list[str]:
    """The gene ids as the user wrote them (first field of every non-header line)."""
    lines = (run_dir / COUNTS).read_bytes().decode("utf-8-sig").splitlines()
    while lines and lines[0].startswith("#"):  # featureCounts' command line, above the header (a gene may be #N/A)
        lines = lines[1:]
    return [line.split("\t", 1)[0] for line in lines[1:] if line.strip()]


def _ids(path: Path) -> list[str]:
    if path.suffix in (".parquet", ".h5ad"):
        return read_matrix(path).index.tolist()
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, usecols=[0])
    return table.iloc[:, 0].tolist()


def test_the_corpus_covers_every_class_of_issue_14():
    classes = {case.cls for case in CASES}
    assert {"made_up", "loses_genes", "late", "unhelpful"} <= classes
    assert len(BY_NAME) == len(CASES), "case names must be unique"


@pytest.mark.parametrize("name", [c.name for c in CASES if c.expect == "error"])
def test_error_case_is_refused_up_front_and_named(name, tmp_path):
    case = BY_NAME[name]
    run_dir = make_run_dir(tmp_path / "run")
    case.make(run_dir)
    proc = run_snakemake(run_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"the run did not stop:\n{out[-3000:]}"
    assert "Traceback" not in out, f"a traceback instead of a message:\n{out[-3000:]}"
    missing = [w for w in case.words if w.lower() not in out.lower()]
    assert not missing, f"{missing} not in the message:\n{out[-3000:]}"
    assert result_files(run_dir) == [], "something was written under results/"


@pytest.mark.parametrize("name", [c.name for c in CASES if c.expect == "ok"])
def test_awkward_case_succeeds_and_loses_nothing(name, tmp_path):
    case = BY_NAME[name]
    run_dir = make_run_dir(tmp_path / "run")
    case.make(run_dir)
    genes = _input_genes(run_dir)
    proc = run_snakemake(run_dir)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    results = run_dir / "results"
    for table in ["vst/gene_status.tsv", "lmm/gene_fits.tsv", "vst/expression.parquet", "corrected/expression.parquet"]:
        assert _ids(results / table) == genes, f"{table} does not hold every input gene once, in input order"
    fits = pd.read_csv(
        results / "lmm/gene_fits.tsv", sep="\t", dtype={"gene_id": str, "status": str}, keep_default_na=False
    )
    assert (fits["status"] != "").all()
    assert (results / "report.html").exists()
