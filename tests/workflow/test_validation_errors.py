"""Bad input stops the workflow with a message naming the file and the row or column, and writes no result."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from conftest import make_run_dir, result_files, run_snakemake


def _edit(run_dir, counts=None, samples=None, config=None):
    if counts is not None:
        table = pd.read_csv(run_dir / "data/counts.tsv", sep="\t", index_col=0)
        counts(table).to_csv(run_dir / "data/counts.tsv", sep="\t")
    if samples is not None:
        sheet = pd.read_csv(run_dir / "data/samples.tsv", sep="\t", index_col=0)
        samples(sheet).to_csv(run_dir / "data/samples.tsv", sep="\t")
    if config is not None:
        cfg = yaml.safe_load((run_dir / "fixture.yaml").read_text())
        cfg.update(config)
        (run_dir / "fixture.yaml").write_text(yaml.safe_dump(cfg))


def _duplicate_sample(sheet):
    return pd.concat([sheet, sheet.iloc[[0]]])


def _rename_sample(sheet):
    return sheet.rename(index={sheet.index[0]: "not_a_sample"})


def _negative(table):
    table.iloc[5, 2] = -4
    return table


def _fraction(table):
    table = table.astype(float)
    table.iloc[7, 1] = 2.5
    return table


def _one_batch(sheet):
    sheet["Batch"] = "Series1"
    return sheet


def _text_cell(table):
    table = table.astype(object)
    table.iloc[3, 4] = "n/a?"
    return table


def _duplicate_gene(table):
    return pd.concat([table, table.iloc[[10]]])


CASES = {
    "duplicate sample id in the sheet": (
        dict(samples=_duplicate_sample),
        ["data/samples.tsv", "duplicate sample ids", "Series1_NHBE_Mock_1"],
    ),
    "missing column": (
        dict(config={"model": "~ Treatment + (1|Batch)"}),
        ["data/samples.tsv", "Treatment", "not in the sample sheet"],
    ),
    "missing batch column": (dict(config={"batch": "Run"}), ["data/samples.tsv", "Run", "not in the sample sheet"]),
    "mismatched ids": (dict(samples=_rename_sample), ["not_a_sample", "Series1_NHBE_Mock_1", "must match"]),
    "negative counts": (dict(counts=_negative), ["data/counts.tsv", "negative counts", "input_type: log"]),
    "non-integer counts": (dict(counts=_fraction), ["data/counts.tsv", "non-integer counts"]),
    "one batch": (dict(samples=_one_batch), ["data/samples.tsv", "Batch", "at least two batches"]),
    "non-numeric cell": (dict(counts=_text_cell), ["data/counts.tsv", "non-numeric", "n/a?"]),
    "duplicate gene id": (dict(counts=_duplicate_gene), ["data/counts.tsv", "duplicate gene ids"]),
    "bad config value": (dict(config={"input_type": "fpkm"}), ["input_type", "fpkm"]),
    "unparsable formula": (dict(config={"model": "~ Infection + (1|"}), ["model", "formula"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_clearly_and_writes_nothing(case, tmp_path):
    edits, fragments = CASES[case]
    run_dir = make_run_dir(tmp_path / "run")
    _edit(run_dir, **edits)
    proc = run_snakemake(run_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    for fragment in fragments:
        assert fragment in out, f"{fragment!r} not in the error output:\n{out[-3000:]}"
    assert result_files(run_dir) == []
