"""batchmix.report.gene_rows: some genes' rows of a result table, as the whole table read and filtered."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from batchmix.report import gene_rows

# A BLUP table as the lmm stage writes it, with ids that a text search could confuse: G1 is a
# prefix of G10, "NA" and "007" are ids, not a missing value and a number; G1's rows are not
# contiguous, one value is missing and the file ends without a line end.
BLUPS = (
    "gene_id\tgroup\tlevel\tterm\tvalue\n"
    "G1\tBatch\tb1\tIntercept\t0.5\n"
    "G10\tBatch\tb1\tIntercept\t-1.25\n"
    "NA\tBatch\tb1\tIntercept\t2\n"
    "G1\tBatch\t2\tIntercept\tNA\n"
    "007\tBatch\tb1\tIntercept\t3.5\n"
    "G2\tBatch\tb1\tIntercept\t4"
)


@pytest.fixture
def blups(tmp_path):
    path = tmp_path / "blups.tsv"
    path.write_text(BLUPS)
    return path


def test_the_rows_of_the_genes_in_the_files_order(blups):
    rows = gene_rows(blups, ["NA", "G1", "G2"])
    assert rows["gene_id"].tolist() == ["G1", "NA", "G1", "G2"]
    assert rows["level"].tolist() == ["b1", "b1", "2", "b1"]
    np.testing.assert_array_equal(rows["value"].to_numpy(dtype=float), [0.5, 2.0, np.nan, 4.0])
    assert rows.index.tolist() == [0, 1, 2, 3]


def test_an_id_that_prefixes_another_and_ids_that_look_like_values(blups):
    assert gene_rows(blups, ["G10"])["value"].tolist() == [-1.25]
    assert gene_rows(blups, ["007"])["value"].tolist() == [3.5]
    assert gene_rows(blups, ["G1", "G1"])["value"].isna().tolist() == [False, True]


def test_none_reads_the_whole_table_and_no_genes_its_columns(blups):
    assert gene_rows(blups, None)["gene_id"].tolist() == ["G1", "G10", "NA", "G1", "007", "G2"]
    empty = gene_rows(blups, [])
    assert len(empty) == 0 and list(empty.columns) == ["gene_id", "group", "level", "term", "value"]
    assert len(gene_rows(blups, ["absent"])) == 0


def test_the_same_frame_as_the_whole_table_filtered(blups):
    # The filtered whole table, the way the report read it before: rows, dtypes and values.
    whole = gene_rows(blups, None)
    expected = whole[whole["gene_id"].isin(["G1", "G10"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(gene_rows(blups, ["G1", "G10"]), expected)


def test_a_gzipped_table_and_a_quoted_id(tmp_path):
    path = tmp_path / "blups.tsv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(BLUPS)
    assert gene_rows(path, ["G1"])["value"].isna().tolist() == [False, True]
    quoted = tmp_path / "quoted.tsv"
    quoted.write_text('gene_id\tvalue\n"gene ""x"""\t1.5\nG1\t2.5\n')
    assert gene_rows(quoted, ['gene "x"'])["value"].tolist() == [1.5]
    assert gene_rows(quoted, ["G1"])["value"].tolist() == [2.5]
