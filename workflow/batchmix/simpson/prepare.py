"""Residualised data of a Simpson scan: the pooled, within and per-batch residuals, and which
(gene, batch) cells the random-effects test may use.

Everything a scan of any block pair needs is computed here once, from the whole gene set, so that
block-pair jobs of the workflow see exactly the same numbers as one scan of all pairs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "SimpsonData",
    "prepare",
    "prepare_saved",
    "row_blocks",
    "align_batch",
    "orthonormal_basis",
    "UNITS_RANDOM_EFFECTS",
    "UNITS_POOLED",
    "PREPARE_BLOCK_GENES",
]

logger = logging.getLogger(__name__)

# A gene whose residual sum of squares is below this fraction of its raw sum of squares is constant
# up to rounding (projection residuals of a constant are ~1e-16, not 0): its correlations are 0/0.
RELATIVE_VARIANCE_TOLERANCE = 1e-20
# Samples of a batch that must lie above the stabilised value of a zero count (count input only):
# with fewer, the within-batch correlation is driven by one or two expressed samples.
MIN_EXPRESSED_SAMPLES = 3
# Genes residualised at once (blocks of near-equal sizes, at most this many rows: row_blocks).
PREPARE_BLOCK_GENES = 4096
_ROW_ALIGN = 64
# The unit rows each test's scan multiplies: float32 for the screen, float64 for the exact p
# (random effects); the pooled and within rows (the pooled test).
UNITS_RANDOM_EFFECTS = (
    ("pooled", np.float32),
    ("pooled", np.float64),
    ("batch_sorted", np.float32),
    ("batch_sorted", np.float64),
)
UNITS_POOLED = (("pooled", np.float64), ("within", np.float64))


@dataclass
class SimpsonData:
    """Residualised values of the scanned genes (made by :func:`prepare`).

    Attributes
    ----------
    genes : pandas.Index
        Scanned genes, in input order; pair indices refer to this order.
    values : numpy.ndarray
        G x N input values of the scanned genes (float64).
    pooled : numpy.ndarray
        G x N residuals on [1, C] (the pooled side).
    within : numpy.ndarray
        G x N residuals on [batch indicators, C] (the pooled within-batch correlation r_W).
    batch_residuals : numpy.ndarray
        G x N residuals on [1, C_b] fitted inside each batch b (the random-effects side).
    usable : numpy.ndarray
        G x B bool: batch b may enter the random-effects test of gene g (w_b >= 1, within-batch SD
        >= ``min_sd``, and for count input at least 3 samples above ``zero_value``).
    batch_weights : numpy.ndarray
        B float: w_b = n_b - rank[1, C_b] - 2, the inverse variance of atanh(r_b).
    df_pooled, df_within : int
        N - rank[1, C] - 2 and N - rank[batch, C] - 2.
    batch_codes : numpy.ndarray
        N integer batch code per sample.
    batch_labels : list of str
        Batch label per code (order of first appearance, or the categorical order).
    genes_excluded : pandas.Series
        Gene -> reason, for every input gene left out.
    min_sd, zero_value
        The options the usable mask was made with.
    samples : pandas.Index, optional
        Sample id of each column.
    """

    genes: pd.Index
    values: np.ndarray
    pooled: np.ndarray
    within: np.ndarray
    batch_residuals: np.ndarray
    usable: np.ndarray
    batch_weights: np.ndarray
    df_pooled: int
    df_within: int
    batch_codes: np.ndarray
    batch_labels: list[str]
    genes_excluded: pd.Series
    min_sd: float
    zero_value: float | None
    samples: pd.Index | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def cache(self) -> dict:
        """Derived arrays of this data (unit rows, packed masks), keyed by what they are."""
        return self._cache

    @property
    def batch_columns(self) -> list[np.ndarray]:
        """Sample positions of each batch."""
        return [np.flatnonzero(self.batch_codes == k) for k in range(len(self.batch_labels))]

    def unit_rows(self, name: str, dtype=np.float64) -> np.ndarray:
        """Rows of ``pooled`` or ``within`` scaled to unit norm (cached per dtype).

        Their inner products are the correlations r_T and r_W.
        """
        key = (name, np.dtype(dtype).str)
        if key not in self._cache:
            self._cache[key] = np.ascontiguousarray(_unit_rows(getattr(self, name)), dtype=dtype)
        return self._cache[key]

    def unit_batch_rows(self, dtype=np.float64) -> np.ndarray:
        """Per-batch residuals scaled to unit norm inside each batch, zero where unusable (cached).

        The inner product of two genes' rows over the columns of batch b is their within-batch
        correlation r_b, and exactly 0 when b is unusable for either gene.
        """
        key = ("batch", np.dtype(dtype).str)
        if key not in self._cache:
            unit = np.zeros_like(self.batch_residuals)
            for k, columns in enumerate(self.batch_columns):
                block = self.batch_residuals[:, columns]
                norms = np.sqrt(np.einsum("ij,ij->i", block, block))
                use = self.usable[:, k]
                unit[np.ix_(use, columns)] = block[use] / norms[use, None]
            self._cache[key] = np.ascontiguousarray(unit, dtype=dtype)
        return self._cache[key]

    def unit_batch_sorted(self, dtype=np.float32) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """:meth:`unit_batch_rows` with the columns ordered batch by batch, and each batch's (start, stop).

        A batch's columns are then a contiguous slice, so its correlations are one matrix product of
        two views, without copying the columns out first (cached).  Built from the batch-sorted
        residuals directly (the same numbers as sorting :meth:`unit_batch_rows`, without its
        scattered writes); other dtypes are the float64 array cast.
        """
        key = ("batch_sorted", np.dtype(dtype).str)
        if key not in self._cache:
            order, _, bounds = _batch_columns_sorted(self.batch_codes, len(self.batch_labels))
            key64 = ("batch_sorted", np.dtype(np.float64).str)
            if key64 not in self._cache:
                self._cache[key64] = (_unit_batch_sorted_rows(self.batch_residuals, self.usable, order, bounds), bounds)
            if key != key64:
                self._cache[key] = (np.ascontiguousarray(self._cache[key64][0], dtype=dtype), bounds)
        return self._cache[key]

    def batch_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Columns ordered batch by batch, and where each batch starts (for ``np.add.reduceat``)."""
        key = ("batch_order", "")
        if key not in self._cache:
            order, starts, _ = _batch_columns_sorted(self.batch_codes, len(self.batch_labels))
            self._cache[key] = (order, starts)
        return self._cache[key]

    def with_batch_residuals(self, batch_residuals: np.ndarray) -> "SimpsonData":
        """The same genes and usable mask with other per-batch residuals (values rebuilt from them).

        Used by the sign-flip calibration: the batch fits stay, the residuals are reflected, and the
        pooled and within residuals are recomputed from the new values.
        """
        fitted = self.values - self.batch_residuals
        values = fitted + batch_residuals
        pooled = values - self._project("pooled", values)
        within = values - self._project("within", values)
        return self._with_residuals(values=values, pooled=pooled, within=within, batch_residuals=batch_residuals)

    def _with_residuals(self, **residuals) -> "SimpsonData":
        """This data with other residual arrays (``values``, ``pooled``, ``within``, ``batch_residuals``):
        the same genes, mask and options; of the cache only the bases (the rest derives from the arrays)."""
        return dataclasses.replace(self, **residuals, _cache={k: v for k, v in self._cache.items() if k[0] == "basis"})

    def with_batch_residuals_saved(
        self,
        factors: np.ndarray,
        directory: str | Path,
        *,
        units: tuple[tuple[str, type], ...] = UNITS_RANDOM_EFFECTS,
    ) -> "SimpsonData":
        """:meth:`with_batch_residuals` of ``batch_residuals * factors``, a block of genes at a time,
        written to ``directory`` with the unit rows ``units`` and memory-mapped back.

        ``factors`` is G x N (e.g. a sign per gene and batch, spread over the batch's columns).  The
        numbers are those of :meth:`with_batch_residuals` (the same per-gene arithmetic, products of
        64-row-aligned blocks); memory holds a block, not the genes: a sign-flip replicate of a large
        scan then runs on an ordinary node.
        """
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        n_genes, n_samples = self.batch_residuals.shape
        basis_pooled, basis_within = self._cache[("basis", "pooled")], self._cache[("basis", "within")]
        order, _, bounds = _batch_columns_sorted(self.batch_codes, len(self.batch_labels))
        outputs = {name: _NpyRowWriter(folder / f"{name}.npy", (n_genes, n_samples), np.float64) for name in _RESIDUALS}
        unit_out = {
            (name, np.dtype(dtype).str): _NpyRowWriter(
                folder / f"{_cache_name((name, np.dtype(dtype).str))}.npy", (n_genes, n_samples), dtype
            )
            for name, dtype in units
        }
        for rows in row_blocks(n_genes):
            residuals = np.asarray(self.batch_residuals[rows]) * factors[rows]
            fitted = np.asarray(self.values[rows]) - np.asarray(self.batch_residuals[rows])
            values = fitted + residuals
            pooled = values - (values @ basis_pooled) @ basis_pooled.T
            within = values - (values @ basis_within) @ basis_within.T
            for name, block in zip(_RESIDUALS, (values, pooled, within, residuals)):
                outputs[name][rows] = block
            unit_blocks = {}
            for (name, _), out in unit_out.items():
                if name not in unit_blocks:
                    if name == "batch_sorted":
                        unit_blocks[name] = _unit_batch_sorted_rows(residuals, self.usable[rows], order, bounds)
                    else:
                        unit_blocks[name] = _unit_rows({"pooled": pooled, "within": within}[name])
                out[rows] = unit_blocks[name]
        for writer in [*outputs.values(), *unit_out.values()]:
            writer.close()
        data = self._with_residuals(**outputs)
        for (name, dtype_str), out in unit_out.items():
            data.cache[(name, dtype_str)] = (out, bounds) if name == "batch_sorted" else out
        data.save(folder)
        return SimpsonData.load(folder)

    def _project(self, which: str, values: np.ndarray) -> np.ndarray:
        basis = self._cache[("basis", which)]
        return (values @ basis) @ basis.T

    def save(self, directory: str | Path) -> None:
        """Write the data, and the derived arrays computed so far, to ``directory`` (``.npy`` + JSON).

        :meth:`load` gives back the same numbers, memory-mapped: the Simpson jobs of the workflow
        (block pairs, replicates, the gather) then share one preparation and hold only the rows they
        use.  The unit rows already in the cache are saved too, so that a job that loads them
        computes nothing again (prepare them first, e.g. :meth:`unit_batch_sorted`).
        """
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        for name in _SAVED_ARRAYS:
            _save_array(folder / f"{name}.npy", getattr(self, name))
        cached = []
        for key, value in self._cache.items():
            array = value[0] if key[0] == "batch_sorted" else value
            if key[0] not in _SAVED_CACHES:
                continue
            file = f"{_cache_name(key)}.npy"
            _save_array(folder / file, array)
            cached.append({"key": list(key), "file": file, "bounds": value[1] if key[0] == "batch_sorted" else None})
        meta = {
            "format": _FORMAT,
            "genes": [str(g) for g in self.genes],
            "samples": None if self.samples is None else [str(s) for s in self.samples],
            "batch_labels": list(self.batch_labels),
            "df_pooled": int(self.df_pooled),
            "df_within": int(self.df_within),
            "genes_excluded": [[str(g), str(r)] for g, r in self.genes_excluded.items()],
            "min_sd": self.min_sd,
            "zero_value": self.zero_value,
            "cache": cached,
        }
        with open(folder / "meta.json", "w", encoding="utf-8") as handle:
            json.dump(meta, handle)

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True) -> "SimpsonData":
        """The data :meth:`save` wrote; arrays memory-mapped read-only unless ``mmap=False``."""
        folder = Path(directory)
        with open(folder / "meta.json", encoding="utf-8") as handle:
            meta = json.load(handle)
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{folder}: not a prepared Simpson data set of format {_FORMAT}")
        arrays = {name: _load_array(folder / f"{name}.npy", mmap) for name in _SAVED_ARRAYS}
        excluded = meta["genes_excluded"]
        data = cls(
            genes=pd.Index(meta["genes"]),
            **arrays,
            df_pooled=int(meta["df_pooled"]),
            df_within=int(meta["df_within"]),
            batch_labels=list(meta["batch_labels"]),
            genes_excluded=pd.Series(
                [r for _, r in excluded],
                index=pd.Index([g for g, _ in excluded], name="gene"),
                name="reason",
                dtype=object,
            ),
            min_sd=float(meta["min_sd"]),
            zero_value=meta["zero_value"],
            samples=None if meta["samples"] is None else pd.Index(meta["samples"]),
        )
        for entry in meta["cache"]:
            key = tuple(entry["key"])
            array = _load_array(folder / entry["file"], mmap)
            if key[0] == "batch_sorted":
                data._cache[key] = (array, [tuple(b) for b in entry["bounds"]])
            else:
                data._cache[key] = array
        return data


def _cache_name(key: tuple[str, str]) -> str:
    """The file stem of a cached array: its key, the dtype without its byte order ("<f4" -> "f4")."""
    return f"cache_{key[0]}_{key[1].lstrip('<>=|')}"


def _save_array(path: Path, array) -> None:
    """``numpy.save``, unless ``array`` is the writer that wrote that file (prepare_saved)."""
    if isinstance(array, _NpyRowWriter) and array.path.resolve() == path.resolve():
        return
    np.save(path, array, allow_pickle=False)


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    """A saved array, memory-mapped read-only when ``mmap``."""
    return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (float64; zero rows stay zero): their inner products are correlations."""
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    positive = norms > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        # the numbers of np.where(positive, matrix / norm, 0), without its second array
        unit = matrix / np.where(positive, norms, 1.0)[:, None]
    unit[~positive] = 0.0
    return unit


def _batch_columns_sorted(codes: np.ndarray, n_batches: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """The sample columns ordered batch by batch (a stable sort of the batch codes), where each batch
    starts in that order (for ``np.add.reduceat``), and each batch's ``(start, stop)``.

    One definition for the in-memory data, the saved preparation and the sign-flip replicates, whose
    arrays must line up column for column.
    """
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_batches)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return order, starts, [(int(a), int(a + c)) for a, c in zip(starts, counts)]


def _unit_batch_sorted_rows(residuals: np.ndarray, usable: np.ndarray, order: np.ndarray, bounds) -> np.ndarray:
    """Per-batch residuals with the columns sorted batch by batch (``order``), each batch's part scaled
    to unit norm, zero where the batch is unusable (float64)."""
    unit = np.zeros(residuals.shape)
    for k, (start, stop) in enumerate(bounds):
        # the block as unit_batch_rows takes it (the same memory layout, so the same sums of squares
        # to the bit)
        block = residuals[:, order[start:stop]]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        use = usable[:, k]
        unit[use, start:stop] = block[use] / norms[use, None]
    return unit


# What SimpsonData.save writes: the data's arrays, and the derived arrays a scan reuses (the unit rows
# of the pooled and within residuals, per dtype; the batch-sorted per-batch unit rows; the bases that
# with_batch_residuals projects on).
_RESIDUALS = ("values", "pooled", "within", "batch_residuals")
_SAVED_ARRAYS = (*_RESIDUALS, "usable", "batch_weights", "batch_codes")
_SAVED_CACHES = ("pooled", "within", "batch_sorted", "basis")
_FORMAT = 1


def _residual(values: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``values - (values @ basis) @ basis.T``, subtracted into the buffer of the projection (one array)."""
    out = (values @ basis) @ basis.T
    np.subtract(values, out, out=out)
    return out


def orthonormal_basis(design: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the column space of ``design`` (N x k), by SVD."""
    if design.shape[1] == 0:
        return np.zeros((design.shape[0], 0))
    u, s, _ = np.linalg.svd(design, full_matrices=False)
    tolerance = s.max() * max(design.shape) * np.finfo(float).eps if s.size else 0.0
    return u[:, s > tolerance]


def align_batch(columns: pd.Index, batch: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Integer batch code per column and the labels, in the order of first appearance.

    A categorical ``batch`` keeps its category order (unused categories dropped).
    """
    missing = [s for s in columns if s not in batch.index]
    if missing:
        raise ValueError(f"{len(missing)} samples have no batch label, e.g. {missing[:5]}")
    aligned = batch.reindex(columns)
    if aligned.isna().any():
        bad = list(aligned.index[aligned.isna()][:5])
        raise ValueError(f"batch label is missing (NaN) for samples {bad}")
    if isinstance(aligned.dtype, pd.CategoricalDtype):
        aligned = aligned.cat.remove_unused_categories()
        codes = aligned.cat.codes.to_numpy()
        labels = [str(c) for c in aligned.cat.categories]
    else:
        # order of first appearance: deterministic and follows the sample sheet
        codes, uniques = pd.factorize(aligned, sort=False)
        labels = [str(u) for u in uniques]
    return np.asarray(codes, dtype=np.int64), labels


def _covariate_matrix(covariates, n_samples: int) -> np.ndarray:
    if covariates is None:
        return np.zeros((n_samples, 0))
    matrix = np.asarray(covariates, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.shape[0] != n_samples:
        raise ValueError(f"covariates have {matrix.shape[0]} rows, expression has {n_samples} samples")
    if not np.isfinite(matrix).all():
        raise ValueError("covariates contain non-finite values")
    return matrix


def prepare(
    expression: pd.DataFrame,
    batch: pd.Series,
    *,
    covariates: np.ndarray | None = None,
    genes: int | None = None,
    min_sd: float = 0.1,
    zero_value: float | None = None,
) -> SimpsonData:
    """Residualise the genes once for every scan of their pairs.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes x samples on a variance-stabilised scale; unique gene index.
    batch : pandas.Series
        Sample id -> batch label; must cover every column of ``expression``.
    covariates : numpy.ndarray, optional
        N x k fixed design without intercept, rows in the order of ``expression.columns``.
    genes : int, optional
        Keep only the ``genes`` most variable genes (sample variance, among scannable genes).
    min_sd : float
        A (gene, batch) is usable by the random-effects test only when the gene's residual SD inside
        the batch, sqrt(RSS_b / (n_b - rank[1, C_b])), is at least this (0.1 on the VST scale).
    zero_value : float, optional
        For count input: the stabilised value of a zero count.  A (gene, batch) is then usable only
        when at least 3 samples of the batch lie above it.  None (continuous input) skips this rule.

    Returns
    -------
    SimpsonData
    """
    if not expression.index.is_unique:
        dup = list(expression.index[expression.index.duplicated()][:5])
        raise ValueError(f"gene identifiers must be unique; duplicated: {dup}")
    values = expression.to_numpy(dtype=np.float64)

    def read_blocks():
        yield values

    return _prepare_blocks(
        read_blocks,
        expression.index,
        expression.columns,
        batch,
        covariates=covariates,
        genes=genes,
        min_sd=min_sd,
        zero_value=zero_value,
        allocate=_allocate_in_memory,
        units=(),
    )


def prepare_saved(
    directory: str | Path,
    read_blocks: Callable[[], Iterable[np.ndarray]],
    gene_ids: pd.Index,
    sample_ids: pd.Index,
    batch: pd.Series,
    *,
    covariates: np.ndarray | None = None,
    genes: int | None = None,
    min_sd: float = 0.1,
    zero_value: float | None = None,
    units: tuple[tuple[str, type], ...] = UNITS_RANDOM_EFFECTS,
) -> SimpsonData:
    """:func:`prepare` streamed: genes read a block at a time, every array written to ``directory``.

    The numbers are :func:`prepare`'s (the same blocks of genes, the same arithmetic); memory holds
    a few blocks of ``PREPARE_BLOCK_GENES`` genes, not the matrix, so that a scan of 60,000 genes x
    20,000 samples prepares on an ordinary node.

    Parameters
    ----------
    directory : str or pathlib.Path
        Where the arrays go (as :meth:`SimpsonData.save` writes them).
    read_blocks : callable
        Called once per pass (twice); yields the genes x samples values (float64) in row order, in
        blocks of any size (e.g. a Parquet matrix's row groups).
    gene_ids, sample_ids : pandas.Index
        The rows and the columns of the values.
    batch, covariates, genes, min_sd, zero_value
        As in :func:`prepare`.
    units : tuple of (str, dtype)
        The unit rows to compute and save with the data: ``("pooled", numpy.float32)`` for
        :meth:`SimpsonData.unit_rows`, ``("batch_sorted", numpy.float64)`` for
        :meth:`SimpsonData.unit_batch_sorted`, and so on.  The scan's jobs then compute none.

    Returns
    -------
    SimpsonData
        The saved data, memory-mapped (:meth:`SimpsonData.load`).
    """
    if not pd.Index(gene_ids).is_unique:
        dup = list(pd.Index(gene_ids)[pd.Index(gene_ids).duplicated()][:5])
        raise ValueError(f"gene identifiers must be unique; duplicated: {dup}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)

    writers: list[_NpyRowWriter] = []

    def allocate(name: str, shape: tuple[int, ...], dtype) -> _NpyRowWriter:
        writers.append(_NpyRowWriter(folder / f"{name}.npy", shape, dtype))
        return writers[-1]

    data = _prepare_blocks(
        read_blocks,
        pd.Index(gene_ids),
        pd.Index(sample_ids),
        batch,
        covariates=covariates,
        genes=genes,
        min_sd=min_sd,
        zero_value=zero_value,
        allocate=allocate,
        units=units,
    )
    for writer in writers:
        writer.close()
    # the arrays the writers hold are in their files already; save() writes the rest and the meta
    data.save(folder)
    return SimpsonData.load(folder)


class _NpyRowWriter:
    """An ``.npy`` file written a block of rows at a time, in row order, through the file (not a
    memory map: the rows written leave the process's memory)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype) -> None:
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self._written = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed by close(), after the last block)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_2_0(self._file, header)

    def __setitem__(self, rows: slice, value: np.ndarray) -> None:
        if rows.start != self._written:
            raise ValueError(f"{self.path.name}: rows must be written in order (at {self._written}, got {rows})")
        block = np.ascontiguousarray(value, dtype=self.dtype)
        self._file.write(memoryview(block).cast("B"))
        self._written = rows.stop

    def close(self) -> None:
        self._file.close()
        if self._written != self.shape[0]:
            raise ValueError(f"{self.path.name}: {self._written} rows written of {self.shape[0]}")


def _allocate_in_memory(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


def row_blocks(n_rows: int, block_rows: int = PREPARE_BLOCK_GENES) -> list[slice]:
    """``n_rows`` rows cut into the fewest blocks of at most about ``block_rows``, each starting at a
    multiple of 64 rows.

    BLAS matrix-vector kernels take rows in groups (of 4 or 8) and round the rows of a last, partial
    group differently: blocks that start at multiples of 64 group every row as the whole matrix
    does, so a row's residual does not depend on the blocks (tested).  Near-equal sizes keep the
    blocks large, where the matrix products take the kernels of large matrices.
    """
    if n_rows <= 0:
        return []
    count = -(-n_rows // block_rows)
    # groups of 64 rows shared out evenly (the first blocks take one group more)
    groups = -(-n_rows // _ROW_ALIGN)
    sizes = np.full(count, groups // count)
    sizes[: groups % count] += 1
    stops = np.minimum(np.cumsum(sizes) * _ROW_ALIGN, n_rows)
    starts = np.concatenate([[0], stops[:-1]])
    return [slice(int(a), int(b)) for a, b in zip(starts, stops)]


def _rebatch(read_blocks, keep: np.ndarray, blocks: list[slice]) -> Iterator[tuple[slice, np.ndarray]]:
    """The rows where ``keep`` is true, from ``read_blocks()``, as C-ordered arrays cut as ``blocks``:
    ``(block, rows)`` pairs.  Refuses a reader that gives more or fewer rows than ``keep`` has (when
    iterated to the end)."""
    pending: list[np.ndarray] = []
    held = 0
    row = 0
    remaining = iter(blocks)
    target = next(remaining, None)
    want = None if target is None else target.stop - target.start
    for block in read_blocks():
        block = np.asarray(block, dtype=np.float64)
        chosen = keep[row : row + block.shape[0]]
        row += block.shape[0]
        if chosen.size != block.shape[0]:
            raise ValueError(f"the blocks hold more rows than the {keep.size} genes")
        if chosen.all():
            part = block
        elif chosen.any():
            part = block[chosen]
        else:
            continue
        pending.append(part)
        held += part.shape[0]
        while want is not None and held >= want:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            out = np.ascontiguousarray(joined[:want])
            rest = joined[want:]
            pending, held = ([rest] if rest.shape[0] else []), rest.shape[0]
            yield target, out
            target = next(remaining, None)
            want = None if target is None else target.stop - target.start
    if row != keep.size:
        raise ValueError(f"the blocks hold {row} rows, the genes are {keep.size}")
    if want is not None:
        raise ValueError("fewer rows than planned")


def _prepare_blocks(
    read_blocks,
    gene_ids: pd.Index,
    sample_ids: pd.Index,
    batch: pd.Series,
    *,
    covariates,
    genes,
    min_sd,
    zero_value,
    allocate,
    units,
) -> SimpsonData:
    """:func:`prepare` and :func:`prepare_saved`: two passes over the genes in blocks of rows.

    Pass 1 finds the scannable genes (finite, not flat, the top ``genes`` by variance); pass 2
    residualises the kept genes and fills the arrays ``allocate(name, shape, dtype)`` gives.  Every
    quantity of a gene is computed from its own row (row by row, or as a row of a matrix product of
    a block of at least ~2,000 rows), so it does not depend on the blocks.
    """
    if min_sd < 0:
        raise ValueError(f"min_sd must be >= 0, got {min_sd}")
    codes, labels = align_batch(sample_ids, batch)
    n_genes, n_samples = len(gene_ids), len(sample_ids)
    indicators = np.zeros((n_samples, len(labels)))
    indicators[np.arange(n_samples), codes] = 1.0
    covariate_matrix = _covariate_matrix(covariates, n_samples)
    basis_pooled = orthonormal_basis(np.column_stack([np.ones(n_samples), covariate_matrix]))
    basis_within = orthonormal_basis(np.column_stack([indicators, covariate_matrix]))
    df_pooled = n_samples - basis_pooled.shape[1] - 2
    df_within = n_samples - basis_within.shape[1] - 2
    if df_within < 1:
        raise ValueError(
            f"too few samples: N={n_samples}, rank[batch, covariates]={basis_within.shape[1]} "
            "leaves no degrees of freedom for the within-batch correlation"
        )
    if genes is not None and genes < 2:
        raise ValueError("genes must be at least 2 (or None for all genes)")

    # Pass 1: which genes can be scanned.
    reasons = np.full(n_genes, "", dtype=object)
    finite = np.zeros(n_genes, dtype=bool)
    flat = np.zeros(n_genes, dtype=bool)
    variance = np.zeros(n_genes) if genes is not None else None
    every_row = np.ones(n_genes, dtype=bool)
    for rows, block in _rebatch(read_blocks, every_row, row_blocks(n_genes)):
        ok = np.isfinite(block).all(axis=1)
        clean = block if ok.all() else np.where(ok[:, None], block, 0.0)
        within = _residual(clean, basis_within)
        ss_within = np.einsum("ij,ij->i", within, within)
        ss_raw = np.einsum("ij,ij->i", clean, clean)
        finite[rows] = ok
        flat[rows] = ok & (ss_within <= RELATIVE_VARIANCE_TOLERANCE * ss_raw)
        if variance is not None:
            variance[rows] = np.var(clean, axis=1, ddof=1)
    reasons[~finite] = "missing or non-finite values"
    reasons[flat] = "zero within-batch variance" + ("" if covariate_matrix.shape[1] == 0 else " after covariates")
    valid = finite & ~flat
    if genes is not None:
        valid_idx = np.flatnonzero(valid)
        if valid_idx.size > genes:
            # stable sort: ties in variance keep the input order
            order = np.argsort(-variance[valid_idx], kind="stable")
            dropped = np.sort(valid_idx[order[genes:]])
            reasons[dropped] = f"not among the top {genes} most variable genes"
            valid[dropped] = False
    keep = np.flatnonzero(valid)

    # Pass 2: the residuals of the kept genes, and the unit rows asked for.
    n_batches = len(labels)
    n_kept = keep.size
    values_out = allocate("values", (n_kept, n_samples), np.float64)
    pooled_out = allocate("pooled", (n_kept, n_samples), np.float64)
    within_out = allocate("within", (n_kept, n_samples), np.float64)
    batch_out = allocate("batch_residuals", (n_kept, n_samples), np.float64)
    usable = np.zeros((n_kept, n_batches), dtype=bool)
    weights = np.zeros(n_batches)
    batch_columns = [np.flatnonzero(codes == k) for k in range(n_batches)]
    batch_bases = [
        orthonormal_basis(np.column_stack([np.ones(columns.size), covariate_matrix[columns]]))
        for columns in batch_columns
    ]
    for k, (columns, basis) in enumerate(zip(batch_columns, batch_bases)):
        weights[k] = columns.size - basis.shape[1] - 2
    order, _, bounds = _batch_columns_sorted(codes, n_batches)
    unit_out = {
        (name, np.dtype(dtype).str): allocate(_cache_name((name, np.dtype(dtype).str)), (n_kept, n_samples), dtype)
        for name, dtype in units
    }
    kept_mask = np.zeros(n_genes, dtype=bool)
    kept_mask[keep] = True
    blocks = row_blocks(n_kept)
    done = 0
    for rows, kept in _rebatch(read_blocks, kept_mask, blocks):
        values_out[rows] = kept
        within = _residual(kept, basis_within)
        within_out[rows] = within
        pooled = _residual(kept, basis_pooled)
        pooled_out[rows] = pooled
        # the random-effects side: each gene regressed on [1, C_b] inside each batch b
        residuals = np.empty_like(kept)
        for k, (columns, basis) in enumerate(zip(batch_columns, batch_bases)):
            block = kept[:, columns]
            residual = block - (block @ basis) @ basis.T
            residuals[:, columns] = residual
            if weights[k] < 1:
                continue
            rss = np.einsum("ij,ij->i", residual, residual)
            raw = np.einsum("ij,ij->i", block, block)
            sd = np.sqrt(rss / (columns.size - basis.shape[1]))
            ok = (sd >= min_sd) & (rss > RELATIVE_VARIANCE_TOLERANCE * raw)
            if zero_value is not None:
                # a little above the zero value, so that rounding of the VST cannot count a zero as expressed
                above = block > zero_value + 1e-9 * max(1.0, abs(zero_value))
                ok &= above.sum(axis=1) >= MIN_EXPRESSED_SAMPLES
            usable[rows, k] = ok
        batch_out[rows] = residuals
        unit_blocks = {}
        for (name, dtype_str), out in unit_out.items():
            if name not in unit_blocks:
                if name == "batch_sorted":
                    unit_blocks[name] = _unit_batch_sorted_rows(residuals, usable[rows], order, bounds)
                else:
                    unit_blocks[name] = _unit_rows({"pooled": pooled, "within": within}[name])
            # float32 rows are the float64 rows cast, as the cached unit rows are
            out[rows] = unit_blocks[name]
        done += rows.stop - rows.start
        logger.info("simpson prepare: %d of %d genes residualised", done, n_kept)
    logger.info(
        "simpson: %d genes, %d batches with w_b >= 1; %.1f%% of (gene, batch) cells usable",
        n_kept,
        int((weights >= 1).sum()),
        100.0 * usable.mean() if usable.size else 0.0,
    )
    excluded_at = np.flatnonzero(reasons != "")
    excluded = pd.Series(
        list(reasons[excluded_at]),
        index=pd.Index(gene_ids[excluded_at], name="gene"),
        name="reason",
        dtype=object,
    )
    data = SimpsonData(
        genes=gene_ids[keep],
        values=values_out,
        pooled=pooled_out,
        within=within_out,
        batch_residuals=batch_out,
        usable=usable,
        batch_weights=weights,
        df_pooled=df_pooled,
        df_within=df_within,
        batch_codes=codes,
        batch_labels=labels,
        genes_excluded=excluded,
        min_sd=float(min_sd),
        zero_value=None if zero_value is None else float(zero_value),
        samples=pd.Index(sample_ids),
    )
    data.cache[("basis", "pooled")] = basis_pooled
    data.cache[("basis", "within")] = basis_within
    for (name, dtype_str), out in unit_out.items():
        data.cache[(name, dtype_str)] = (out, bounds) if name == "batch_sorted" else out
    return data
