"""Readers of the input formats people have: text tables, featureCounts output, Parquet and AnnData ``.h5ad``.

Every reader turns a file into an :class:`ExpressionTable` (gene ids as text, a float64 genes × samples
array) or, for the sample sheet, a DataFrame of text cells. Numbers are parsed as numbers by C or
Arrow parsers; when a cell cannot be parsed, the file is scanned again, slowly, only to name the
line, the gene and the sample of that cell (:func:`locate_text_problem`).

Before any parser runs, :func:`sniff` looks at the first bytes: a directory, an empty file, UTF-16
text, gzip content without ``.gz`` (or a ``.gz`` name without gzip content), an Excel workbook,
Parquet and HDF5 are recognised and either read or refused with what to do.
"""

from __future__ import annotations

import csv
import gzip
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from batchmix.io.errors import InputError

__all__ = [
    "INPUT_NA_VALUES",
    "ExpressionTable",
    "sniff",
    "read_expression_table",
    "read_sheet_table",
    "featurecounts_sample_ids",
]

logger = logging.getLogger(__name__)

# Cells of an input table read as missing values. Never applied to the id column: there these
# are names (a gene can be called NA).
INPUT_NA_VALUES = ("", "NA", "NaN", "nan")

# The six annotation columns featureCounts writes before the counts.
FEATURECOUNTS_COLUMNS = ("Geneid", "Chr", "Start", "End", "Strand", "Length")

# Where a genes × samples table keeps a gene symbol next to the id (AnnData ``var``, Parquet).
SYMBOL_COLUMNS = ("symbol", "gene_symbol", "gene_symbols", "gene_name", "feature_name", "Symbol")

_SHOW = 10

#: Text tables larger than this (bytes on disk) are parsed in row chunks (:func:`_read_text_in_chunks`):
#: memory then holds the matrix once, where one parallel parse holds it about three times.
CHUNKED_READ_BYTES = 256 * 1024**2
_CHUNK_ROWS = 2048

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass
class ExpressionTable:
    """A genes × samples table as read, before validation.

    Attributes
    ----------
    ids : numpy.ndarray
        Gene ids (Python ``str``), verbatim.
    samples : list of str
        Sample ids, in file order.
    values : numpy.ndarray
        float64, genes × samples; missing cells are NaN.
    source : str
        ``"text"``, ``"featureCounts"``, ``"parquet"`` or ``"h5ad"``.
    where : callable
        ``where(i)`` names data row ``i`` in the file (``"line 12"``, ``"row 12"``); called only for
        error messages, so that a text file is re-scanned only when something is wrong.
    symbols : pandas.Series or None
        Gene symbols by gene id, when the file carries them (``var`` of an ``.h5ad``).
    notes : list of str
        What the reader did that the user should know (e.g. the featureCounts columns it dropped).
    """

    ids: np.ndarray
    samples: list[str]
    values: np.ndarray
    source: str
    where: Callable[[int], str]
    symbols: pd.Series | None = None
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# What the file is


def sniff(path: Path, what: str) -> str:
    """The kind of file at ``path``: ``"text"``, ``"gzip"``, ``"parquet"`` or ``"h5ad"``.

    Raises
    ------
    InputError
        For a missing path, a directory, an empty file, UTF-16 text, an Excel workbook, or a
        compression that does not match the file name; each message says what to do.
    """
    if not path.exists():
        raise InputError(f"{path}: the {what} does not exist. Check the path in the config.")
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir())[:5]
        raise InputError(
            f"{path}: the {what} is a directory, not a file. Give the path of the table file itself"
            + (f" (the directory holds {', '.join(repr(n) for n in inside)})" if inside else "")
            + "."
        )
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the {what} is empty (0 bytes). Check that the file was written completely.")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    name = path.name.lower()
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    if head.startswith(_HDF5_MAGIC):
        if not name.endswith(".h5ad"):
            raise InputError(
                f"{path}: the {what} is an HDF5 file; batchmix reads HDF5 only as AnnData. "
                "If it is an AnnData file, name it .h5ad; otherwise export the table as TSV."
            )
        return "h5ad"
    if head.startswith(_ZIP_MAGIC):
        raise InputError(
            f"{path}: the {what} is a ZIP archive, most likely an Excel workbook (.xlsx). Save the sheet as "
            "tab-separated text (.tsv) or 'CSV UTF-8' (.csv) and give that file."
        )
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or head.count(b"\x00") > len(head) // 4:
        raise InputError(
            f"{path}: the {what} is UTF-16 text (or binary). Save it as UTF-8 text, e.g. in Excel "
            "'CSV UTF-8', in R write.table(..., fileEncoding = 'UTF-8'), or `iconv -f UTF-16 -t UTF-8`."
        )
    if head.startswith(_GZIP_MAGIC):
        if not name.endswith(".gz"):
            raise InputError(
                f"{path}: the {what} is gzip-compressed, but its name does not end in .gz. Rename it to "
                f"{path.name}.gz (and the path in the config), or decompress it with `gunzip -c`."
            )
        return "gzip"
    if name.endswith(".gz"):
        raise InputError(
            f"{path}: the {what}'s name ends in .gz, but it is not gzip-compressed. Rename it without .gz, "
            "or compress it with `gzip`."
        )
    return "text"


def separator(path: Path, what: str = "table") -> str:
    """The field separator that the file name promises: tab for .tsv/.txt/.tab, comma for .csv."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".csv"):
        return ","
    if name.endswith((".tsv", ".txt", ".tab")):
        return "\t"
    raise InputError(
        f"{path}: unknown table format for the {what}. Use a .tsv, .txt or .csv file (optionally gzipped, .gz), "
        "a .parquet file, or an AnnData .h5ad file."
    )


def _open_text(path: Path):
    """The file as text (UTF-8, a byte-order mark dropped), through gzip when the name ends in .gz."""
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _head_lines(path: Path, what: str, n: int = 3) -> list[str]:
    """The first ``n`` non-blank lines, without line ends."""
    lines = []
    try:
        with _open_text(path) as fh:
            for line in fh:
                line = line.rstrip("\r\n")
                if line.strip():
                    lines.append(line)
                if len(lines) >= n:
                    break
    except UnicodeDecodeError as err:
        raise InputError(
            f"{path}: the {what} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}). "
            "Save it as UTF-8 (Excel: 'CSV UTF-8'; R: fileEncoding = 'UTF-8')."
        ) from None
    except (OSError, EOFError) as err:
        raise InputError(f"{path}: the {what} cannot be read ({err}). Is the file complete?") from None
    return lines


def _fields(line: str, sep: str) -> list[str]:
    return next(csv.reader([line], delimiter=sep))


def _is_featurecounts(lines: list[str]) -> bool:
    if not lines:
        return False
    if lines[0].startswith("#") and "featurecounts" in lines[0].lower():
        return True
    header = lines[1] if lines[0].startswith("#") and len(lines) > 1 else lines[0]
    return tuple(header.split("\t")[:6]) == FEATURECOUNTS_COLUMNS


@dataclass
class _Layout:
    """How a text table is laid out: separator, lines before the data, the header's fields."""

    sep: str
    skip: int  # physical lines before the first data line (comment and header)
    header: list[str]
    featurecounts: bool = False


def _text_layout(path: Path, what: str, *, id_label: str) -> _Layout:
    """Check the header of a text table and say how to read it.

    Raises
    ------
    InputError
        For a header-only file, the wrong separator, or an R ``write.table`` header (one field short).
    """
    sep = separator(path, what)
    lines = _head_lines(path, what)
    if not lines:
        raise InputError(f"{path}: the {what} holds only blank lines.")
    if _is_featurecounts(lines):
        skip = 2 if lines[0].startswith("#") else 1
        if len(lines) < skip + 1:
            raise InputError(f"{path}: the {what} is featureCounts output without any gene rows.")
        return _Layout(sep="\t", skip=skip, header=lines[skip - 1].split("\t"), featurecounts=True)
    header = _fields(lines[0], sep)
    other = "," if sep == "\t" else "\t"
    if len(header) < 2 and other in lines[0]:
        raise InputError(
            f"{path}: the {what} has one column when split at {'tabs' if sep == chr(9) else 'commas'}, but its "
            f"header contains {'commas' if other == ',' else 'tabs'}: the file is "
            f"{'comma' if other == ',' else 'tab'}-separated. Rename it to "
            f"{'.csv' if other == ',' else '.tsv'} or save it {'tab' if sep == chr(9) else 'comma'}-separated."
        )
    if len(header) < 2:
        raise InputError(
            f"{path}: the {what} has 1 column; expected the {id_label} column and at least one more. "
            f"Is the separator right ({'comma' if sep == ',' else 'tab'} for this file name)?"
        )
    if len(lines) < 2:
        raise InputError(
            f"{path}: the {what} has a header line but no data rows (no {id_label.split()[0]} rows). "
            "Was it exported completely?"
        )
    first_row = _fields(lines[1], sep)
    if len(first_row) == len(header) + 1:
        raise InputError(
            f"{path}: the {what}'s header (line 1) has one field fewer than its rows ({len(header)} against "
            f"{len(first_row)}), as R's write.table() writes it when the row names are kept: the first header "
            f"field {header[0]!r} would be taken for the {id_label} column. Add a first header field, e.g. "
            f"'gene_id' before {header[0]!r}, or write the file with write.table(..., col.names = NA) or write.csv()."
        )
    return _Layout(sep=sep, skip=1, header=header)


# ----------------------------------------------------------------------------------------------------
# Finding a bad cell, slowly, after a fast parse failed


def _records(path: Path, layout: _Layout):
    """``(first line, last line, fields)`` of every data record; blank lines are skipped and counted."""
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=layout.sep, strict=True)
        previous_end = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise InputError(
                    f"{path}: a quoted field opened at line {previous_end + 1} is not closed properly ({err}). "
                    'A field that starts with a double quote (") must end with one: remove the stray quote '
                    "or quote the whole field."
                ) from None
            # csv gives a blank line as an empty record, so a record starts right after the previous one
            first, previous_end = previous_end + 1, reader.line_num
            if first <= layout.skip or not any(f.strip() for f in row):
                continue
            yield first, reader.line_num, row


def data_lines(path: Path, layout: _Layout) -> list[int]:
    """The physical line number of every data row, in order (only computed for error messages)."""
    return [first for first, _, _ in _records(path, layout)]


def locate_text_problem(path: Path, layout: _Layout, what: str, *, na_values=INPUT_NA_VALUES) -> InputError:
    """Scan a text table that the fast parser refused and say which lines and cells are at fault."""
    width = len(layout.header)
    bad_width, cells = [], []
    n_bad_cells = 0
    for first, last, row in _records(path, layout):
        if len(row) != width:
            if last > first:
                return InputError(
                    f'{path}: a quoted field opened at line {first} runs to line {last}: a double quote (") is '
                    "not closed. Remove the stray quote or close it."
                )
            bad_width.append(f"line {first} has {len(row)} fields")
            if len(bad_width) >= _SHOW:
                break
            continue
        for j, cell in enumerate(row[1:], start=1):
            if cell.strip() in na_values:
                continue
            try:
                float(cell)
            except ValueError:
                n_bad_cells += 1
                if len(cells) < _SHOW:
                    cells.append(f"gene {row[0]!r} (line {first}), sample {layout.header[j]!r}: {cell!r}")
    if bad_width:
        return InputError(
            f"{path}: the {what}'s header has {width} fields, but {', '.join(bad_width)}. Every row needs one field "
            "per header column: check for missing or extra separators in those lines."
        )
    if cells:
        more = f" and {n_bad_cells - _SHOW} more" if n_bad_cells > _SHOW else ""
        return InputError(
            f"{path}: non-numeric values in the {what} at {', '.join(cells)}{more}. "
            "Every cell after the gene id must be a number (or empty / NA for a missing value)."
        )
    return InputError(f"{path}: the {what} cannot be parsed as a {'CSV' if layout.sep == ',' else 'TSV'} table.")


# ----------------------------------------------------------------------------------------------------
# Expression tables


def featurecounts_sample_ids(columns: list[str], mapping: dict | None = None) -> list[str]:
    """Sample ids for featureCounts' BAM columns: ``mapping[path]``, ``mapping[base name]``, or the base name.

    The default id is the BAM file's base name without ``.bam`` (``/data/s1.bam`` → ``s1``).
    """
    mapping = mapping or {}
    out = []
    for column in columns:
        base = column.replace("\\", "/").rsplit("/", 1)[-1]
        stem = base[:-4] if base.lower().endswith(".bam") else base
        out.append(str(mapping.get(column, mapping.get(base, mapping.get(stem, stem)))))
    return out


def _read_text_expression(path: Path, what: str, sample_names: dict | None) -> ExpressionTable:
    layout = _text_layout(path, what, id_label="gene id")
    header = layout.header
    first_value = 6 if layout.featurecounts else 1
    samples = header[first_value:]
    if not samples:
        raise InputError(f"{path}: the {what} has no sample columns after the annotation columns.")
    names = list(range(len(header)))
    value_columns = names[first_value:]
    # The C parser with typed columns: ids as text (no NA markers: a gene can be called NA), values
    # as float64 (pandas 3 parses them correctly rounded, as float() does).
    options = dict(
        sep=layout.sep,
        header=None,
        names=names,
        encoding="utf-8-sig",
        compression="gzip" if path.name.lower().endswith(".gz") else None,
        skiprows=layout.skip,
        # featureCounts: the annotation columns are skipped; otherwise every column is read, so that a
        # row with extra fields fails the parse (and is then named by its line)
        usecols=[0, *value_columns] if layout.featurecounts else None,
        dtype={0: str, **dict.fromkeys(value_columns, np.float64)},
        keep_default_na=False,
        na_values=dict.fromkeys(value_columns, list(INPUT_NA_VALUES)),
        engine="c",
        skip_blank_lines=True,
    )
    try:
        if path.stat().st_size > CHUNKED_READ_BYTES:
            ids, values = _read_text_in_chunks(path, options, len(value_columns), layout.skip)
        else:
            frame = pd.read_csv(path, **options)
            ids = frame.pop(0).to_numpy(dtype=object)
            values = frame.to_numpy(dtype=np.float64)
            del frame
    except (ValueError, pd.errors.ParserError) as err:
        logger.debug("fast parse of %s failed (%s); locating the cell", path, err)
        raise locate_text_problem(path, layout, what) from None
    except UnicodeDecodeError as err:
        raise InputError(
            f"{path}: the {what} is not UTF-8 text (offset {err.start}). Save it as UTF-8 (Excel: 'CSV UTF-8')."
        ) from None
    except (OSError, EOFError) as err:
        raise InputError(f"{path}: the {what} cannot be read ({err}). Is the file complete?") from None
    if np.isnan(values).any():
        # The parser fills a row with too few fields with missing values: only when there are missing
        # values is the file scanned for such rows, to name them rather than report made-up gaps.
        short = [(first, len(row)) for first, _, row in _records(path, layout) if len(row) != len(header)]
        if short:
            listed = ", ".join(f"line {line} has {n} fields" for line, n in short[:_SHOW])
            raise InputError(
                f"{path}: the {what}'s header has {len(header)} fields, but {listed}. Every row needs one field "
                "per header column: check for missing or extra separators in those lines."
            )
    notes = []
    if layout.featurecounts:
        bams = samples
        samples = featurecounts_sample_ids(bams, sample_names)
        notes.append(
            f"{path} is featureCounts output: the annotation columns {', '.join(FEATURECOUNTS_COLUMNS[1:])} were "
            f"dropped and the sample ids taken from the BAM file names ({bams[0]!r} → {samples[0]!r})."
        )
    lines: list[int] = []

    def where(i: int) -> str:
        if not lines:
            lines.extend(data_lines(path, layout))
        return f"line {lines[i]}" if i < len(lines) else f"data row {i + 1}"

    return ExpressionTable(
        ids=ids,
        samples=samples,
        values=values,
        source="featureCounts" if layout.featurecounts else "text",
        where=where,
        notes=notes,
    )


def _count_lines(path: Path) -> int:
    """Physical lines of a (possibly gzipped) text file, a last line without newline included."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    lines, last = 0, b"\n"
    with opener(path, "rb") as handle:
        while block := handle.read(1 << 24):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def _read_text_in_chunks(path: Path, options: dict, n_values: int, skip: int) -> tuple[np.ndarray, np.ndarray]:
    """Gene ids and the genes × samples float64 values of a large text table, read in row chunks.

    The same parse as one ``read_csv`` call (the same options), into a matrix allocated once for
    the file's data lines (counted first): memory holds the matrix and one chunk, where one parallel
    parse holds about three copies at its peak. Blank lines, which the parse skips, leave rows
    over, which are cut off at the end (a copy).
    """
    capacity = max(0, _count_lines(path) - skip)
    # column-major, as a whole-table read gives it (and so the same sums over samples later)
    values = np.empty((capacity, n_values), dtype=np.float64, order="F")
    ids: list[np.ndarray] = []
    row = 0
    with pd.read_csv(path, chunksize=_CHUNK_ROWS, **options) as reader:
        for frame in reader:
            n = len(frame)
            if row + n > capacity:  # cannot happen with the line count; kept for safety
                raise ValueError(f"{path}: more data rows than lines")
            ids.append(frame.pop(0).to_numpy(dtype=object))
            values[row : row + n] = frame.to_numpy(dtype=np.float64)
            row += n
            del frame
    if row < capacity:
        values = np.asfortranarray(values[:row])
    logger.info("read %s in %d chunks: %d rows", path, len(ids), row)
    return (np.concatenate(ids) if ids else np.empty(0, dtype=object)), values


def _symbols(frame: pd.DataFrame, ids) -> pd.Series | None:
    for column in SYMBOL_COLUMNS:
        if column in frame.columns:
            return pd.Series(frame[column].astype(str).to_numpy(), index=pd.Index(ids, name="gene_id"), name="symbol")
    return None


def _read_parquet_expression(path: Path, what: str) -> ExpressionTable:
    import pyarrow.parquet as pq

    try:
        frame = pq.read_table(path).to_pandas()
    except Exception as err:  # pyarrow raises its own errors for broken files
        raise InputError(f"{path}: the {what} cannot be read as Parquet ({err}).") from None
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()  # a pandas-written table keeps the gene ids as its index
    if frame.shape[1] < 2:
        raise InputError(f"{path}: the {what} has {frame.shape[1]} column; expected the gene id and samples.")
    ids = frame.iloc[:, 0].astype(str).to_numpy(dtype=object)
    values_frame = frame.iloc[:, 1:]
    text = [c for c in values_frame.columns if not pd.api.types.is_numeric_dtype(values_frame[c])]
    if text:
        raise InputError(
            f"{path}: column(s) {', '.join(repr(str(c)) for c in text[:_SHOW])} of the {what} are not numeric "
            f"({values_frame[text[0]].dtype}). The first column is the gene id; every other column must hold numbers."
        )
    return ExpressionTable(
        ids=ids,
        samples=[str(c) for c in values_frame.columns],
        values=values_frame.to_numpy(dtype=np.float64, na_value=np.nan),
        source="parquet",
        where=lambda i: f"row {i + 1}",
    )


def _h5_strings(dataset) -> np.ndarray:
    values = dataset[()]
    if values.dtype.kind in "SO":
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    return values


def _h5_column(node) -> np.ndarray:
    """One column of an AnnData dataframe group (plain, categorical or nullable encodings)."""
    encoding = node.attrs.get("encoding-type", "")
    if isinstance(encoding, bytes):
        encoding = encoding.decode()
    if encoding == "categorical":
        codes = node["codes"][()]
        categories = _h5_strings(node["categories"])
        out = np.empty(len(codes), dtype=object)
        out[codes >= 0] = categories[codes[codes >= 0]]
        out[codes < 0] = None
        return out
    if encoding.startswith("nullable"):
        values = node["values"][()].astype(object)
        values[node["mask"][()]] = None
        return values
    return _h5_strings(node)


def _h5_dataframe(group) -> pd.DataFrame:
    index_name = group.attrs["_index"]
    index = _h5_strings(group[index_name])
    order = [c.decode() if isinstance(c, bytes) else str(c) for c in group.attrs.get("column-order", [])]
    data = {c: _h5_column(group[c]) for c in order}
    return pd.DataFrame(data, index=pd.Index(index, dtype=object))


def _h5_matrix(node) -> np.ndarray:
    """A dense dataset or an AnnData sparse group (csr/csc) as a dense float64 array."""
    import h5py

    if isinstance(node, h5py.Dataset):
        return node[()].astype(np.float64, copy=False)
    encoding = node.attrs.get("encoding-type", "")
    encoding = encoding.decode() if isinstance(encoding, bytes) else encoding
    shape = tuple(int(s) for s in node.attrs["shape"])
    data, indices, indptr = node["data"][()], node["indices"][()], node["indptr"][()]
    out = np.zeros(shape, dtype=np.float64)
    if encoding == "csr_matrix":
        rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
        out[rows, indices] = data
    elif encoding == "csc_matrix":
        cols = np.repeat(np.arange(shape[1]), np.diff(indptr))
        out[indices, cols] = data
    else:
        raise InputError(f"unsupported AnnData matrix encoding {encoding!r}")
    return out


def _read_h5ad_expression(path: Path, what: str, layer: str | None) -> ExpressionTable:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if layer:
                layers = sorted(f["layers"].keys()) if "layers" in f else []
                if layer not in layers:
                    raise InputError(
                        f"{path}: the AnnData file has no layer {layer!r} (config `expression_layer`). Its layers: "
                        f"{', '.join(repr(x) for x in layers) or 'none'}; leave the key out to use X."
                    )
                matrix = _h5_matrix(f["layers"][layer])
            else:
                matrix = _h5_matrix(f["X"])
            obs = _h5_dataframe(f["obs"])
            var = _h5_dataframe(f["var"])
    except InputError:
        raise
    except (OSError, KeyError) as err:
        raise InputError(f"{path}: the {what} cannot be read as AnnData .h5ad ({err}).") from None
    ids = np.asarray(var.index, dtype=object)
    return ExpressionTable(
        ids=ids,
        samples=[str(s) for s in obs.index],
        # AnnData stores samples × genes; batchmix works on genes × samples
        values=np.ascontiguousarray(matrix.T),
        source="h5ad",
        where=lambda i: f"var row {i + 1}",
        symbols=_symbols(var, ids),
        notes=[
            f"{path}: AnnData {'layer ' + repr(layer) if layer else 'X'} ({matrix.shape[0]} samples × "
            f"{matrix.shape[1]} genes)."
        ],
    )


def read_expression_table(
    path: str | Path,
    what: str = "expression table",
    *,
    layer: str | None = None,
    sample_names: dict | None = None,
) -> ExpressionTable:
    """Read a genes × samples expression table in any supported format.

    Parameters
    ----------
    path : str or Path
        A .tsv/.txt/.tab or .csv file (optionally .gz), featureCounts output, a .parquet file
        (first column the gene id) or an AnnData .h5ad file (samples × genes).
    what : str
        What the file is for, in messages.
    layer : str, optional
        For .h5ad: the layer to read instead of ``X``.
    sample_names : dict, optional
        For featureCounts output: BAM path (or base name) → sample id.

    Returns
    -------
    ExpressionTable

    Raises
    ------
    InputError
        Naming the file, the line or cell, and what to do.
    """
    path = Path(path)
    kind = sniff(path, what)
    if kind == "parquet":
        return _read_parquet_expression(path, what)
    if kind == "h5ad":
        return _read_h5ad_expression(path, what, layer)
    return _read_text_expression(path, what, sample_names)


# ----------------------------------------------------------------------------------------------------
# Sample sheets


def _cells_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell as text, as a text sheet would give it; missing and :data:`INPUT_NA_VALUES` cells as NaN."""
    table = frame.astype(object).map(lambda v: np.nan if v is None or v is np.nan or v != v else str(v))
    return table.where(~table.isin(INPUT_NA_VALUES), np.nan)


def read_sheet_table(path: str | Path, what: str = "sample sheet") -> tuple[pd.DataFrame, list[int] | None]:
    """Read a sample sheet with every cell as text.

    Returns
    -------
    (pandas.DataFrame, list of int or None)
        The table (first column the ids, verbatim; :data:`INPUT_NA_VALUES` elsewhere missing) and the
        physical line of each row (None for .h5ad and .parquet, whose rows have no lines).
    """
    path = Path(path)
    kind = sniff(path, what)
    if kind == "h5ad":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                obs = _h5_dataframe(f["obs"])
        except (OSError, KeyError) as err:
            raise InputError(f"{path}: the {what} (obs of the AnnData file) cannot be read ({err}).") from None
        table = _cells_as_text(obs)
        table.insert(0, "sample_id", [str(s) for s in obs.index])
        return table, None
    if kind == "parquet":
        import pyarrow.parquet as pq

        frame = pq.read_table(path).to_pandas()
        if not isinstance(frame.index, pd.RangeIndex):
            frame = frame.reset_index()
        table = _cells_as_text(frame)
        table.iloc[:, 0] = frame.iloc[:, 0].astype(str).to_numpy()  # the ids verbatim
        return table, None
    layout = _text_layout(path, what, id_label="sample id")
    if layout.featurecounts:
        raise InputError(f"{path}: the {what} is featureCounts output; give the counts as `expression`.")
    try:
        table = pd.read_csv(
            path,
            encoding="utf-8-sig",
            compression="gzip" if path.name.lower().endswith(".gz") else None,
            sep=layout.sep,
            header=None,
            skiprows=layout.skip,
            names=list(range(len(layout.header))),
            dtype=str,
            na_filter=False,
            skip_blank_lines=True,
        )
    except (ValueError, pd.errors.ParserError):
        raise locate_text_problem(path, layout, what, na_values=()) from None
    table.columns = layout.header
    if table.shape[1] > 1:
        values = table.iloc[:, 1:]
        table.iloc[:, 1:] = values.where(~values.isin(INPUT_NA_VALUES), np.nan)
    lines = data_lines(path, layout)
    return table, lines
