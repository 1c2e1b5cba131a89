"""Matrices on disk (batchmix.io.matrices): Parquet with gene row groups, tsv.gz and h5ad hold the same numbers."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from batchmix.io import read_matrix, read_result_table, write_table
from batchmix.io.matrices import (
    MatrixWriter,
    genes_per_row_group,
    iter_matrix_rows,
    matrix_shape,
    read_matrix_rows,
    read_parquet_table,
    round_significant,
    table_round_trip,
    write_matrix,
    write_parquet_table,
)

IDS = ["007", "1e5", "NA", "g 4", "0x1"]


def matrix(n_genes=2500, n_samples=6, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.normal(8, 3, (n_genes, n_samples)) * 10.0 ** rng.integers(-4, 4, (n_genes, 1))
    values[3, 2] = np.nan
    values[4, 0] = -0.0
    genes = IDS + [f"g{i}" for i in range(len(IDS), n_genes)]
    return pd.DataFrame(values, index=pd.Index(genes, name="gene_id"), columns=[f"s{j}" for j in range(n_samples)])


def test_round_significant_is_the_text_round_trip_of_twelve_digits():
    rng = np.random.default_rng(4)
    values = np.concatenate(
        [
            rng.normal(8, 3, 50_000),
            10.0 ** rng.uniform(-320, 300, 5_000),
            -(10.0 ** rng.uniform(-20, 20, 5_000)),
            [0.5, 1e12, 123456789012.5, 9.99999999999951, 1.0000000000005, 5e-324, np.nan, np.inf, -np.inf, 0.0],
        ]
    )
    expected = np.array([float(f"{v:.12g}") for v in values])
    np.testing.assert_array_equal(round_significant(values), expected)


@pytest.mark.parametrize("suffix", [".parquet", ".h5ad", ".tsv"])
def test_every_format_holds_the_numbers_the_gzipped_text_table_shows(tmp_path, suffix):
    m = matrix()
    write_table(m, tmp_path / "reference.tsv.gz", index=True)
    write_matrix(m, tmp_path / f"m{suffix}")
    text, other = read_matrix(tmp_path / "reference.tsv.gz"), read_matrix(tmp_path / f"m{suffix}")
    assert other.index.tolist() == m.index.tolist() and other.columns.tolist() == m.columns.tolist()
    np.testing.assert_array_equal(other.to_numpy(), text.to_numpy())
    np.testing.assert_allclose(other.to_numpy(), m.to_numpy(), rtol=1e-11)


def test_a_matrix_written_in_blocks_is_the_file_written_at_once(tmp_path):
    m = matrix()
    write_table(m, tmp_path / "at_once.tsv.gz", index=True)
    for suffix in (".tsv.gz", ".parquet"):
        with MatrixWriter(tmp_path / f"blocks{suffix}", m.columns, n_genes=len(m)) as writer:
            for g0, size in ((0, 1), (1, 999), (1000, 1), (1001, 1499)):
                writer.write(m.iloc[g0 : g0 + size])
        write_matrix(m, tmp_path / f"whole{suffix}")
        assert (tmp_path / f"blocks{suffix}").read_bytes() == (tmp_path / f"whole{suffix}").read_bytes()
    assert (tmp_path / "blocks.tsv.gz").read_bytes() == (tmp_path / "at_once.tsv.gz").read_bytes()


def test_parquet_has_gene_row_groups_and_a_range_reads_only_its_groups(tmp_path, monkeypatch):
    m = matrix(n_genes=4500)
    write_matrix(m, tmp_path / "m.parquet")
    meta = pq.ParquetFile(tmp_path / "m.parquet").metadata
    assert genes_per_row_group(4500) == 2000
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2000, 2000, 500]
    assert matrix_shape(tmp_path / "m.parquet") == (4500, 6)

    read_groups = []
    original = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_groups",
        lambda self, groups, **kw: read_groups.append(list(groups)) or original(self, groups, **kw),
    )
    part = read_matrix_rows(tmp_path / "m.parquet", 1950, 2100)
    assert read_groups == [[0, 1]]
    np.testing.assert_array_equal(part.to_numpy(), read_matrix(tmp_path / "m.parquet").iloc[1950:2100].to_numpy())
    assert part.index.tolist() == m.index[1950:2100].tolist()
    read_groups.clear()
    read_matrix_rows(tmp_path / "m.parquet", 2000, 4000)  # a chunk of whole LMM fit blocks: its group only
    assert read_groups == [[1]]
    blocks = list(iter_matrix_rows(tmp_path / "m.parquet"))
    assert [len(b) for b in blocks] == [2000, 2000, 500]


def test_pandas_and_h5py_open_the_files_with_their_ids_verbatim(tmp_path):
    m = matrix(n_genes=40)
    write_matrix(m, tmp_path / "m.parquet")
    opened = pd.read_parquet(tmp_path / "m.parquet")
    assert opened.index.name == "gene_id" and opened.index.tolist()[:5] == IDS
    assert pq.ParquetFile(tmp_path / "m.parquet").schema_arrow.names[:2] == ["gene_id", "s0"]

    write_matrix(m, tmp_path / "m.h5ad")
    with h5py.File(tmp_path / "m.h5ad", "r") as h5:
        assert h5.attrs["encoding-type"] == "anndata"
        assert h5["X"].shape == (6, 40)  # AnnData's orientation: samples x genes
        assert [g.decode() for g in h5["var/_index"][:5]] == IDS
        assert h5["obs"].attrs["encoding-type"] == "dataframe"


def test_a_writer_refuses_other_samples_or_too_many_genes(tmp_path):
    m = matrix(n_genes=10)
    with (
        pytest.raises(ValueError, match="columns differ"),
        MatrixWriter(tmp_path / "a.parquet", ["x"], n_genes=10) as w,
    ):
        w.write(m)
    with (
        pytest.raises(ValueError, match="more than the 5 genes"),
        MatrixWriter(tmp_path / "b.parquet", m.columns, n_genes=5) as w,
    ):
        w.write(m)


@pytest.mark.parametrize("order", ["C", "F"])
def test_round_significant_keeps_the_layout_of_a_matrix(order):
    values = np.asarray(matrix(n_genes=3000).to_numpy(), order=order)
    expected = np.array([[float(f"{v:.12g}") for v in row] for row in values])
    np.testing.assert_array_equal(round_significant(values), expected)


def test_table_round_trip_gives_what_a_tsv_table_reads_back(tmp_path):
    """The doubles read_result_table gives for a write_table column, bit for bit, including
    magnitudes whose parse by pandas scales by an inexact power of ten."""
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [
            rng.normal(0, 1, 20_000) * 10.0 ** rng.integers(-12, 13, 20_000),
            10.0 ** rng.uniform(-320, 300, 20_000),
            -(10.0 ** rng.uniform(-80, -9, 5_000)),
            [0.5, 1e11, 1e-10, 123456789012.5, 9.99999999999951, 5e-324, np.nan, np.inf, -np.inf, 0.0, -0.0],
        ]
    )
    write_table(pd.DataFrame({"gene_id": [f"g{i}" for i in range(values.size)], "x": values}), tmp_path / "t.tsv")
    expected = read_result_table(tmp_path / "t.tsv")["x"].to_numpy()
    got = table_round_trip(values)
    assert np.array_equal(got.view(np.int64), expected.view(np.int64))


def test_a_parquet_table_keeps_its_columns_and_metadata(tmp_path):
    table = pd.DataFrame(
        {
            "gene_id": ["007", "NA", "1e5"],
            "status": ["ok", "filtered:x", "ok"],
            "v": [0.5, np.nan, -0.0],
            "n": [1, 2, 3],
        }
    )
    write_parquet_table(table, tmp_path / "t.parquet", {"samples": ["s1", "s2"]})
    back, meta = read_parquet_table(tmp_path / "t.parquet")
    assert meta == {"samples": ["s1", "s2"]}
    assert back["gene_id"].tolist() == ["007", "NA", "1e5"] and back["status"].tolist() == table["status"].tolist()
    assert np.array_equal(back["v"].to_numpy().view(np.int64), table["v"].to_numpy().view(np.int64))
    assert back["n"].tolist() == [1, 2, 3]


@pytest.mark.parametrize("suffix", [".parquet", ".tsv.gz", ".h5ad"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_values_written_as_an_array_are_the_file_of_the_frame(tmp_path, suffix, order):
    frame = matrix(n_genes=1500)
    write_matrix(frame, tmp_path / f"frame{suffix}")
    values = np.asarray(frame.to_numpy(), order=order)
    with MatrixWriter(tmp_path / f"array{suffix}", list(frame.columns), n_genes=len(frame)) as writer:
        for g0 in range(0, len(frame), 700):
            writer.write_values(frame.index[g0 : g0 + 700].tolist(), values[g0 : g0 + 700])
    if suffix == ".h5ad":
        array, frame_back = read_matrix(tmp_path / f"array{suffix}"), read_matrix(tmp_path / f"frame{suffix}")
        pd.testing.assert_frame_equal(array, frame_back)
    else:
        assert (tmp_path / f"array{suffix}").read_bytes() == (tmp_path / f"frame{suffix}").read_bytes()
