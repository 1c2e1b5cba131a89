"""The split and the gather of the LMM stage: gene ranges per chunk; tables streamed under one header."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from batchmix.io import read_matrix, table_writer, write_table
from batchmix.io.matrices import genes_per_row_group, write_matrix
from batchmix.pipeline import lmm as pipeline_lmm
from batchmix.pipeline.lmm import gather_lmm_stage, split_genes_stage

HEADER = "gene_id\ts1\ts2\n"
# Cells in the formats write_table gives them (%.12g, NA, -0, exponents), kept as written.
GENE_LINES = [
    "g1\t1.5\tNA\n",
    "g2\t-0\t3\n",
    "g3\t1e-300\t-2.5e+20\n",
    "007\t0.333333333333\tinf\n",
    "g5\t8\t9\n",
    "1e5\t10\t11\n",
    "g7\t12\t13\n",
]


def fixed_gzip(text: bytes) -> bytes:
    """The gzip bytes the workflow writes, built by hand: header with mtime 0, no file name, XFL 0 and
    OS 255 (unknown), one level-6 raw deflate stream, CRC-32 and length."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(text) + deflate.flush()
    return (
        b"\x1f\x8b\x08\x00"
        + struct.pack("<I", 0)
        + b"\x00\xff"
        + body
        + struct.pack("<II", zlib.crc32(text), len(text))
    )


def write_expression(tmp_path, gene_lines=GENE_LINES):
    expression = tmp_path / "expression.tsv.gz"
    expression.write_bytes(fixed_gzip((HEADER + "".join(gene_lines)).encode()))
    status = tmp_path / "gene_status.tsv"
    status.write_text("gene_id\tstatus\n" + "".join(line.split("\t")[0] + "\tok\n" for line in gene_lines))
    return expression, status


def test_a_table_streamed_line_by_line_has_the_bytes_of_one_deflate_stream(tmp_path):
    text = (HEADER + "".join(GENE_LINES) * 500).encode()
    with table_writer(tmp_path / "streamed.tsv.gz") as fh:
        for line in text.splitlines(keepends=True):
            fh.write(line)
    assert (tmp_path / "streamed.tsv.gz").read_bytes() == fixed_gzip(text)


def test_write_table_gzip_has_the_fixed_header_and_one_deflate_stream(tmp_path):
    write_table(pd.DataFrame({"a": [1.0, 2.5], "b": ["x", "y"]}), tmp_path / "table.tsv.gz")
    assert (tmp_path / "table.tsv.gz").read_bytes() == fixed_gzip(b"a\tb\n1\tx\n2.5\ty\n")


@pytest.mark.parametrize(
    ("n_chunks", "sizes"),
    [(1, [7]), (3, [3, 2, 2]), (4, [2, 2, 2, 1]), (9, [1, 1, 1, 1, 1, 1, 1, 0, 0])],
)
def test_split_writes_each_chunks_consecutive_gene_range(tmp_path, monkeypatch, n_chunks, sizes):
    # with fit blocks of one gene, the chunks are numpy.array_split of the genes
    monkeypatch.setattr(pipeline_lmm, "FIT_BLOCK_GENES", 1)
    _, status = write_expression(tmp_path)
    chunks = [tmp_path / f"{i}-of-{n_chunks}.genes.json" for i in range(1, n_chunks + 1)]
    split_genes_stage({}, {"gene_status": str(status)}, {"chunks": [str(c) for c in chunks]}, {})
    genes = [line.split("\t")[0] for line in GENE_LINES]
    start = 0
    for chunk, size in zip(chunks, sizes):
        spec = json.loads(chunk.read_text())
        assert (spec["start"], spec["stop"], spec["n_genes"]) == (start, start + size, 7), chunk.name
        assert spec["first_gene"] == (genes[start] if size else None)
        assert spec["last_gene"] == (genes[start + size - 1] if size else None)
        start += size


def test_chunks_hold_whole_fit_blocks_so_the_tables_do_not_depend_on_the_chunk_count():
    # the blocks shared out as numpy.array_split shares genes; the last block is short
    assert pipeline_lmm.chunk_ranges(7, 3, block_genes=2) == [(0, 4), (4, 6), (6, 7)]
    assert pipeline_lmm.chunk_ranges(20_000, 4) == [(0, 6000), (6000, 12000), (12000, 16000), (16000, 20000)]
    assert pipeline_lmm.chunk_ranges(3, 2, block_genes=2) == [(0, 2), (2, 3)]
    assert pipeline_lmm.chunk_ranges(3, 3, block_genes=2) == [(0, 2), (2, 3), (3, 3)]
    # every block starts at a multiple of the block size whatever the chunk count
    for n_chunks in (1, 2, 3, 5, 8):
        for start, stop in pipeline_lmm.chunk_ranges(21_797, n_chunks):
            assert start % pipeline_lmm.FIT_BLOCK_GENES == 0 and (stop == 21_797 or stop % 2000 == 0)
    # ... and the Parquet matrices' row groups are fit blocks, so a chunk job reads only its genes
    assert genes_per_row_group(21_797) == pipeline_lmm.FIT_BLOCK_GENES == 2000


@pytest.mark.parametrize("out_name", ["corrected.tsv.gz", "corrected.parquet"])
def test_gather_concatenates_blups_and_corrected_chunks_under_one_header(tmp_path, out_name):
    expression, status = write_expression(tmp_path)
    blups = [tmp_path / "1.blups.tsv", tmp_path / "2.blups.tsv", tmp_path / "3.blups.tsv"]
    blups[0].write_text("gene_id\tgroup\tlevel\tterm\tvalue\ng1\tBatch\tB1\t(Intercept)\t0.5\n")
    blups[1].write_text("gene_id\tgroup\tlevel\tterm\tvalue\n")  # a chunk whose genes have no BLUPs
    blups[2].write_text("gene_id\tgroup\tlevel\tterm\tvalue\n007\tBatch\t01\t(Intercept)\t-0\n")
    # the chunks' corrected expression is Parquet (an intermediate), cut unevenly, one chunk empty
    whole = read_matrix(expression)
    corrected = [tmp_path / f"{i}.corrected.parquet" for i in (1, 2, 3)]
    for path, part in zip(corrected, [whole.iloc[:3], whole.iloc[3:3], whole.iloc[3:]]):
        write_matrix(part, path)
    fits = tmp_path / "fits.tsv"
    fits.write_text("gene_id\tstatus\n" + "".join(line.split("\t")[0] + "\tok\n" for line in GENE_LINES))
    out = {
        "gene_fits": str(tmp_path / "gene_fits.tsv"),
        "blups": str(tmp_path / "blups.tsv"),
        "corrected": str(tmp_path / out_name),
    }
    config = {"moderate": {"enabled": False}}
    inputs = {
        "fits": [str(fits)],
        "blups": [str(b) for b in blups],
        "corrected": [str(c) for c in corrected],
        "gene_status": str(status),
    }
    gather_lmm_stage(config, inputs, out, {})
    assert (tmp_path / "blups.tsv").read_text() == (
        "gene_id\tgroup\tlevel\tterm\tvalue\ng1\tBatch\tB1\t(Intercept)\t0.5\n007\tBatch\t01\t(Intercept)\t-0\n"
    )
    if out_name.endswith(".tsv.gz"):
        # the text every cell had in the chunks' old TSV: -0, 1e-300, inf and NA survive Parquet
        assert (tmp_path / out_name).read_bytes() == fixed_gzip((HEADER + "".join(GENE_LINES)).encode())
    else:
        back = pd.read_parquet(tmp_path / out_name)
        assert back.index.tolist() == ["g1", "g2", "g3", "007", "g5", "1e5", "g7"]
        np.testing.assert_array_equal(back.to_numpy(), whole.to_numpy())


def test_gather_refuses_chunks_with_different_columns(tmp_path):
    _, status = write_expression(tmp_path, GENE_LINES[:1])
    fits = tmp_path / "fits.tsv"
    fits.write_text("gene_id\tstatus\ng1\tok\n")
    blups = [tmp_path / "1.blups.tsv", tmp_path / "2.blups.tsv"]
    blups[0].write_text("gene_id\tgroup\tlevel\tterm\tvalue\n")
    blups[1].write_text("gene_id\tgroup\tlevel\tvalue\n")
    out = {"gene_fits": str(tmp_path / "gene_fits.tsv"), "blups": str(tmp_path / "blups.tsv")}
    with pytest.raises(RuntimeError, match="other columns.*rerun with --forcerun lmm_chunk"):
        gather_lmm_stage(
            {"moderate": {"enabled": False}},
            {"fits": [str(fits)], "blups": [str(b) for b in blups], "corrected": [], "gene_status": str(status)},
            out,
            {},
        )


def test_chunk_matrices_keep_gene_ids_that_look_like_numbers(tmp_path):
    expression, _ = write_expression(tmp_path)
    assert read_matrix(expression).index.tolist() == ["g1", "g2", "g3", "007", "g5", "1e5", "g7"]
