"""The corpus of bad and awkward inputs, as new users produce them, with the outcome each must have.

Every case starts from the workflow fixture (``tests/workflow/data``: 200 genes x 24 samples, 4 batches,
config ``tests/workflow/config.yaml``) laid out in a run directory, and changes one thing: a file, the
config, or both. ``expect`` is ``"error"`` (the run stops before any job, exit non-zero, nothing under
``results/``, and the message contains every word of ``words``) or ``"ok"`` (the run succeeds and every input
gene is in every per-gene output with a status). The words are the file, the row or column, and the fix.

The corpus grows with each bug: add a case here, and the harness (``tests/workflow/test_bad_inputs.py``)
runs it.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml

COUNTS = "data/counts.tsv"
SAMPLES = "data/samples.tsv"
CONFIG = "fixture.yaml"
READERS = Path(__file__).resolve().parents[1] / "data" / "readers"


@dataclass(frozen=True)
class Case:
    """One bad input: how to make it from the fixture, and what the run must do with it."""

    name: str
    cls: str  # the class of issue 14 it illustrates: made_up, loses_genes, late, unhelpful, ...
    make: Callable[[Path], None]
    expect: str  # "error" or "ok"
    words: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# Helpers that edit the run directory


def _counts(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / COUNTS, sep="\t", index_col=0, dtype={0: str}, keep_default_na=False)


def _sheet(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / SAMPLES, sep="\t", index_col=0, dtype=str, keep_default_na=False)


def _write(table: pd.DataFrame, path: Path) -> None:
    table.to_csv(path, sep="\t", lineterminator="\n")


def _config(run: Path, **changes) -> None:
    cfg = yaml.safe_load((run / CONFIG).read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    (run / CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))


def _edit_counts(fn):
    def make(run: Path) -> None:
        _write(fn(_counts(run)), run / COUNTS)

    return make


def _edit_sheet(fn):
    def make(run: Path) -> None:
        _write(fn(_sheet(run)), run / SAMPLES)

    return make


def _set_config(**changes):
    def make(run: Path) -> None:
        _config(run, **changes)

    return make


def _both(*makers):
    def make(run: Path) -> None:
        for m in makers:
            m(run)

    return make


# ----------------------------------------------------------------------------------------------------
# 1. Made-up numbers: designs that cannot identify what the model reports


def _one_sample_per_batch(sheet):
    sheet["Batch"] = [f"run{i:02d}" for i in range(len(sheet))]
    return sheet


def _three_samples(run: Path) -> None:
    counts, sheet = _counts(run), _sheet(run)
    keep = [sheet.index[0], sheet.index[6], sheet.index[12]]
    _write(counts[keep], run / COUNTS)
    _write(sheet.loc[keep], run / SAMPLES)


def _condition_is_batch(sheet):
    sheet["Site"] = sheet["Batch"].str.replace("Series", "site")
    return sheet


def _donor_per_sample(sheet):
    sheet["Donor"] = [f"d{i}" for i in range(len(sheet))]
    return sheet


# ----------------------------------------------------------------------------------------------------
# 3. Errors that come late (inside jobs) today


def _all_zero_sample(counts):
    counts.iloc[:, 5] = 0
    return counts


def _header_only(run: Path) -> None:
    text = (run / COUNTS).read_text().splitlines()[0] + "\n"
    (run / COUNTS).write_text(text)


def _single_gene(counts):
    return counts.loc[["PER3"]]


def _na_like_ids(counts):
    ids = list(counts.index)
    for i, new in enumerate(["NA", "NULL", "None", "n/a", "#N/A", "<NA>", "null", "007", "1e5", "gene with space"]):
        ids[10 + i] = new
    counts.index = pd.Index(ids, name="gene_id")
    return counts


# ----------------------------------------------------------------------------------------------------
# 4. Errors that do not help today


def _featurecounts(run: Path) -> None:
    counts = _counts(run)
    bam = [f"/data/aligned/{s}.bam" for s in counts.columns]
    lines = ['# Program:featureCounts v2.0.3; Command:"featureCounts" "-a" "genes.gtf" "-o" "counts.txt"']
    lines.append("\t".join(["Geneid", "Chr", "Start", "End", "Strand", "Length", *bam]))
    for gene, row in counts.iterrows():
        lines.append("\t".join([gene, "chr1", "100", "200", "+", "101", *map(str, row.tolist())]))
    (run / COUNTS).write_text("\n".join(lines) + "\n")


def _r_write_table(run: Path) -> None:
    # R's write.table(counts, sep = "\t", quote = FALSE) writes no field for the row names' column.
    counts = _counts(run)
    lines = ["\t".join(counts.columns)]
    for gene, row in counts.iterrows():
        lines.append("\t".join([gene, *map(str, row.tolist())]))
    (run / COUNTS).write_text("\n".join(lines) + "\n")


def _blank_line_then_text(run: Path) -> None:
    lines = (run / COUNTS).read_text().splitlines()
    lines.insert(3, "")  # a blank line after data line 3 (file line 4 is blank)
    fields = lines[8].split("\t")  # file line 9
    fields[2] = "oops"
    lines[8] = "\t".join(fields)
    (run / COUNTS).write_text("\n".join(lines) + "\n")


def _infinite(run: Path) -> None:
    counts = _counts(run).astype(float)
    counts.iloc[20, 3] = float("inf")
    _write(counts, run / COUNTS)
    _config(run, input_type="log")


def _whitespace_ids(sheet):
    sheet.index = pd.Index([s + " " if i == 2 else s for i, s in enumerate(sheet.index)], name="sample_id")
    return sheet


def _directory(run: Path) -> None:
    (run / "data/counts_dir").mkdir()
    _config(run, expression="data/counts_dir")


def _utf16(run: Path) -> None:
    text = (run / SAMPLES).read_text()
    (run / SAMPLES).write_bytes(text.encode("utf-16"))


def _csv_named_tsv(run: Path) -> None:
    counts = _counts(run)
    counts.to_csv(run / COUNTS, sep=",")


def _gzip_named_plain(run: Path) -> None:
    data = (run / COUNTS).read_bytes()
    (run / COUNTS).write_bytes(gzip.compress(data, mtime=0))


def _featurecounts_other_names(run: Path) -> None:
    _featurecounts(run)
    text = (run / COUNTS).read_text().replace(".bam", ".sorted.bam")
    (run / COUNTS).write_text(text)


def _estimated(run: Path) -> None:
    # salmon/tximport-style estimates: the fixture's counts plus |noise| < 0.5 where non-zero
    counts = _counts(run).astype(float)
    noise = np.random.default_rng(3).uniform(-0.49, 0.49, counts.shape)
    (counts + np.where(counts.to_numpy() > 0, noise, 0.0)).to_csv(run / COUNTS, sep="\t", float_format="%.5f")


def _unclosed_quote(run: Path) -> None:
    lines = (run / COUNTS).read_text().splitlines()
    fields = lines[5].split("\t")  # file line 6
    fields[3] = '"' + fields[3]
    lines[5] = "\t".join(fields)
    (run / COUNTS).write_text("\n".join(lines) + "\n")


def _extra_field(run: Path) -> None:
    lines = (run / COUNTS).read_text().splitlines()
    lines[4] += "\t17"  # file line 5
    (run / COUNTS).write_text("\n".join(lines) + "\n")


def _trailing_tab(run: Path) -> None:
    # a spreadsheet's stray empty last column: every line ends in a tab
    lines = (run / COUNTS).read_text().splitlines()
    (run / COUNTS).write_text("\n".join(line + "\t" for line in lines) + "\n")


def _xlsx(run: Path) -> None:
    (run / SAMPLES).write_bytes(b"PK\x03\x04" + bytes(200))


def _empty(run: Path) -> None:
    (run / COUNTS).write_bytes(b"")


def _gz_named_plain(run: Path) -> None:
    (run / "data/counts.tsv.gz").write_bytes((run / COUNTS).read_bytes())
    _config(run, expression="data/counts.tsv.gz")


def _latin1(run: Path) -> None:
    text = (run / SAMPLES).read_text().replace("TruSeq", "TruSeq Müller", 1)
    (run / SAMPLES).write_bytes(text.encode("latin-1"))


def _duplicate_gene(counts):
    ids = list(counts.index)
    ids[7] = ids[3]
    counts.index = pd.Index(ids, name="gene_id")
    return counts


def _negative(counts):
    counts.iloc[30, 2] = -4
    return counts


def _missing_count(run: Path) -> None:
    lines = (run / COUNTS).read_text().splitlines()
    fields = lines[40].split("\t")  # file line 41
    fields[5] = "NA"
    lines[40] = "\t".join(fields)
    (run / COUNTS).write_text("\n".join(lines) + "\n")


def _sheet_sample_missing_from_table(counts):
    return counts.drop(columns=[counts.columns[4]])


def _parquet(run: Path) -> None:
    _counts(run).reset_index().to_parquet(run / "data/counts.parquet", index=False)
    _config(run, expression="data/counts.parquet")


def _h5ad_without_sheet(run: Path) -> None:
    shutil.copy(READERS / "fixture_sparse.h5ad", run / "data/experiment.h5ad")
    cfg = yaml.safe_load((run / CONFIG).read_text())
    cfg["expression"] = "data/experiment.h5ad"
    cfg["samples"] = None  # the file's obs is the sheet (config/config.yaml's own sheet must be overridden)
    (run / CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))


def _excel_export(run: Path) -> None:
    # Excel's "CSV UTF-8": a byte-order mark and CRLF line ends; a success, not an error.
    text = (run / SAMPLES).read_text().replace("\n", "\r\n")
    (run / SAMPLES).write_bytes(b"\xef\xbb\xbf" + text.encode())


# ----------------------------------------------------------------------------------------------------
# The corpus

CASES: list[Case] = [
    # 1. made-up numbers
    Case(
        "one sample per batch",
        "made_up",
        _edit_sheet(_one_sample_per_batch),
        "error",
        [SAMPLES, "Batch", "single sample", "(1|Batch)"],
    ),
    Case("three samples in all", "made_up", _three_samples, "error", [SAMPLES, "3 samples", "residual"]),
    Case(
        "fixed effect aliased with the random term",
        "made_up",
        _set_config(model="~ Batch + (1|Batch)"),
        "error",
        ["Batch", "aliased", "(1|Batch)"],
    ),
    Case(
        "condition equal to batch",
        "made_up",
        _both(_edit_sheet(_condition_is_batch), _set_config(model="~ Site + (1|Batch)")),
        "error",
        ["Site", "Batch", "aliased"],
    ),
    Case(
        "more coefficients than samples",
        "made_up",
        _both(_edit_sheet(_donor_per_sample), _set_config(model="~ Donor + (1|Batch)")),
        "error",
        ["Donor", "residual"],
    ),
    # 2. a run that would lose every gene
    Case("every gene filtered", "loses_genes", _set_config(filter={"min_count": 10**9}), "ok"),
    # 3. late errors
    Case(
        "simpson.adjust_for column not in the sheet",
        "late",
        _set_config(simpson={"adjust_for": ["Treatment"]}),
        "error",
        [SAMPLES, "Treatment", "adjust_for"],
    ),
    Case(
        "all-zero sample",
        "late",
        _edit_counts(_all_zero_sample),
        "error",
        [COUNTS, "Series1_NHBE_SARS-CoV-2_3", "zero"],
    ),
    Case("header-only table", "late", _header_only, "error", [COUNTS, "no gene"]),
    Case("single-gene table", "late", _edit_counts(_single_gene), "error", [COUNTS, "1 gene"]),
    Case("ids that read as missing values", "late", _edit_counts(_na_like_ids), "ok"),
    # 4. errors that did not help
    # featureCounts output is read as it is (sample ids from the BAM names); the message explains a mismatch
    Case("featureCounts output", "inputs", _featurecounts, "ok"),
    Case(
        "featureCounts BAM names that are not the sample ids",
        "unhelpful",
        _featurecounts_other_names,
        "error",
        [COUNTS, "featureCounts", "featurecounts_samples", "'Series1_NHBE_Mock_1.sorted'"],
    ),
    Case(
        "R write.table header one field short",
        "unhelpful",
        _r_write_table,
        "error",
        [COUNTS, "header", "one field fewer", "gene_id"],
    ),
    Case("line number after a blank line", "unhelpful", _blank_line_then_text, "error", [COUNTS, "line 9", "oops"]),
    Case("infinite value", "unhelpful", _infinite, "error", [COUNTS, "infinite", "sample "]),
    Case(
        "sample id with trailing whitespace",
        "unhelpful",
        _edit_sheet(_whitespace_ids),
        "error",
        [SAMPLES, "'Series1_NHBE_Mock_3 '"],
    ),
    Case("a directory as the table", "unhelpful", _directory, "error", ["data/counts_dir", "directory"]),
    Case("schema error", "unhelpful", _set_config(reml="maybe"), "error", ["reml", "maybe", "boolean"]),
    Case("config key typo", "unhelpful", _set_config(modle="~ Infection"), "error", ["modle"]),
    Case("UTF-16 sample sheet", "unhelpful", _utf16, "error", [SAMPLES, "UTF-16", "UTF-8"]),
    Case("CSV content in a .tsv file", "unhelpful", _csv_named_tsv, "error", [COUNTS, "comma"]),
    Case("gzip content without .gz", "unhelpful", _gzip_named_plain, "error", [COUNTS, "gzip", ".gz"]),
    Case("unclosed quote", "unhelpful", _unclosed_quote, "error", [COUNTS, "line 6", "quote"]),
    Case("a row with an extra field", "unhelpful", _extra_field, "error", [COUNTS, "line 5", "fields"]),
    Case("trailing tab on every line", "unhelpful", _trailing_tab, "error", [COUNTS, "empty", "column"]),
    Case("Excel workbook as the sample sheet", "unhelpful", _xlsx, "error", [SAMPLES, "Excel", "tab-separated"]),
    Case("empty expression file", "unhelpful", _empty, "error", [COUNTS, "empty"]),
    Case(".gz name without gzip content", "unhelpful", _gz_named_plain, "error", ["data/counts.tsv.gz", "not gzip"]),
    Case("Latin-1 sample sheet", "unhelpful", _latin1, "error", [SAMPLES, "not UTF-8", "save it as UTF-8"]),
    Case(
        "duplicate gene id",
        "unhelpful",
        _edit_counts(_duplicate_gene),
        "error",
        [COUNTS, "duplicate gene ids", "line 5", "line 9"],
    ),
    Case(
        "negative count",
        "unhelpful",
        _edit_counts(_negative),
        "error",
        [COUNTS, "negative counts", "line 32", "sample 'Series1_NHBE_Mock_3'", "input_type: log"],
    ),
    Case("missing count", "unhelpful", _missing_count, "error", [COUNTS, "missing values", "line 41"]),
    Case(
        "sheet sample without a column",
        "unhelpful",
        _edit_counts(_sheet_sample_missing_from_table),
        "error",
        [SAMPLES, COUNTS, "'Series1_NHBE_SARS-CoV-2_2'", "must match"],
    ),
    Case(
        "estimated counts declared as counts",
        "inputs",
        _estimated,
        "error",
        [COUNTS, "non-integer counts", "sample '", "input_type: estimated_counts"],
    ),
    Case(
        "unknown input_type",
        "unhelpful",
        _set_config(input_type="fpkm"),
        "error",
        ["input_type", "fpkm", "estimated_counts", "log"],
    ),
    Case("batch column not in the sheet", "unhelpful", _set_config(batch="Run"), "error", [SAMPLES, "Run", "batch"]),
    # inputs that people have
    Case("estimated counts", "inputs", _both(_estimated, _set_config(input_type="estimated_counts")), "ok"),
    Case("Parquet table", "inputs", _parquet, "ok"),
    Case("AnnData .h5ad without a sample sheet", "inputs", _h5ad_without_sheet, "ok"),
    # awkward but valid
    Case("Excel CSV export: BOM and CRLF", "awkward", _excel_export, "ok"),
]
