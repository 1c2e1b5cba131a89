"""Reading and writing tables: the one place batchmix turns files into DataFrames and back.

Input tables (the expression table, the sample sheet) are read with every cell as text and the
first column (the ids) kept verbatim: a gene called ``NA``, ``null``, ``007`` or ``1e5`` stays so.
batchmix's own result tables are written by :func:`write_table` / :func:`table_writer` (byte-stable
gzip) and read back by :func:`read_result_table` / :func:`read_matrix`, ids again as text.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from batchmix.io import textformat
from batchmix.io.errors import WRITE_ERRNOS, write_failure
from batchmix.io.readers import INPUT_NA_VALUES, read_sheet_table

__all__ = [
    "INPUT_NA_VALUES",
    "TEXT_COLUMNS",
    "read_table",
    "read_result_table",
    "read_matrix",
    "write_table",
    "write_json",
    "table_writer",
    "table_lines",
    "file_md5",
    "format_g",
]

# Significant digits of the floats in batchmix's TSV tables (``%.12g``).
TABLE_DIGITS = 12


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """Read an input table (TSV/CSV, optionally gzipped; Parquet; the obs of an .h5ad) with every cell as text.

    Parameters
    ----------
    path : str or Path
        The file. Tab-separated for ``.tsv``/``.txt``/``.tab``, comma-separated for ``.csv``;
        a trailing ``.gz`` means gzip.
    what : str
        What the file is for (``"sample sheet"``), used in error messages.

    Returns
    -------
    pandas.DataFrame
        All cells as strings, with the header as column names. The first column (the ids) is kept
        verbatim, empty cells included (``""``); in the other columns the cells of
        :data:`INPUT_NA_VALUES` are missing (``NaN``).

    Raises
    ------
    InputError
        For a file that cannot be read as a table; the message says why and what to do.
    """
    return read_sheet_table(path, what)[0]


def write_table(df: pd.DataFrame, path: str | Path, index: bool = False) -> None:
    """Write a tab-separated table; ``.gz`` paths are gzipped with a fixed timestamp.

    The gzip header normally records the write time; pinning it to 0 makes the
    same table give the same bytes, so reruns and chunked runs can be compared byte for byte.
    Floats are written as ``%.12g`` and missing values as ``NA``. The text is pandas' ``to_csv``
    (``sep="\\t"``, ``float_format="%.12g"``, ``na_rep="NA"``) byte for byte; tables of plain
    columns (floats, integers, booleans, text without tabs, quotes or line breaks) are built as
    bytes without it (:func:`tsv_bytes`), many times faster.
    """
    data = tsv_bytes(df) if not index else None
    if data is None:
        data = df.to_csv(sep="\t", index=index, lineterminator="\n", float_format="%.12g", na_rep="NA").encode()
    with table_writer(path) as fh:
        fh.write(data)


# Characters that make the csv module quote a field (tab-separated, "\n" line ends).
_QUOTED_CHARACTERS = ("\t", '"', "\n", "\r")


def _plain_text(name) -> bool:
    return isinstance(name, str) and not any(c in name for c in _QUOTED_CHARACTERS)


def _column_cells(column: pd.Series):
    """One column for :func:`batchmix.io.textformat.tsv_bytes`: its float64 values, or ``(codes, texts)``
    with the texts pandas' ``to_csv`` writes (``NA`` for missing); None when the column is not a plain
    one (pandas then writes the whole table)."""
    dtype = column.dtype
    if dtype == np.float64:
        return column.to_numpy()
    if dtype.kind in "iub" and isinstance(dtype, np.dtype):
        codes, uniques = pd.factorize(column.to_numpy())
        return codes, np.asarray(uniques).astype(str).tolist()
    if dtype == np.dtype(object) or isinstance(dtype, pd.StringDtype):
        # the distinct values only: a long table's text columns hold few of them
        codes, uniques = pd.factorize(column)
        texts = np.asarray(uniques, dtype=object).tolist()  # not by iterating an Arrow-backed array
        if set(map(type, texts)) - {str}:
            return None
        if (codes < 0).any():  # missing values (None, NaN, pd.NA)
            codes = np.where(codes < 0, len(texts), codes)
            texts.append("NA")
        joined = "".join(texts)
        return (codes, texts) if _plain_text(joined) and "\0" not in joined else None
    return None


def tsv_bytes(df: pd.DataFrame) -> bytes | None:
    """The TSV bytes of ``df`` without its index, as :func:`write_table` writes them, or None.

    The same characters (UTF-8) as ``df.to_csv(sep="\\t", index=False, lineterminator="\\n",
    float_format="%.12g", na_rep="NA")`` for a table whose columns are float64
    (:func:`batchmix.io.textformat.format_cells`), integer, boolean, or text (``NA`` for missing)
    without tabs, quotes, line breaks or NUL, under plain text names, with at least two columns (csv
    quotes an empty field when it is a row's only one). None for any other table, which the caller
    then writes with pandas.
    """
    if df.shape[1] < 2 or isinstance(df.columns, pd.MultiIndex):
        return None
    if not all(_plain_text(name) for name in df.columns):
        return None
    columns = []
    for i in range(df.shape[1]):
        cells = _column_cells(df.iloc[:, i])
        if cells is None:
            return None
        columns.append(cells)
    return textformat.tsv_bytes(list(df.columns), columns)


def tsv_text(df: pd.DataFrame) -> str | None:
    """:func:`tsv_bytes` as text (or None)."""
    data = tsv_bytes(df)
    return None if data is None else data.decode()


def format_g(values: np.ndarray, digits: int = TABLE_DIGITS, na_rep: str = "NA") -> np.ndarray:
    """The text of each value as ``"%.{digits}g" % x`` (``na_rep`` for NaN), vectorised.

    For 12 digits the texts come from :func:`batchmix.io.textformat.format_cells` (exact, the same
    characters as Python's ``%`` for every value); other digit counts are formatted value by value.

    Parameters
    ----------
    values : numpy.ndarray
        1-D floats.
    digits : int
        Significant digits, 1 to 15 (only 12 takes the vectorised path).
    na_rep : str
        The text of NaN.

    Returns
    -------
    numpy.ndarray
        Object array of str, one per value.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    out = np.empty(v.size, dtype=object)
    if digits != textformat.DIGITS or "\n" in na_rep or "\0" in na_rep:
        fmt = f"%.{digits}g"
        out[:] = [na_rep if x != x else fmt % x for x in v.tolist()]
        return out
    chars = textformat.format_cells(v, na_rep=na_rep)
    # a newline after each text; dropping the NUL fillers leaves the lines of one string
    grid = np.zeros((v.size, chars.shape[1] + 1), dtype=np.uint8)
    grid[:, :-1] = chars
    grid[:, -1] = ord("\n")
    out[:] = grid[grid != 0].tobytes().decode().split("\n")[:-1]
    return out


@contextlib.contextmanager
def table_writer(path: str | Path):
    """Open a table for writing bytes, gzipped (level 6, mtime 0, no file name) when ``path`` ends in ``.gz``.

    :func:`write_table` writes through this too, so a table streamed here in pieces has the same
    bytes as one written at once: deflate without flushes does not depend on how its input is cut.

    Parameters
    ----------
    path : str or Path
        The file; its parent directories are created.

    Yields
    ------
    file object
        A binary writer; closing it (leaving the ``with`` block) finishes the gzip stream.

    Raises
    ------
    ResultWriteError
        When the file cannot be written (disk full, read-only folder): the message names the file and
        says that the run can be resumed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as raw:
            if not path.name.endswith(".gz"):
                yield raw
                return
            # filename="": GzipFile would otherwise record the output's name in the header (FNAME),
            # and the bytes would depend on where the table was written.
            with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0) as fh:
                yield fh
    except OSError as err:
        # A half-written file must not look finished to a resumed run.
        with contextlib.suppress(OSError):
            path.unlink()
        if err.errno not in WRITE_ERRNOS:
            raise
        raise write_failure(path, err) from None


@contextlib.contextmanager
def table_lines(path: str | Path):
    """Open a table (gzipped if ``path`` ends in ``.gz``) for reading its lines as bytes.

    Parameters
    ----------
    path : str or Path
        The file.

    Yields
    ------
    file object
        A binary reader; iterating over it gives the lines, each with its ``\\n``.
    """
    path = Path(path)
    with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as fh:
        yield fh


# Columns of batchmix's own result tables that hold identifiers or words, never numbers: read as
# text so that ids such as ``007``, ``1e5`` or ``NA`` come back exactly as written.
TEXT_COLUMNS = frozenset(
    {
        "gene_id",
        "gene_a",
        "gene_b",
        "sample_id",
        "group",
        "level",
        "term",
        "status",
        "parameter",
        "batch",
        "per_batch_r",
        "reason",
        "symbol",
        "coefficient",
        "change",
    }
)


def read_result_table(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a table that batchmix wrote (TSV, optionally gzipped), ids kept as text.

    The first column and every column named in :data:`TEXT_COLUMNS` are read verbatim as strings
    (a gene called ``NA`` or ``007`` stays so); in the other columns ``NA`` is a missing value.

    Parameters
    ----------
    path : str or Path
        The table.
    columns : list of str, optional
        Read only these columns (in the file's order), each as it would be read with the others.

    Returns
    -------
    pandas.DataFrame
    """
    header = pd.read_csv(path, sep="\t", nrows=0).columns
    text = {c for c in header if c in TEXT_COLUMNS} | ({header[0]} if len(header) else set())
    return pd.read_csv(
        path,
        sep="\t",
        usecols=columns,
        dtype={c: str for c in text},
        keep_default_na=False,
        na_values={c: ["NA"] for c in header if c not in text},
    )


def read_matrix(path: str | Path) -> pd.DataFrame:
    """Read a genes × samples matrix that batchmix wrote: gene ids (text) as the index, float64 values.

    Parameters
    ----------
    path : str or Path
        The table (``gene_id`` first, one column per sample; ``NA`` for missing values), or a
        ``.parquet`` / ``.h5ad`` matrix (read by :func:`batchmix.io.matrices.read_matrix_file`).

    Returns
    -------
    pandas.DataFrame
        Index ``gene_id`` (str), columns the sample ids, values float64.
    """
    if str(path).lower().endswith((".parquet", ".h5ad")):
        from batchmix.io.matrices import read_matrix_file  # binary matrices: batchmix.io.matrices

        return read_matrix_file(path)
    # The ids as text and without NA markers (a gene can be called NA): parsed as numbers, ids such
    # as 007 or 1e5 would change and no longer match the other tables.
    header = pd.read_csv(path, sep="\t", nrows=0).columns
    table = pd.read_csv(
        path,
        sep="\t",
        index_col=0,
        dtype={header[0]: str},
        keep_default_na=False,
        na_values={c: ["NA"] for c in header[1:]},
    )
    table.index = table.index.astype(str)
    table.index.name = "gene_id"
    return table.astype(float)


def write_json(obj: dict, path: str | Path) -> None:
    """Write a JSON file (sorted keys, two-space indent, final newline); numpy scalars and arrays as numbers.

    Parameters
    ----------
    obj : dict
        The content.
    path : str or Path
        The file; its parent directories are created.
    """
    path = Path(path)
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as err:
        with contextlib.suppress(OSError):
            path.unlink()
        if err.errno not in WRITE_ERRNOS:
            raise
        raise write_failure(path, err) from None


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def file_md5(path: str | Path) -> str:
    """MD5 checksum of a file, for the report's record of inputs."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
