"""The input formats people have, read to the same table as the equivalent TSV, with the same clear messages.

The .h5ad files in tests/data/readers were written by anndata 0.12.19 itself (tests/data/readers/SOURCE.md),
so that the reader is checked against files made by the library users have, not by batchmix.
"""

from __future__ import annotations

import errno
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix import io as bio
from batchmix import lmm, vst
from batchmix.io import InputError, ResultWriteError, read_expression, read_samples, validate_inputs

FIXTURE = Path(__file__).resolve().parents[1] / "workflow" / "data"
READERS = Path(__file__).resolve().parents[1] / "data" / "readers"
MODEL = "~ Infection + (1|Batch)"


@pytest.fixture(scope="module")
def reference():
    """The fixture's counts and sheet as the TSV reader gives them."""
    return read_expression(FIXTURE / "counts.tsv", "counts"), read_samples(FIXTURE / "samples.tsv")


def _gene_fits(validated) -> pd.DataFrame:
    """gene_fits of the validated inputs: VST as the workflow's default, then the per-gene LMM."""
    values = vst.vst(validated.expression, nsub=None).values
    return lmm.fit(values, validated.samples, MODEL).gene_fits


@pytest.fixture(scope="module")
def reference_fits():
    return _gene_fits(validate_inputs(FIXTURE / "counts.tsv", FIXTURE / "samples.tsv", "counts", MODEL, "Batch"))


def _featurecounts(path: Path, counts: pd.DataFrame, bam=lambda s: f"/data/aligned/{s}.bam") -> Path:
    lines = ['# Program:featureCounts v2.0.3; Command:"featureCounts" "-a" "genes.gtf" "-o" "counts.txt"']
    lines.append("\t".join(["Geneid", "Chr", "Start", "End", "Strand", "Length", *map(bam, counts.columns)]))
    for gene, row in counts.iterrows():
        lines.append("\t".join([gene, "chr1;chr1", "100;300", "200;400", "+;+", "202", *(f"{v:.0f}" for v in row)]))
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------------------------
# featureCounts


def test_featurecounts_output_reads_as_the_tsv_with_sample_ids_from_the_bam_names(tmp_path, reference):
    counts, _ = reference
    path = _featurecounts(tmp_path / "counts.txt", counts)
    pd.testing.assert_frame_equal(read_expression(path, "counts"), counts)


def test_featurecounts_gives_the_same_gene_fits_as_the_tsv(tmp_path, reference, reference_fits):
    path = _featurecounts(tmp_path / "counts.txt", reference[0])
    validated = validate_inputs(path, FIXTURE / "samples.tsv", "counts", MODEL, "Batch")
    assert any("featureCounts" in note for note in validated.notes)
    pd.testing.assert_frame_equal(_gene_fits(validated), reference_fits)


def test_featurecounts_sample_ids_can_be_mapped_by_path_or_base_name(tmp_path, reference):
    counts, _ = reference
    path = _featurecounts(tmp_path / "counts.txt", counts, bam=lambda s: f"/runs/lane1/{s.lower()}.sorted.bam")
    by_path = {f"/runs/lane1/{s.lower()}.sorted.bam": s for s in counts.columns[:12]}
    by_base = {f"{s.lower()}.sorted.bam": s for s in counts.columns[12:]}
    table = read_expression(path, "counts", sample_names={**by_path, **by_base})
    assert list(table.columns) == list(counts.columns)


def test_featurecounts_with_unmatched_bam_names_says_how_to_map_them(tmp_path, reference):
    counts, _ = reference
    path = _featurecounts(tmp_path / "counts.txt", counts, bam=lambda s: f"/runs/{s}.sorted.bam")
    with pytest.raises(InputError) as err:
        validate_inputs(path, FIXTURE / "samples.tsv", "counts", MODEL, "Batch")
    message = str(err.value)
    for word in [str(path), "featureCounts", "featurecounts_samples", "'Series1_NHBE_Mock_1.sorted'"]:
        assert word in message, message


# ----------------------------------------------------------------------------------------------------
# Estimated counts (salmon / tximport)


def test_estimated_counts_are_rounded_half_to_even_as_deseqdatasetfromtximport(tmp_path):
    # R: round(c(0.5, 1.5, 2.5, 2.4, 2.6, 7)) is 0 2 2 2 3 7 (IEC 60559, half to even)
    path = tmp_path / "quant.tsv"
    path.write_text("gene_id\ts1\ts2\ts3\ng1\t0.5\t1.5\t2.5\ng2\t2.4\t2.6\t7\n")
    table = read_expression(path, "estimated_counts")
    assert table.to_numpy().tolist() == [[0.0, 2.0, 2.0], [2.0, 3.0, 7.0]]


def test_non_integer_counts_name_gene_and_sample_and_suggest_estimated_counts(tmp_path):
    path = tmp_path / "quant.tsv"
    path.write_text("gene_id\ts1\ts2\ng1\t3\t4\ng2\t12.37\t5\n")
    with pytest.raises(InputError) as err:
        read_expression(path, "counts")
    message = str(err.value)
    for word in [str(path), "gene 'g2' (line 3), sample 's1': 12.37", "input_type: estimated_counts"]:
        assert word in message, message


def test_estimated_counts_give_the_gene_fits_of_the_rounded_tsv(tmp_path, reference, reference_fits):
    counts, _ = reference
    # salmon-style estimates that round back to the fixture's counts (|noise| < 0.5)
    noise = np.random.default_rng(7).uniform(-0.49, 0.49, counts.shape)
    estimated = (counts + np.where(counts.to_numpy() > 0, noise, 0.0)).rename_axis("gene_id")
    path = tmp_path / "quant.tsv"
    estimated.to_csv(path, sep="\t", float_format="%.6f")
    validated = validate_inputs(path, FIXTURE / "samples.tsv", "estimated_counts", MODEL, "Batch")
    pd.testing.assert_frame_equal(validated.expression, counts)
    pd.testing.assert_frame_equal(_gene_fits(validated), reference_fits)


# ----------------------------------------------------------------------------------------------------
# Parquet


def test_parquet_table_gives_the_same_gene_fits_as_the_tsv(tmp_path, reference, reference_fits):
    counts, _ = reference
    path = tmp_path / "counts.parquet"
    counts.astype("int64").reset_index().to_parquet(path, index=False)
    validated = validate_inputs(path, FIXTURE / "samples.tsv", "counts", MODEL, "Batch")
    pd.testing.assert_frame_equal(validated.expression, counts)
    pd.testing.assert_frame_equal(_gene_fits(validated), reference_fits)


def test_parquet_with_the_ids_as_index_and_a_text_column(tmp_path, reference):
    counts, _ = reference
    path = tmp_path / "counts.parquet"
    counts.to_parquet(path)  # pandas keeps the gene ids as the index
    pd.testing.assert_frame_equal(read_expression(path, "counts"), counts)
    bad = counts.reset_index().assign(note="x")
    bad.to_parquet(path, index=False)
    with pytest.raises(InputError, match="'note'.*not numeric"):
        read_expression(path, "counts")


# ----------------------------------------------------------------------------------------------------
# AnnData .h5ad


def test_h5ad_sparse_x_and_obs_as_the_sheet_give_the_same_gene_fits(reference, reference_fits):
    counts, _ = reference
    path = READERS / "fixture_sparse.h5ad"
    validated = validate_inputs(path, path, "counts", MODEL, "Batch")
    pd.testing.assert_frame_equal(validated.expression, counts)
    pd.testing.assert_frame_equal(_gene_fits(validated), reference_fits)
    assert validated.symbols is not None and validated.symbols.loc["PER3"] == "SYM_PER3"


def test_h5ad_obs_reads_as_the_tsv_sheet(reference):
    _, sheet = reference
    pd.testing.assert_frame_equal(read_samples(READERS / "fixture_layer.h5ad"), sheet)


def test_h5ad_layer_from_the_config(reference):
    counts, _ = reference
    path = READERS / "fixture_layer.h5ad"
    validated = validate_inputs(path, path, "counts", MODEL, "Batch", config={"expression_layer": "counts"})
    pd.testing.assert_frame_equal(validated.expression, counts)
    # X holds log2(counts + 1): read as log values without the layer
    log_values = read_expression(path, "log")
    np.testing.assert_allclose(log_values.to_numpy(), np.log2(counts.to_numpy() + 1))


def test_h5ad_unknown_layer_lists_the_layers():
    with pytest.raises(InputError) as err:
        read_expression(READERS / "fixture_layer.h5ad", "counts", layer="raw")
    assert "'raw'" in str(err.value) and "'counts'" in str(err.value) and "expression_layer" in str(err.value)


def test_samples_key_is_optional_for_an_h5ad_expression():
    from batchmix.config import validate_config

    base = {"expression": "data/x.h5ad", "input_type": "counts", "model": MODEL, "batch": "Batch"}
    assert validate_config(base)["samples"] == "data/x.h5ad"
    assert validate_config({**base, "samples": None})["samples"] == "data/x.h5ad"
    with pytest.raises(InputError, match="samples is null"):
        validate_config({**base, "expression": "data/x.tsv", "samples": None})


# ----------------------------------------------------------------------------------------------------
# Files that are not what their names say


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: (p.unlink(), p.mkdir()), ["directory"]),
        (lambda p: p.write_bytes("gene_id\ts1\n".encode("utf-16")), ["UTF-16", "UTF-8"]),
        (lambda p: p.write_bytes(gzip.compress(b"gene_id\ts1\ng1\t1\n")), ["gzip", ".gz"]),
        (lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 100), ["Excel", ".tsv"]),
        (lambda p: p.write_bytes(b"gene_id\ts1\xe9\ng1\t1\n"), ["not UTF-8", "UTF-8"]),
        (lambda p: p.write_text("gene_id\ts1\ts2\n"), ["no gene rows"]),
        (lambda p: p.write_text(""), ["empty"]),
    ],
)
def test_files_that_are_not_tables_are_named_with_the_fix(tmp_path, make, words):
    path = tmp_path / "counts.tsv"
    path.write_text("x")
    make(path)
    with pytest.raises(InputError) as err:
        read_expression(path, "counts")
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message, message


def test_gz_name_without_gzip_content(tmp_path):
    path = tmp_path / "counts.tsv.gz"
    path.write_text("gene_id\ts1\ng1\t1\n")
    with pytest.raises(InputError, match="not gzip-compressed"):
        read_expression(path, "counts")


def test_r_write_table_header_one_field_short_is_explained(tmp_path):
    path = tmp_path / "counts.tsv"
    path.write_text("s1\ts2\ng1\t1\t2\ng2\t3\t4\n")
    with pytest.raises(InputError) as err:
        read_expression(path, "counts")
    for word in ["one field fewer", "write.table", "col.names = NA", "'gene_id'"]:
        assert word in str(err.value)


# ----------------------------------------------------------------------------------------------------
# Line numbers and cells


def test_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "counts.tsv"
    path.write_text("gene_id\ts1\ts2\ng1\t1\t2\n\n\ng2\t3\toops\ng3\t1\t1\n")
    with pytest.raises(InputError, match=r"gene 'g2' \(line 5\), sample 's2': 'oops'"):
        read_expression(path, "counts")
    path.write_text("gene_id\ts1\ts2\ng1\t1\t2\n\n\ng2\t3\t-4\ng3\t1\t1\n")
    with pytest.raises(InputError, match=r"gene 'g2' \(line 5\), sample 's2': -4"):
        read_expression(path, "counts")


def test_an_unclosed_quote_names_the_line_where_it_opens(tmp_path):
    path = tmp_path / "counts.tsv"
    path.write_text('gene_id\ts1\ts2\ng1\t1\t2\ng2\t"3\t4\ng3\t1\t1\ng4\t1\t1\n')
    with pytest.raises(InputError, match="opened at line 3"):
        read_expression(path, "counts")


def test_a_row_with_extra_fields_is_named_by_line(tmp_path):
    path = tmp_path / "counts.tsv"
    path.write_text("gene_id\ts1\ts2\ng1\t1\t2\n\ng2\t3\t4\t5\n")
    with pytest.raises(InputError, match="line 4 has 4 fields"):
        read_expression(path, "counts")


def test_infinite_values_name_gene_and_sample(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("gene_id\ts1\ts2\ng1\t1.5\t2\ng2\t-inf\t4\n")
    with pytest.raises(InputError, match=r"infinite values .* gene 'g2' \(line 3\), sample 's1': -inf"):
        read_expression(path, "log")


def test_whitespace_around_ids_is_made_visible(tmp_path):
    path = tmp_path / "samples.tsv"
    path.write_text("sample_id\tbatch\ns1\tA\ns2 \tB\n")
    with pytest.raises(InputError, match=r"'s2 ' \(line 3\)"):
        read_samples(path)


def test_na_like_ids_and_numeric_looking_ids_stay_verbatim(tmp_path):
    ids = ["NA", "NULL", "None", "n/a", "#N/A", "<NA>", "null", "007", "1e5", "gene with space"]
    path = tmp_path / "counts.tsv"
    path.write_text("gene_id\ts1\ts2\n" + "".join(f"{g}\t{i}\t{i + 1}\n" for i, g in enumerate(ids)))
    assert list(read_expression(path, "counts").index) == ids


def test_an_all_zero_sample_is_named_with_the_fix(tmp_path):
    path = tmp_path / "counts.tsv"
    path.write_text("gene_id\ts1\ts2\ts3\ng1\t1\t0\t3\ng2\t5\t0\t2\n")
    with pytest.raises(InputError) as err:
        read_expression(path, "counts")
    assert "'s2'" in str(err.value) and "only zero counts" in str(err.value) and "Remove it" in str(err.value)


def test_a_single_gene_count_table_says_what_to_do(tmp_path):
    path = tmp_path / "counts.tsv"
    path.write_text("gene_id\ts1\ts2\ng1\t1\t2\n")
    with pytest.raises(InputError, match="has 1 gene.*dispersion trend.*whole table"):
        read_expression(path, "counts")


def test_ratio_size_factors_without_a_zero_free_gene_suggest_poscounts(tmp_path):
    counts = tmp_path / "counts.tsv"
    counts.write_text("gene_id\ts1\ts2\ts3\ts4\ng1\t0\t2\t3\t4\ng2\t5\t0\t2\t1\n")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("sample_id\tb\tc\ns1\tA\tx\ns2\tA\ty\ns3\tB\tx\ns4\tB\ty\n")
    config = {"vst": {"size_factors": "ratio"}}
    with pytest.raises(InputError, match="size_factors: poscounts"):
        validate_inputs(counts, sheet, "counts", "~ c + (1|b)", "b", config=config)
    validate_inputs(counts, sheet, "counts", "~ c + (1|b)", "b", config={"vst": {"size_factors": "poscounts"}})


# ----------------------------------------------------------------------------------------------------
# Results that cannot be written


class _FullDisk:
    """A file object whose writes fail as on a full disk (or a read-only file system)."""

    def __init__(self, code):
        self.code = code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, data):
        raise OSError(self.code, "No space left on device" if self.code == errno.ENOSPC else "Read-only file system")


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only")])
@pytest.mark.parametrize("name", ["table.tsv", "table.tsv.gz"])
def test_a_failed_write_names_the_file_and_says_the_run_resumes(tmp_path, monkeypatch, code, cause, name):
    path = tmp_path / "results" / name
    real_open = open

    def failing_open(file, mode="r", *args, **kwargs):
        if "w" in mode and Path(file) == path:
            real_open(file, mode).close()  # the file exists, half-written
            return _FullDisk(code)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(ResultWriteError) as err:
        bio.write_table(pd.DataFrame({"gene_id": ["g1"], "x": [1.0]}), path)
    message = str(err.value)
    for word in [str(path), cause, "same command again", "resumes"]:
        assert word in message, message
    assert not path.exists(), "a half-written result must not look finished"


def test_a_failed_json_write_is_reported_the_same_way(tmp_path, monkeypatch):
    path = tmp_path / "results" / "x.json"

    def failing_write_text(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", failing_write_text)
    with pytest.raises(ResultWriteError, match="disk is full"):
        bio.write_json({"a": 1}, path)


def test_reader_fixture_files_are_present():
    # the .h5ad fixtures are binary files in git: a clone without them must fail loudly, not skip
    assert (READERS / "fixture_sparse.h5ad").stat().st_size > 0 and (READERS / "fixture_layer.h5ad").exists()


def test_a_row_with_too_few_fields_is_named_not_read_as_missing_values(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("gene_id\ts1\ts2\ng1\t1\t2\ng2\t3\n")
    with pytest.raises(InputError, match="line 3 has 2 fields"):
        read_expression(path, "log")
    path.write_text("gene_id\ts1\ts2\ng1\t1\t2\ng2\t3\tNA\n")
    assert np.isnan(read_expression(path, "log").loc["g2", "s2"])


# ----------------------------------------------------------------------------------------------------
# Large text tables: parsed in row chunks into one matrix, with the same table and the same messages


def _text_cases(tmp_path: Path, counts: pd.DataFrame) -> dict[str, tuple[Path, str]]:
    text = counts.rename_axis("gene_id").to_csv(sep="\t")
    lines = text.splitlines()
    cases = {"tsv": (tmp_path / "counts.tsv", text)}
    cases["csv"] = (tmp_path / "counts.csv", counts.rename_axis("gene_id").to_csv())
    cases["blank lines"] = (
        tmp_path / "blank.tsv",
        "\n".join(lines[:4] + ["", ""] + lines[4:9] + [""] + lines[9:]) + "\n",
    )
    bad_cell = lines[6].split("\t")
    bad_cell[3] = "1,5"
    cases["bad cell"] = (tmp_path / "bad_cell.tsv", "\n".join(lines[:6] + ["\t".join(bad_cell)] + lines[7:]) + "\n")
    cases["extra field"] = (tmp_path / "extra.tsv", "\n".join(lines[:5] + [lines[5] + "\t7"] + lines[6:]) + "\n")
    short = lines[8].rsplit("\t", 1)[0]
    cases["short row"] = (tmp_path / "short.tsv", "\n".join(lines[:8] + [short] + lines[9:]) + "\n")
    cases["no final newline"] = (tmp_path / "nofinal.tsv", text.rstrip("\n"))
    written = {}
    for name, (path, content) in cases.items():
        path.write_text(content)
        written[name] = (path, "counts")
    gz = tmp_path / "counts.tsv.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    written["gzip"] = (gz, "counts")
    written["featureCounts"] = (_featurecounts(tmp_path / "fc.txt", counts), "counts")
    log = counts.astype(float).map(np.log1p).astype(object)
    log.iloc[2, 3] = "NA"
    log.iloc[5, 0] = ""
    (tmp_path / "log.tsv").write_text(log.rename_axis("gene_id").to_csv(sep="\t"))
    written["log with missing"] = (tmp_path / "log.tsv", "log")
    return written


def _outcome(path: Path, input_type: str):
    try:
        return read_expression(path, input_type)
    except InputError as err:
        return str(err)


def test_large_tables_read_in_chunks_give_the_same_table_and_messages(tmp_path, reference, monkeypatch):
    from batchmix.io import readers

    counts, _ = reference
    read = []
    for name, (path, input_type) in _text_cases(tmp_path, counts.iloc[:40]).items():
        whole = _outcome(path, input_type)
        monkeypatch.setattr(readers, "CHUNKED_READ_BYTES", 0)
        monkeypatch.setattr(readers, "_CHUNK_ROWS", 3)
        chunked = _outcome(path, input_type)
        monkeypatch.undo()
        if isinstance(whole, str):
            assert chunked == whole, name
            continue
        assert not isinstance(chunked, str), f"{name}: {chunked}"
        pd.testing.assert_frame_equal(chunked, whole, check_exact=True, obj=name)
        assert chunked.to_numpy().flags.f_contiguous, name
        read.append(name)
    assert {"tsv", "gzip", "featureCounts", "log with missing", "blank lines"} <= set(read)
