"""Reading and validating inputs: every error names the file, the row or column, and what to do."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from batchmix.io import (
    InputError,
    read_expression,
    read_matrix,
    read_result_table,
    read_samples,
    validate_inputs,
    write_table,
)


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def good(tmp_path):
    counts = _write(tmp_path / "counts.tsv", "gene_id\ts1\ts2\ts3\ts4\ng1\t1\t2\t3\t4\ng2\t0\t5\t9\t1\n")
    sheet = _write(tmp_path / "samples.tsv", "sample_id\tbatch\tcond\ns1\tA\tx\ns2\tA\ty\ns3\tB\tx\ns4\tB\ty\n")
    return counts, sheet


def test_reads_tsv_csv_and_gzip_alike(tmp_path, good):
    counts, _ = good
    as_tsv = read_expression(counts)
    csv = tmp_path / "counts.csv.gz"
    with gzip.open(csv, "wt") as fh:
        fh.write(counts.read_text().replace("\t", ","))
    pd.testing.assert_frame_equal(read_expression(csv), as_tsv)
    assert as_tsv.loc["g2", "s3"] == 9.0 and as_tsv.index.name == "gene_id"


def test_valid_inputs_align_columns_to_the_sheet(tmp_path, good):
    counts, _ = good
    sheet = _write(tmp_path / "s.tsv", "sample_id\tbatch\tcond\ns4\tB\ty\ns3\tB\tx\ns2\tA\ty\ns1\tA\tx\n")
    v = validate_inputs(counts, sheet, "counts", "~ cond + (1|batch)", "batch")
    assert list(v.expression.columns) == ["s4", "s3", "s2", "s1"]
    assert list(v.batch) == ["B", "B", "A", "A"]


@pytest.mark.parametrize(
    "table, fragments",
    [
        (
            "gene_id\ts1\ts2\ng1\t1\t-2\ng2\t1\t1\n",
            ["negative counts", "gene 'g1' (line 2), sample 's2'", "input_type: log"],
        ),
        (
            "gene_id\ts1\ts2\ng1\t1\t2.5\ng2\t1\t1\n",
            ["non-integer counts", "gene 'g1' (line 2), sample 's2': 2.5", "input_type: estimated_counts"],
        ),
        ("gene_id\ts1\ts2\ng1\t1\tabc\n", ["non-numeric", "gene 'g1' (line 2), sample 's2'", "'abc'"]),
        ("gene_id\ts1\ts2\ng1\t1\t\n", ["missing values in a count table", "gene 'g1' (line 2), sample 's2'"]),
        ("gene_id\ts1\ts2\ng1\t1\t2\ng1\t3\t4\n", ["duplicate gene ids", "'g1' (line 2, line 3)"]),
        ("gene_id\ts1\ts1\ng1\t1\t2\n", ["duplicate sample columns", "'s1'"]),
        ("gene_id\ts1\ts2\n\t1\t2\n", ["empty gene id", "at line 2"]),
    ],
)
def test_bad_expression_tables_name_the_cell(tmp_path, table, fragments):
    path = _write(tmp_path / "bad.tsv", table)
    with pytest.raises(InputError) as err:
        read_expression(path, "counts")
    message = str(err.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_log_input_allows_missing_and_negative_values(tmp_path):
    path = _write(tmp_path / "log.tsv", "gene_id\ts1\ts2\ng1\t-1.5\t\n")
    table = read_expression(path, "log")
    assert table.loc["g1", "s1"] == -1.5 and np.isnan(table.loc["g1", "s2"])


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="unknown table format"):
        read_expression(_write(tmp_path / "x.xlsx", "a"))
    with pytest.raises(InputError, match="does not exist"):
        read_expression(tmp_path / "nope.tsv")


def test_mismatched_ids_list_missing_and_extra_by_name(tmp_path, good):
    counts, _ = good
    sheet = _write(tmp_path / "s.tsv", "sample_id\tbatch\ns1\tA\ns2\tA\ns3\tB\ns9\tB\n")
    with pytest.raises(InputError) as err:
        validate_inputs(counts, sheet, "counts", "~ (1|batch)", "batch")
    message = str(err.value)
    assert "s9" in message and "s4" in message and "must match" in message


def test_missing_formula_column_lists_the_available_ones(good):
    counts, sheet = good
    with pytest.raises(InputError) as err:
        validate_inputs(counts, sheet, "counts", "~ treatment + (1|batch)", "batch")
    assert "treatment" in str(err.value) and "batch, cond" in str(err.value)


def test_one_batch_is_refused(tmp_path, good):
    counts, _ = good
    sheet = _write(tmp_path / "s.tsv", "sample_id\tbatch\ns1\tA\ns2\tA\ns3\tA\ns4\tA\n")
    with pytest.raises(InputError, match="at least two batches"):
        validate_inputs(counts, sheet, "counts", "~ (1|batch)", "batch")


def test_missing_covariate_value_names_the_sample(tmp_path, good):
    counts, _ = good
    sheet = _write(tmp_path / "s.tsv", "sample_id\tbatch\tcond\ns1\tA\tx\ns2\tA\t\ns3\tB\tx\ns4\tB\ty\n")
    with pytest.raises(InputError, match=r"'cond' has missing values for sample\(s\) s2"):
        validate_inputs(counts, sheet, "counts", "~ cond + (1|batch)", "batch")


def test_numeric_sheet_columns_become_numbers(good):
    _, sheet = good
    sheet.write_text("sample_id\tday\tbatch\ns1\t0\tA\ns2\t1.5\tB\n")
    table = read_samples(sheet)
    assert table["day"].dtype == float and table["batch"].dtype != float


def test_write_table_gzip_is_byte_stable(tmp_path):
    df = pd.DataFrame({"a": [1.0, 2.5], "b": ["x", "y"]})
    write_table(df, tmp_path / "one.tsv.gz")
    write_table(df, tmp_path / "two.tsv.gz")
    assert (tmp_path / "one.tsv.gz").read_bytes() == (tmp_path / "two.tsv.gz").read_bytes()
    assert pd.read_csv(tmp_path / "one.tsv.gz", sep="\t").equals(df)


NA_LIKE_IDS = ["NA", "NULL", "None", "n/a", "#N/A", "<NA>", "null", "007", "1e5", "gene with space", "nan", "NaN"]


def test_gene_and_sample_ids_are_kept_verbatim(tmp_path):
    genes = NA_LIKE_IDS
    samples = ["NA", "007", "s 3", "1e5"]
    lines = ["gene_id\t" + "\t".join(samples)] + [f"{g}\t1\t2\t3\t{i}" for i, g in enumerate(genes)]
    counts = _write(tmp_path / "counts.tsv", "\n".join(lines) + "\n")
    sheet = _write(
        tmp_path / "samples.tsv",
        "sample_id\tbatch\n" + "".join(f"{s}\t{'AB'[i // 2]}\n" for i, s in enumerate(samples)),
    )
    v = validate_inputs(counts, sheet, "counts", "~ (1|batch)", "batch")
    assert list(v.expression.index) == genes
    assert list(v.expression.columns) == samples and list(v.samples.index) == samples
    # the values after the id column still read NA as missing
    log = _write(tmp_path / "log.tsv", "gene_id\ts1\ts2\nNA\tNA\t1.5\n")
    table = read_expression(log, "log")
    assert list(table.index) == ["NA"] and np.isnan(table.loc["NA", "s1"])


def test_result_tables_and_matrices_read_back_ids_verbatim(tmp_path):
    matrix = pd.DataFrame(
        {"s1": np.arange(len(NA_LIKE_IDS), dtype=float), "s2": np.nan}, index=pd.Index(NA_LIKE_IDS, name="gene_id")
    )
    write_table(matrix, tmp_path / "m.tsv.gz", index=True)
    back = read_matrix(tmp_path / "m.tsv.gz")
    assert list(back.index) == NA_LIKE_IDS and back["s2"].isna().all() and back["s1"].dtype == float
    table = pd.DataFrame(
        {"gene_id": NA_LIKE_IDS, "status": "ok", "value": np.r_[np.nan, np.ones(len(NA_LIKE_IDS) - 1)]}
    )
    write_table(table, tmp_path / "t.tsv")
    back = read_result_table(tmp_path / "t.tsv")
    assert list(back["gene_id"]) == NA_LIKE_IDS and np.isnan(back["value"].iloc[0])
