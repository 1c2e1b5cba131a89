"""Genes × samples matrices on disk: Parquet (the default), tab-separated text and AnnData ``.h5ad``.

The stabilised and the batch-corrected expression are the workflow's big tables. Between stages
they travel as Parquet: typed float64 columns, read without parsing text, and cut into **row
groups of genes** so that a job that needs a range of genes (one LMM chunk) reads only the row
groups that hold them (:func:`read_matrix_rows`). The layout, for every format:

- Parquet: a ``gene_id`` column (text) first, then one float64 column per sample, named by the
  sample id; one row per gene, in the input's order. Missing values are NaN. The file carries
  pandas metadata naming ``gene_id`` as the index, so ``pandas.read_parquet(path)`` gives the
  matrix with its gene ids as index; R: ``arrow::read_parquet(path)`` (``gene_id`` is a column).
- ``.tsv``/``.tsv.gz``: ``gene_id`` then the samples, ``%.12g``, ``NA`` for missing: the same bytes
  as :func:`batchmix.io.write_table` gives (gzip with a fixed timestamp).
- ``.h5ad``: AnnData's on-disk layout written with h5py (AnnData's orientation, samples × genes:
  ``X`` dense float64, ``obs`` the samples, ``var`` the genes); ``anndata.read_h5ad(path)`` or
  ``scanpy.read_h5ad(path)`` open it.

The format is chosen by the file name (:func:`matrix_format`). This module depends on no other
batchmix module, so that :func:`batchmix.io.read_matrix` can hand binary files to it.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "MATRIX_FORMATS",
    "SIGNIFICANT_DIGITS",
    "round_significant",
    "matrix_format",
    "matrix_suffix",
    "ROW_GROUP_GENES",
    "genes_per_row_group",
    "MatrixWriter",
    "write_matrix",
    "read_matrix_file",
    "read_matrix_rows",
    "matrix_shape",
    "matrix_index",
    "iter_matrix_rows",
    "iter_parquet_row_groups",
    "table_round_trip",
    "write_parquet_table",
    "read_parquet_table",
]

# The formats of the config key outputs.matrices, by the suffix their files get.
MATRIX_FORMATS = {"parquet": ".parquet", "tsv.gz": ".tsv.gz", "h5ad": ".h5ad"}

# Key of the schema metadata that marks a Parquet file as a batchmix matrix.
_PARQUET_KEY = b"batchmix"


def matrix_format(path: str | Path) -> str:
    """The format of a matrix file from its name: ``parquet``, ``tsv.gz``, ``tsv`` or ``h5ad``."""
    name = Path(path).name.lower()
    for fmt, suffix in (("parquet", ".parquet"), ("h5ad", ".h5ad"), ("tsv.gz", ".tsv.gz"), ("tsv", ".tsv")):
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: not a matrix file name; use .parquet, .tsv.gz, .tsv or .h5ad")


def matrix_suffix(fmt: str) -> str:
    """The file suffix of the config's ``outputs.matrices`` format (``parquet`` → ``.parquet``)."""
    try:
        return MATRIX_FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown matrix format {fmt!r}; use one of {', '.join(MATRIX_FORMATS)}") from None


# Genes per Parquet row group when a matrix has at most 64 of them: the LMM's fit block
# (batchmix.pipeline.lmm.FIT_BLOCK_GENES, 2,000 genes), at whose multiples its chunks start and stop,
# so that a chunk job reads exactly its genes. Larger groups than the earlier 1,024 also cost less
# to write and read (Arrow's per-column-chunk work is paid half as often): 9.9 against 13.9 µs per
# gene of 500 samples to write, 7.2 against 10.0 to read (benchmarks/bench_matrix_io.py).
ROW_GROUP_GENES = 2000


def genes_per_row_group(n_genes: int) -> int:
    """Genes per Parquet row group: :data:`ROW_GROUP_GENES`, or more so that a matrix has at most 64.

    Groups of genes let a chunk job read little more than its genes; the cap keeps the file footer
    (one entry per column and row group) small when there are tens of thousands of samples.
    """
    return max(ROW_GROUP_GENES, math.ceil(n_genes / 64))


# Significant digits the matrices carry: the 12 that the text tables (``%.12g``) always carried
# between stages, so that every number computed from them is the same whichever format is used.
SIGNIFICANT_DIGITS = 12


def round_significant(values: np.ndarray, digits: int = SIGNIFICANT_DIGITS) -> np.ndarray:
    """``values`` rounded to ``digits`` significant digits, exactly as ``float(f"{v:.{digits}g}")``.

    The text round trip gives the double nearest to the printed decimal. Vectorised: with
    ``k = digits - 1 - floor(log10|v|)``, ``rint(v * 10**k) / 10**k`` is that double whenever
    ``10**k`` is exact (0 ≤ k ≤ 22) and ``v * 10**k`` is not within rounding error of a tie; the
    other values (ties, huge or tiny magnitudes, a ``log10`` off by one at a power of ten) go
    through the text round trip itself.

    Returns
    -------
    numpy.ndarray
        A new float64 array of the same shape; NaN and infinities unchanged.

    A contiguous array is rounded :data:`_ROUND_BLOCK` values at a time (element by element the
    same operations, so the same doubles), which keeps the temporaries in the cache.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size > _ROUND_BLOCK and (v.flags.c_contiguous or v.flags.f_contiguous):
        out = np.empty_like(v)  # the same memory order as v
        flat_v, flat_out = (
            (v.reshape(-1), out.reshape(-1)) if v.flags.c_contiguous else (v.T.reshape(-1), out.T.reshape(-1))
        )
        for start in range(0, flat_v.size, _ROUND_BLOCK):
            flat_out[start : start + _ROUND_BLOCK] = _round_values(flat_v[start : start + _ROUND_BLOCK], digits)
        return out
    return _round_values(v, digits)


# Values per block of round_significant (256 KB of float64 per temporary).
_ROUND_BLOCK = 1 << 15


def _round_values(v: np.ndarray, digits: int) -> np.ndarray:
    """:func:`round_significant` of ``v`` in one pass of whole-array operations."""
    # NaN, infinities and zeros give a non-finite k and take the slow path's "stay as they are"; the
    # warnings their arithmetic raises on the way say nothing
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        k = (digits - 1) - np.floor(np.log10(np.abs(v)))
        finite = np.isfinite(k)
        k_int = np.where(finite, k, 0.0).astype(np.int64)
        fast = finite & (k_int >= 0) & (k_int <= 22)
        scale = _POWERS_OF_TEN[np.clip(k_int, 0, 22)]
        scaled = v * scale
        r = np.rint(scaled)
        frac = np.abs(scaled - np.trunc(scaled))
        lo, hi = 10.0 ** (digits - 1), 10.0**digits
        # a tie within the product's rounding error (|scaled| < 1e12: an ulp is below 2e-4), or r
        # with another number of digits than asked: the text round trip decides
        abs_r = np.abs(r)
        fast &= (np.abs(frac - 0.5) > 1e-3) & (abs_r >= lo) & (abs_r < hi)
        out = np.where(fast, r / scale, v)
    slow = finite & ~fast
    if slow.any():  # a boolean mask: right for C- and Fortran-ordered matrices alike
        out[slow] = [float(f"{x:.{digits}g}") for x in v[slow]]
    return out


# 10**k for k = 0..22: every one is exact in float64.
_POWERS_OF_TEN = np.array([10.0**k for k in range(23)])


def table_round_trip(values: np.ndarray) -> np.ndarray:
    """The doubles a batchmix TSV table gives back for ``values``: written ``%.12g``, read by pandas.

    :func:`batchmix.io.read_result_table` parses with pandas' C parser, which scales the printed
    digits by a power of ten: exact, and so equal to :func:`round_significant`, whenever that power
    is (magnitudes from 1e-10 to 1e11 with 12 digits); beyond that it can land an ulp away from
    the nearest double, so those values are printed and parsed by pandas itself. Lets a binary
    intermediate carry exactly the numbers its TSV would have carried.

    Returns
    -------
    numpy.ndarray
        A new float64 array of the same shape; NaN, zeros (with their sign) and infinities unchanged.
    """
    out = round_significant(values)
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        a = np.abs(v)
        far = np.isfinite(v) & (a != 0) & ((a < 1e-10) | (a >= 1e11))
    if far.any():
        import io

        text = "x\n" + "\n".join(f"{x:.{SIGNIFICANT_DIGITS}g}" for x in v[far].tolist()) + "\n"
        parsed = pd.read_csv(io.StringIO(text), sep="\t", keep_default_na=False, na_values={"x": ["NA"]})["x"]
        out[far] = parsed.to_numpy(dtype=np.float64)
    return out


class MatrixWriter:
    """Write a genes × samples matrix a block of genes at a time, in any of the formats.

    Memory holds one block (for ``.h5ad``, only the gene ids are kept until the end). The
    result is the same file as :func:`write_matrix` of the whole matrix, for any cut into blocks.
    Every format carries :data:`SIGNIFICANT_DIGITS` significant digits (:func:`round_significant`):
    a Parquet or ``.h5ad`` matrix holds exactly the numbers its ``.tsv.gz`` would show.

    Parameters
    ----------
    path : str or Path
        The file; the format follows its name (:func:`matrix_format`). Parent directories are created.
    samples : sequence of str
        The sample ids, in column order.
    n_genes : int
        The total number of genes (sets the Parquet row groups and the ``.h5ad`` dataset shape).
    significant_digits : int or None
        Digits the values are rounded to (:func:`round_significant`); None: as given, for blocks
        read from matrices that were rounded when they were written.

    Examples
    --------
    >>> with MatrixWriter("out.parquet", samples, n_genes=len(genes)) as writer:  # doctest: +SKIP
    ...     for block in blocks:
    ...         writer.write(block)
    """

    def __init__(
        self,
        path: str | Path,
        samples: Sequence[str],
        *,
        n_genes: int,
        significant_digits: int | None = SIGNIFICANT_DIGITS,
    ):
        self.path = Path(path)
        self.format = matrix_format(self.path)
        self.samples = [str(s) for s in samples]
        self.n_genes = int(n_genes)
        self.significant_digits = significant_digits
        self.genes_written = 0
        self._stack = contextlib.ExitStack()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.format == "parquet":
            self._open_parquet()
        elif self.format == "h5ad":
            self._open_h5ad()
        else:
            raw = self._stack.enter_context(open(self.path, "wb"))
            # As batchmix.io.table_writer: no file name and time 0 in the gzip header, level 6,
            # so that a rerun gives the same bytes.
            self._text = (
                self._stack.enter_context(gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0))
                if self.format == "tsv.gz"
                else raw
            )
            self._text.write(("\t".join(["gene_id", *self.samples]) + "\n").encode())

    def _open_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        fields = [pa.field("gene_id", pa.string())] + [pa.field(s, pa.float64()) for s in self.samples]
        pandas_meta = {
            "index_columns": ["gene_id"],
            "column_indexes": [],
            "columns": [
                {"name": name, "field_name": name, "pandas_type": kind, "numpy_type": dtype, "metadata": None}
                for name, kind, dtype in [("gene_id", "unicode", "object")]
                + [(s, "float64", "float64") for s in self.samples]
            ],
            "creator": {"library": "batchmix"},
            "pandas_version": pd.__version__,
        }
        meta = {
            b"pandas": json.dumps(pandas_meta).encode(),
            _PARQUET_KEY: json.dumps({"layout": "genes x samples", "index": "gene_id"}).encode(),
        }
        self._schema = pa.schema(fields, metadata=meta)
        self._rows_per_group = genes_per_row_group(self.n_genes)
        # No dictionary or statistics for the value columns: stabilised values are nearly all
        # distinct, and statistics per column and row group would bloat the footer.
        self._writer = self._stack.enter_context(
            pq.ParquetWriter(
                self.path,
                self._schema,
                # uncompressed: snappy saved nothing on float64 values (81.2 MB for 80 MB of
                # doubles at 20,000 x 500) and cost time on every write and read
                compression="none",
                use_dictionary=["gene_id"],
                write_statistics=False,
            )
        )
        self._pending: list = []
        self._pending_rows = 0

    def _open_h5ad(self) -> None:
        import h5py

        self._h5 = self._stack.enter_context(h5py.File(self.path, "w"))
        self._h5.attrs["encoding-type"] = "anndata"
        self._h5.attrs["encoding-version"] = "0.1.0"
        n_samples = len(self.samples)
        chunk_genes = max(1, min(self.n_genes, 2**17 // max(1, n_samples)))
        self._x = self._h5.create_dataset(
            "X",
            shape=(n_samples, self.n_genes),
            dtype="f8",
            chunks=(max(1, n_samples), chunk_genes) if self.n_genes and n_samples else None,
        )
        self._x.attrs["encoding-type"] = "array"
        self._x.attrs["encoding-version"] = "0.2.0"
        self._gene_ids: list[str] = []

    def write(self, block: pd.DataFrame) -> None:
        """Append the genes of ``block`` (index: gene ids; columns: exactly the writer's samples)."""
        if [str(c) for c in block.columns] != self.samples:
            raise ValueError(f"{self.path}: a block's columns differ from the matrix's samples")
        self.write_values([str(g) for g in block.index], block.to_numpy(dtype=np.float64))

    def write_values(self, genes: Sequence[str], values: np.ndarray) -> None:
        """Append genes given as their ids and a genes × samples float64 array (columns: the samples).

        The same file as :meth:`write` of the same rows; a column-major array goes to Parquet
        without copying its columns.
        """
        genes = [str(g) for g in genes]
        if values.shape != (len(genes), len(self.samples)):
            raise ValueError(f"{self.path}: {values.shape} values for {len(genes)} genes x {len(self.samples)} samples")
        if self.genes_written + len(genes) > self.n_genes:
            raise ValueError(f"{self.path}: more than the {self.n_genes} genes announced")
        values = np.asarray(values, dtype=np.float64)
        if self.significant_digits is not None:
            values = round_significant(values, self.significant_digits)
        if self.format == "parquet":
            self._write_parquet(genes, values)
        elif self.format == "h5ad":
            self._x[:, self.genes_written : self.genes_written + len(genes)] = values.T
            self._gene_ids.extend(genes)
        else:
            block = pd.DataFrame(values, index=pd.Index(genes, name="gene_id", dtype=object), columns=self.samples)
            text = block.to_csv(sep="\t", header=False, lineterminator="\n", float_format="%.12g", na_rep="NA")
            self._text.write(text.encode())
        self.genes_written += len(genes)

    def write_parquet_rows(self, table) -> None:
        """Append a row group (or any rows) of another Parquet matrix as it is, without pandas.

        For a Parquet writer that does not round (``significant_digits=None``: the rows were rounded
        when they were first written) and a ``pyarrow.Table`` with this matrix's columns (``gene_id``,
        then exactly the writer's samples, as :class:`MatrixWriter` writes them): the values go on bit
        for bit, so the file is the one :meth:`write` would give for the same rows.
        """
        if self.format != "parquet" or self.significant_digits is not None:
            raise ValueError(f"{self.path}: Arrow rows go only to an unrounded Parquet writer")
        if table.column_names != ["gene_id", *self.samples]:
            raise ValueError(f"{self.path}: a block's columns differ from the matrix's samples")
        if self.genes_written + table.num_rows > self.n_genes:
            raise ValueError(f"{self.path}: more than the {self.n_genes} genes announced")
        self._pending.append(self._pa.Table.from_arrays(table.columns, schema=self._schema))
        self._pending_rows += table.num_rows
        self.genes_written += table.num_rows
        while self._pending_rows >= self._rows_per_group:
            self._flush_parquet(self._rows_per_group)

    def _write_parquet(self, genes: list[str], values: np.ndarray) -> None:
        pa = self._pa
        columns = [pa.array(genes, type=pa.string())] + [
            # from_pandas=False: NaN stays a NaN value, bit for bit, rather than becoming a null
            pa.array(np.ascontiguousarray(values[:, j]), type=pa.float64())
            for j in range(values.shape[1])
        ]
        self._pending.append(pa.Table.from_arrays(columns, schema=self._schema))
        self._pending_rows += len(genes)
        # Row groups of a fixed size whatever the blocks: the file does not depend on how it was cut.
        while self._pending_rows >= self._rows_per_group:
            self._flush_parquet(self._rows_per_group)

    def _flush_parquet(self, rows: int) -> None:
        table = self._pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._writer.write_table(table.slice(0, rows), row_group_size=rows)
        rest = table.slice(rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def close(self) -> None:
        """Finish the file; checks that every announced gene was written."""
        try:
            if self.genes_written != self.n_genes:
                raise ValueError(f"{self.path}: {self.genes_written} genes written, {self.n_genes} announced")
            if self.format == "parquet":
                if self._pending_rows:
                    self._flush_parquet(self._pending_rows)
                elif self.n_genes == 0:
                    self._writer.write_table(self._schema.empty_table())
            elif self.format == "h5ad":
                self._write_h5ad_frames()
        finally:
            self._stack.close()

    def _write_h5ad_frames(self) -> None:
        import h5py

        for name, ids in (("obs", self.samples), ("var", self._gene_ids)):
            group = self._h5.create_group(name)
            group.attrs["encoding-type"] = "dataframe"
            group.attrs["encoding-version"] = "0.2.0"
            group.attrs["_index"] = "_index"
            group.attrs["column-order"] = np.array([], dtype=h5py.string_dtype())
            index = group.create_dataset("_index", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
            index.attrs["encoding-type"] = "string-array"
            index.attrs["encoding-version"] = "0.2.0"
        for name in ("uns", "obsm", "varm", "layers", "obsp", "varp"):
            group = self._h5.create_group(name)
            group.attrs["encoding-type"] = "dict"
            group.attrs["encoding-version"] = "0.1.0"

    def __enter__(self) -> MatrixWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._stack.close()


def write_matrix(matrix: pd.DataFrame, path: str | Path) -> None:
    """Write a genes × samples matrix (index: gene ids) in the format its file name says.

    Parameters
    ----------
    matrix : pandas.DataFrame
        Genes in rows (the index holds the gene ids), samples in columns; values as float64.
    path : str or Path
        ``.parquet``, ``.tsv.gz``, ``.tsv`` or ``.h5ad``.
    """
    with MatrixWriter(path, list(matrix.columns), n_genes=len(matrix)) as writer:
        writer.write(matrix)


def _parquet_file(path: str | Path):
    import pyarrow.parquet as pq

    return pq.ParquetFile(path)


def _table_to_frame(table) -> pd.DataFrame:
    genes = [str(g) for g in table.column(0).to_pylist()]
    samples = table.column_names[1:]
    values = np.empty((table.num_rows, len(samples)), dtype=np.float64, order="F")
    for j in range(len(samples)):
        values[:, j] = table.column(j + 1).to_numpy()
    return pd.DataFrame(values, index=pd.Index(genes, name="gene_id", dtype=object), columns=samples, copy=False)


def _check_parquet_layout(pf, path) -> None:
    names = pf.schema_arrow.names
    if not names or names[0] != "gene_id":
        raise ValueError(f"{path}: not a batchmix matrix (the first column is {names[:1]}, not gene_id)")


def read_matrix_rows(path: str | Path, start: int = 0, stop: int | None = None) -> pd.DataFrame:
    """Genes ``start`` to ``stop`` (positions, ``stop`` excluded) of a matrix file.

    From Parquet only the row groups that hold those genes are read; from ``.h5ad`` the whole file
    is read and cut. Text tables are read by :func:`batchmix.io.read_matrix` (this module reads
    binary files only, so that ``batchmix.io.tables`` can hand them to it without an import cycle).

    Returns
    -------
    pandas.DataFrame
        Index ``gene_id`` (text), columns the sample ids, values float64.
    """
    fmt = matrix_format(path)
    if fmt != "parquet":
        whole = read_matrix_file(path)
        return whole.iloc[start:stop]
    pf = _parquet_file(path)
    _check_parquet_layout(pf, path)
    meta = pf.metadata
    stop = meta.num_rows if stop is None else min(int(stop), meta.num_rows)
    start = max(0, int(start))
    groups, first_row, offset = [], None, 0
    for i in range(meta.num_row_groups):
        rows = meta.row_group(i).num_rows
        if offset < stop and offset + rows > start:
            groups.append(i)
            if first_row is None:
                first_row = offset
        offset += rows
    if not groups or stop <= start:
        return _table_to_frame(pf.schema_arrow.empty_table())
    table = pf.read_row_groups(groups, use_threads=False)
    return _table_to_frame(table.slice(start - first_row, stop - start))


def iter_matrix_rows(path: str | Path, *, genes_per_block: int | None = None) -> Iterator[pd.DataFrame]:
    """The matrix in blocks of genes, in order: from Parquet a row group at a time by default; .h5ad read whole."""
    fmt = matrix_format(path)
    if fmt != "parquet":
        whole = read_matrix_file(path)
        step = genes_per_block or max(1, len(whole))
        for g0 in range(0, len(whole), step):
            yield whole.iloc[g0 : g0 + step]
        return
    pf = _parquet_file(path)
    _check_parquet_layout(pf, path)
    if genes_per_block is None:
        for i in range(pf.metadata.num_row_groups):
            yield _table_to_frame(pf.read_row_group(i, use_threads=False))
        return
    for g0 in range(0, pf.metadata.num_rows, genes_per_block):
        yield read_matrix_rows(path, g0, g0 + genes_per_block)


def iter_parquet_row_groups(path: str | Path):
    """The row groups of a Parquet matrix as ``pyarrow.Table`` objects, in order (no pandas)."""
    pf = _parquet_file(path)
    _check_parquet_layout(pf, path)
    for i in range(pf.metadata.num_row_groups):
        yield pf.read_row_group(i, use_threads=False)


def matrix_index(path: str | Path) -> tuple[pd.Index, pd.Index]:
    """The gene ids (in row order) and the sample ids of a Parquet matrix, reading its gene_id column only."""
    pf = _parquet_file(path)
    _check_parquet_layout(pf, path)
    genes = [str(g) for g in pf.read(columns=["gene_id"], use_threads=False).column(0).to_pylist()]
    return pd.Index(genes, name="gene_id", dtype=object), pd.Index(pf.schema_arrow.names[1:])


def matrix_shape(path: str | Path) -> tuple[int, int]:
    """(genes, samples) of a Parquet or ``.h5ad`` matrix, without reading the values."""
    fmt = matrix_format(path)
    if fmt == "parquet":
        pf = _parquet_file(path)
        return pf.metadata.num_rows, len(pf.schema_arrow.names) - 1
    if fmt == "h5ad":
        import h5py

        with h5py.File(path, "r") as h5:
            n_samples, n_genes = h5["X"].shape
        return int(n_genes), int(n_samples)
    raise ValueError(f"{path}: the shape of a text matrix is read with batchmix.io.read_matrix")


def _h5_strings(dataset) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in dataset[()]]


def read_matrix_file(path: str | Path) -> pd.DataFrame:
    """Read a whole matrix file: gene ids (text) as the index, float64 values.

    Parameters
    ----------
    path : str or Path
        ``.parquet`` or ``.h5ad`` as :class:`MatrixWriter` writes them (an ``.h5ad`` from AnnData
        with a dense ``X`` works too); text tables go through :func:`batchmix.io.read_matrix`.

    Returns
    -------
    pandas.DataFrame
        Index ``gene_id`` (str), columns the sample ids, values float64.
    """
    fmt = matrix_format(path)
    if fmt == "parquet":
        pf = _parquet_file(path)
        _check_parquet_layout(pf, path)
        return _table_to_frame(pf.read(use_threads=False))
    if fmt == "h5ad":
        import h5py

        with h5py.File(path, "r") as h5:
            x = h5["X"]
            if not hasattr(x, "shape") or isinstance(x, h5py.Group):
                raise ValueError(f"{path}: X is sparse; batchmix matrices are dense")
            values = np.asarray(x[()], dtype=np.float64).T
            obs, var = h5["obs"], h5["var"]
            samples = _h5_strings(obs[obs.attrs.get("_index", "_index")])
            genes = _h5_strings(var[var.attrs.get("_index", "_index")])
        return pd.DataFrame(values, index=pd.Index(genes, name="gene_id", dtype=object), columns=samples)
    raise ValueError(f"{path}: text matrices are read by batchmix.io.read_matrix")


# Schema metadata key of a Parquet result table's extra metadata (JSON).
_TABLE_META_KEY = b"batchmix_table"


def write_parquet_table(table: pd.DataFrame, path: str | Path, metadata: dict | None = None) -> None:
    """Write a result table (plain columns, no index) as Parquet, with optional JSON metadata.

    For intermediates between jobs: typed columns, no text to format or parse. Float columns go
    as they are (round them first, e.g. :func:`table_round_trip`, to carry what a TSV would).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {}
    for name in table.columns:
        col = table[name]
        if col.dtype.kind == "f":
            columns[str(name)] = pa.array(col.to_numpy(dtype=np.float64), type=pa.float64())
        elif col.dtype.kind in "iub":
            columns[str(name)] = pa.array(col.to_numpy())
        else:
            columns[str(name)] = pa.array(col.to_numpy(dtype=object), type=pa.string())
    arrow = pa.table(columns) if columns else pa.table({})
    meta = {_TABLE_META_KEY: json.dumps(metadata or {}).encode()}
    arrow = arrow.replace_schema_metadata(meta)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(arrow, path, compression="snappy", write_statistics=False)


def read_parquet_table(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """A table written by :func:`write_parquet_table` and its metadata; text columns as ``object`` str."""
    import pyarrow.parquet as pq

    arrow = pq.read_table(path, use_threads=False)
    meta = json.loads((arrow.schema.metadata or {}).get(_TABLE_META_KEY, b"{}"))
    frame = pd.DataFrame(
        {
            name: (
                np.asarray(column.to_pylist(), dtype=object)
                if str(column.type) in ("string", "large_string")
                else column.to_numpy()
            )
            for name, column in zip(arrow.column_names, arrow.columns)
        }
    )
    return frame, meta
