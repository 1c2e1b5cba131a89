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
    columns (floats, integers, booleans, text without tabs, quotes or line breaks) are formatted
    column by column without it (:func:`tsv_text`), several times faster.
    """
    text = tsv_text(df) if not index else None
    if text is None:
        text = df.to_csv(sep="\t", index=index, lineterminator="\n", float_format="%.12g", na_rep="NA")
    with table_writer(path) as fh:
        fh.write(text.encode())


# Characters that make the csv module quote a field (tab-separated, "\n" line ends).
_QUOTED_CHARACTERS = ("\t", '"', "\n", "\r")


def _plain_text(name) -> bool:
    return isinstance(name, str) and not any(c in name for c in _QUOTED_CHARACTERS)


def _column_text(column: pd.Series) -> list | None:
    """The cells of one column as pandas' ``to_csv`` writes them (``%.12g``, ``NA``), or None when the
    column is not a plain one (pandas then writes the whole table)."""
    dtype = column.dtype
    if dtype.kind in "iub" and isinstance(dtype, np.dtype):
        return column.to_numpy().astype(str).tolist()
    if dtype == np.dtype(object) or isinstance(dtype, pd.StringDtype):
        cells = column.tolist()
        if set(map(type, cells)) - {str}:
            missing = column.isna().to_numpy()
            if not missing.any():
                return None
            cells = ["NA" if m else c for c, m in zip(cells, missing)]
            if set(map(type, cells)) - {str}:
                return None
        return cells if _plain_text("".join(cells)) else None
    return None


def tsv_text(df: pd.DataFrame) -> str | None:
    """The TSV text of ``df`` without its index, as :func:`write_table` writes it, or None.

    The same characters as ``df.to_csv(sep="\\t", index=False, lineterminator="\\n",
    float_format="%.12g", na_rep="NA")`` for a table whose columns are float64 (:func:`format_g`),
    integer, boolean, or text (``NA`` for missing) without tabs, quotes or line breaks, under plain
    text names, with at least two columns (csv quotes an empty field when it is a row's only one).
    None for any other table, which the caller then writes with pandas.
    """
    if df.shape[1] < 2 or isinstance(df.columns, pd.MultiIndex):
        return None
    if not all(_plain_text(name) for name in df.columns):
        return None
    n_rows = df.shape[0]
    columns: list = [None] * df.shape[1]
    floats = [i for i, dtype in enumerate(df.dtypes) if dtype == np.float64]
    for i in range(df.shape[1]):
        if i not in floats:
            columns[i] = _column_text(df.iloc[:, i])
            if columns[i] is None:
                return None
    if floats:
        # every float column in one call: the per-call work is paid once
        values = np.concatenate([df.iloc[:, i].to_numpy() for i in floats])
        text = format_g(values, na_rep="NA").tolist()
        for j, i in enumerate(floats):
            columns[i] = text[j * n_rows : (j + 1) * n_rows]
    lines = ["\t".join(df.columns)]
    lines.extend(map("\t".join, zip(*columns)))
    return "\n".join(lines) + "\n"


# 10**k for k = 0..22: every one is exact in float64.
_POWERS_OF_TEN = np.array([10.0**k for k in range(23)])
# "000" to "999" as ASCII bytes, one row per number
_THREE_DIGITS = np.array([list(f"{i:03d}".encode()) for i in range(1000)], dtype=np.uint8)
_ZERO, _DOT, _MINUS, _NEWLINE = ord("0"), ord("."), ord("-"), ord("\n")


def format_g(values: np.ndarray, digits: int = TABLE_DIGITS, na_rep: str = "NA") -> np.ndarray:
    """The text of each value as ``"%.{digits}g" % x`` (``na_rep`` for NaN), vectorised.

    ``%g`` prints the value rounded to ``digits`` significant digits, in positional notation when
    its decimal exponent e is in [-4, digits), else as ``d.ddde±XX``, trailing zeros removed. With
    ``k = digits - 1 - e``, the rounded digits are ``rint(|x| * 10**k)`` whenever ``10**k`` is exact
    (0 <= k <= 22) and ``|x| * 10**k`` is not within its rounding error of a tie (its error is below
    1.2e-4 for 12 digits; a margin of 1e-3 is kept), as in
    :func:`batchmix.io.matrices.round_significant`; they are laid out as bytes, a group of equal
    exponents at a time. Every other value (ties, magnitudes outside that range, a ``log10`` off by
    one at a power of ten, zeros and infinities) is formatted by Python's ``%`` itself.

    Parameters
    ----------
    values : numpy.ndarray
        1-D floats.
    digits : int
        Significant digits, 1 to 15 (only 12 takes the vectorised path; others are formatted value
        by value).
    na_rep : str
        The text of NaN.

    Returns
    -------
    numpy.ndarray
        Object array of str, one per value.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    out = np.empty(v.size, dtype=object)
    fmt = f"%.{digits}g"
    nan = np.isnan(v)
    out[nan] = na_rep
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = np.abs(v)
        e = np.floor(np.log10(a))
        k = (digits - 1) - e
        fast = np.isfinite(k) & (k >= 0) & (k <= 22) & (digits == TABLE_DIGITS)
        k_int = np.where(fast, k, 0.0).astype(np.int64)
        scaled = a * _POWERS_OF_TEN[k_int]
        r = np.rint(scaled)
        frac = np.abs(scaled - np.trunc(scaled))
        fast &= (np.abs(frac - 0.5) > 1e-3) & (r >= 10.0 ** (digits - 1)) & (r < 10.0**digits)
    slow = ~fast & ~nan
    if slow.any():
        out[slow] = [fmt % x for x in v[slow].tolist()]
    if not fast.any():
        return out
    rows = np.flatnonzero(fast)
    mantissa = r[rows]  # an integer below 1e12: exact in float64, as are its quotients' floors below
    exponent = (digits - 1) - k_int[rows]
    negative = np.signbit(v[rows])
    # the digits as ASCII (three at a time from a table), and how many are left once trailing zeros
    # are removed
    groups = np.empty((rows.size, 4), dtype=np.int64)
    rest = mantissa
    for j, unit in enumerate((1e9, 1e6, 1e3)):
        # rest / unit is at least 1e-9 away from the next integer, so its floor is exact
        top = np.floor(rest / unit)
        groups[:, j] = top
        rest = rest - top * unit
    groups[:, 3] = rest
    text_digits = _THREE_DIGITS[groups].reshape(rows.size, digits)
    nonzero = text_digits != _ZERO
    kept = digits - np.argmax(nonzero[:, ::-1], axis=1)  # the first digit is never 0
    width = digits + 7  # sign, "0.", up to 3 zeros (e >= -4), the digits; or "d." + digits + "e-XX"
    chars = np.zeros((rows.size, width), dtype=np.uint8)
    length = np.zeros(rows.size, dtype=np.int64)
    for value in np.unique(exponent):
        sel = np.flatnonzero(exponent == value)
        d, n_kept = text_digits[sel], kept[sel]
        block = np.zeros((sel.size, width), dtype=np.uint8)
        if 0 <= value < digits:
            whole = value + 1
            block[:, 1 : 1 + whole] = d[:, :whole]
            block[:, 1 + whole] = _DOT
            block[:, 2 + whole : 1 + digits + 1] = d[:, whole:]
            size = np.where(n_kept > whole, n_kept + 1, whole)
        elif -4 <= value < 0:
            zeros = -value - 1
            block[:, 1] = _ZERO
            block[:, 2] = _DOT
            block[:, 3 : 3 + zeros] = _ZERO
            block[:, 3 + zeros : 3 + zeros + digits] = d
            size = 2 + zeros + n_kept
        else:  # d.ddd then e-XX (|e| <= 11 here)
            block[:, 1] = d[:, 0]
            block[:, 2] = _DOT
            block[:, 3 : 2 + digits] = d[:, 1:]
            size = np.where(n_kept > 1, n_kept + 1, 1)
            suffix = np.frombuffer(f"e{'-' if value < 0 else '+'}{abs(int(value)):02d}".encode(), dtype=np.uint8)
            block[np.arange(sel.size)[:, None], 1 + size[:, None] + np.arange(suffix.size)[None, :]] = suffix
            size = size + suffix.size
        chars[sel] = block
        length[sel] = size
    # the sign in column 0 (kept for negative values only), a newline after the last character;
    # the kept bytes of every row, in order, are then the lines of one ASCII string
    chars[negative, 0] = _MINUS
    stop = 1 + length
    chars[np.arange(rows.size), stop] = _NEWLINE
    columns = np.arange(width)[None, :]
    keep = (columns >= np.where(negative, 0, 1)[:, None]) & (columns <= stop[:, None])
    lines = chars[keep].tobytes().decode("ascii").split("\n")
    out[rows] = lines[:-1]
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


def read_result_table(path: str | Path) -> pd.DataFrame:
    """Read a table that batchmix wrote (TSV, optionally gzipped), ids kept as text.

    The first column and every column named in :data:`TEXT_COLUMNS` are read verbatim as strings
    (a gene called ``NA`` or ``007`` stays so); in the other columns ``NA`` is a missing value.

    Parameters
    ----------
    path : str or Path
        The table.

    Returns
    -------
    pandas.DataFrame
    """
    header = pd.read_csv(path, sep="\t", nrows=0).columns
    text = {c for c in header if c in TEXT_COLUMNS} | ({header[0]} if len(header) else set())
    return pd.read_csv(
        path,
        sep="\t",
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
