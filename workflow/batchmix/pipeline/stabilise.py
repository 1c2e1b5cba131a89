"""The stabilise stage: validation, the low-count filter and the variance-stabilising transformation."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from batchmix import vst as vst_mod
from batchmix.design import fixed_design
from batchmix.design_check import DesignReport
from batchmix.io import COUNT_INPUT_TYPES, InputError, write_json, write_table
from batchmix.io.matrices import SIGNIFICANT_DIGITS, MatrixWriter, round_significant
from batchmix.pipeline.validate import design_report, load_samples, load_validated, sheet_design_report

__all__ = [
    "stabilise_stage",
    "ChunkedVST",
    "CountSummaries",
    "WRITE_BLOCK_GENES",
    "WRITE_BLOCK_VALUES",
    "row_mean_sd",
    "summarise_counts",
    "write_block_genes",
]

MEAN_SD_COLUMNS = ["rank_of_mean", "mean", "sd", "running_median_sd", "scale"]

# Genes per block of the VST and of writing the stabilised matrix (progress is logged per block): at
# most WRITE_BLOCK_GENES, and fewer for wide tables so that a block's arrays stay near 32 MB each
# (a block has several temporaries; 4,096 genes of 20,000 samples would be 655 MB apiece).
WRITE_BLOCK_GENES = 4096
WRITE_BLOCK_VALUES = 1 << 22


def write_block_genes(n_samples: int) -> int:
    """Genes per block of the stabilise stage for a table of ``n_samples`` samples (the file does not
    depend on it)."""
    return max(1, min(WRITE_BLOCK_GENES, WRITE_BLOCK_VALUES // max(1, n_samples)))


logger = logging.getLogger(__name__)


class ChunkedVST:
    """DESeq2's VST a block of genes at a time, with the numbers of :func:`batchmix.vst.vst`, bit for bit.

    No step holds more than a column of the table or a block of genes besides the input:

    1. the size factors (``ratio``): the log geometric mean of each gene positive in every sample,
       summed one sample (column) at a time in the order :func:`~batchmix.vst.vst` sums them; then
       per sample the exact median of its log ratios over all those genes (a selection, so the
       order of the genes does not matter). ``poscounts`` uses :func:`batchmix.vst.size_factors` on
       the whole table. Then the mean normalised count of every gene, summed over the same groups
       of samples as :func:`~batchmix.vst.vst` does.
    2. the dispersion trend from DESeq2's ``nsub`` genes (:func:`~batchmix.vst.vst_subset`), or from
       all genes when ``nsub`` is None or too few genes qualify (as :func:`~batchmix.vst.vst`);
    3. :meth:`transform`: the closed-form VST (``parametric``, ``mean``) of one block, element by
       element with the same operations. The ``local`` trend's numerical integral is not cut into
       blocks: that branch runs :func:`~batchmix.vst.vst` on the whole table.

    Parameters are those of :func:`batchmix.vst.vst`; ``block_genes`` sets the blocks; with ``threads``
    of 2 or more the size factors are computed in two threads (halves of the genes, then of the
    samples: each number is computed as with one).
    """

    # Samples per block of the row sums, as batchmix.vst sums the mean normalised counts: the same
    # blocks give the same rounding (test_stages_chunked_vst checks the equality).
    _SUM_BLOCK_VALUES = 65536

    def __init__(
        self,
        *,
        fit_type: str = "parametric",
        blind: bool = True,
        design: np.ndarray | None = None,
        nsub: int | None = 1000,
        size_factor_method: str = "ratio",
        block_genes: int = WRITE_BLOCK_GENES,
        threads: int = 1,
    ):
        self.fit_type_requested = fit_type
        self.blind = blind
        self.design = design
        self.nsub = nsub
        self.size_factor_method = size_factor_method
        self.block_genes = int(block_genes)
        self.threads = int(threads)
        self.whole: vst_mod.VSTResult | None = None

    def _blocks(self, n_genes: int):
        return range(0, n_genes, self.block_genes)

    def fit(self, counts: pd.DataFrame, size_factors_ready: Callable[[np.ndarray], None] | None = None) -> ChunkedVST:
        """Size factors, mean normalised counts and the dispersion trend of ``counts`` (genes × samples).

        ``size_factors_ready``: called with the size factors (in the order of the columns) as soon as
        they are known, before the trend is fitted, so that work that needs only them can start (not
        called when the whole table goes through :func:`batchmix.vst.vst`).
        """
        started = time.perf_counter()
        n_genes, n = counts.shape
        if n_genes == 0 or self.fit_type_requested == "local" or not self._counts_ok(counts):
            return self._fit_whole(counts)
        y = _count_values(counts)
        if self.size_factor_method == "ratio":
            sf = self._ratio_size_factors(counts, y)
        else:
            sf = vst_mod.size_factors(counts, method=self.size_factor_method).to_numpy()
        if size_factors_ready is not None:
            size_factors_ready(sf)
        # Sample by sample, a few samples' quotients summed first, as batchmix.vst sums them: the same
        # groups give the same rounding (test_stages_chunked_vst checks the equality). A gene's sum
        # does not depend on the other genes, so all genes go at once, a few columns at a time.
        step = max(1, self._SUM_BLOCK_VALUES // n_genes)
        acc = np.zeros(n_genes)
        for s0 in range(0, n, step):
            acc += _sum_over_columns(y[:, s0 : s0 + step] / sf[s0 : s0 + step])
        base_mean = acc / n
        logger.info("VST: size factors and mean counts of %d genes (%.1f s)", n_genes, time.perf_counter() - started)
        notes: list[str] = []
        rows, used_nsub = np.arange(n_genes), self.nsub
        if self.nsub is not None:
            if n_genes < self.nsub or np.sum(base_mean > 5) < self.nsub:
                notes.append(
                    f"fewer than nsub={self.nsub} genes with mean normalised count > 5: "
                    "trend fitted on all genes (varianceStabilizingTransformation)"
                )
                logger.info(notes[-1])
                used_nsub = None
            else:
                rows = vst_mod.vst_subset(base_mean, self.nsub)
        if self.blind or self.design is None:
            if not self.blind:
                raise ValueError("blind=False needs the design matrix")
            x = np.ones((n, 1))
        else:
            x = np.asarray(self.design, dtype=float)
        disp = vst_mod.estimate_dispersions(counts.iloc[rows].to_numpy(), sf, x)
        trend = vst_mod.fit_dispersion_trend(
            disp["base_mean"].to_numpy(), disp["disp_gene_est"].to_numpy(), self.fit_type_requested
        )
        notes.extend(trend.notes)
        if trend.fit_type == "local":  # the parametric fit fell back to local: see the class docstring
            return self._fit_whole(counts)
        logger.info(
            "VST: dispersion trend (%s) on %d genes (%.1f s)", trend.fit_type, len(rows), time.perf_counter() - started
        )
        self.size_factors = pd.Series(sf, index=counts.columns, name="size_factor")
        self._sf_columns, self._sf_values = counts.columns, sf
        self.trend, self.notes, self.used_nsub, self.base_mean = trend, notes, used_nsub, base_mean
        return self

    def _counts_ok(self, counts: pd.DataFrame) -> bool:
        """Whether every count is finite and non-negative (else :func:`batchmix.vst.vst` says what is wrong)."""
        if counts.shape[1] == 0:
            return False
        for g0 in self._blocks(len(counts)):
            y = counts.iloc[g0 : g0 + self.block_genes].to_numpy()
            lo, hi = y.min(), y.max()
            if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0):
                return False
        return True

    def _ratio_size_factors(self, counts: pd.DataFrame, y: np.ndarray) -> np.ndarray:
        """DESeq2's median of ratios, one sample at a time (exact: a median is a selection).

        ``y``: the counts as an array (genes × samples). The genes positive in every sample are
        gathered one sample (column) at a time, twice: for their log geometric means (summed over
        the samples in order, as :func:`batchmix.vst.vst` sums them), then for each sample's median
        log ratio. Gathering a column again costs less than a samples × genes copy of the logs:
        fresh memory is the expensive part of this step (each new page is faulted in), not the
        arithmetic.
        """
        n = y.shape[1]
        rows = np.flatnonzero(y.min(axis=1) > 0)
        if rows.size == 0:
            # batchmix.vst raises the message that tells the user what to do (poscounts)
            return vst_mod.size_factors(counts, method="ratio").to_numpy()

        def log_geometric_means(genes: np.ndarray) -> np.ndarray:
            centre = np.empty(genes.size)
            for s in range(n):
                sub = y[genes, s]
                logy = np.log(sub, out=np.empty(sub.shape)) if sub.dtype != np.float64 else np.log(sub, out=sub)
                if s == 0:
                    centre[:] = logy
                else:
                    centre += logy
            centre /= n
            return centre

        def median_log_ratios(samples: np.ndarray) -> np.ndarray:
            medians = np.empty(samples.size)
            for i, s in enumerate(samples):
                ratios = y[rows, s]
                if ratios.dtype != np.float64:
                    ratios = ratios.astype(np.float64)
                np.log(ratios, out=ratios)
                ratios -= centre
                medians[i] = np.median(ratios, overwrite_input=True)
            return medians

        # numpy releases the GIL in the logs and the partitions of whole columns, so two threads
        # share the work; genes (then samples) are independent, so the halves give the same numbers
        if self.threads > 1 and rows.size * n >= _THREADED_SIZE_FACTOR_VALUES:
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="size-factors") as pool:
                centre = np.concatenate(list(pool.map(log_geometric_means, np.array_split(rows, 2))))
                medians = np.concatenate(list(pool.map(median_log_ratios, np.array_split(np.arange(n), 2))))
        else:
            centre = log_geometric_means(rows)
            medians = median_log_ratios(np.arange(n))
        return np.exp(medians)

    def _fit_whole(self, counts: pd.DataFrame) -> ChunkedVST:
        result = vst_mod.vst(
            counts,
            fit_type=self.fit_type_requested,
            blind=self.blind,
            design=self.design,
            nsub=self.nsub,
            size_factor_method=self.size_factor_method,
        )
        self.whole = result
        self.size_factors, self.trend, self.notes, self.used_nsub = (
            result.size_factors,
            result.trend,
            result.notes,
            result.nsub,
        )
        return self

    @property
    def fit_type(self) -> str:
        """The trend branch that ran (after fallback)."""
        return self.trend.fit_type

    @property
    def coefficients(self) -> dict:
        """The trend's coefficients."""
        return dict(self.trend.coefficients)

    def transform(self, counts: pd.DataFrame, start: int = 0) -> pd.DataFrame:
        """The stabilised values of a block of genes of the fitted table (``start``: its first gene's position).

        The values come in column-major order (genes × samples), whatever the order of ``counts``.
        """
        if self.whole is not None:
            return self.whole.values.iloc[start : start + len(counts)]
        y = _count_values(counts)
        if counts.columns is self._sf_columns or counts.columns.equals(self._sf_columns):
            sf = self._sf_values
        else:
            sf = self.size_factors.loc[counts.columns].to_numpy()
        # batchmix.vst's closed forms, operation by operation, so that every value is the same double;
        # element by element, so the memory order does not change a value
        u = np.empty(y.shape, order="F")
        if self.trend.fit_type == "parametric":
            a0, a1 = self.trend.coefficients["a0"], self.trend.coefficients["a1"]
            c = 1.0 + a1
            t = np.multiply(y, (2.0 * a0) / sf, out=np.empty(y.shape, order="F"))
            np.add(t, 2.0 * c, out=u)
            u *= t
            np.sqrt(u, out=u)
            u += t
            del t
            u += c
            np.log2(u, out=u)
            u -= math.log2(4.0 * a0)
        else:  # mean
            alpha = self.trend.coefficients["mean"]
            np.divide(y, sf, out=u)
            u *= alpha
            np.sqrt(u, out=u)
            np.arcsinh(u, out=u)
            u *= 2
            u -= math.log(alpha)
            u -= math.log(4)
            u /= math.log(2)
        return pd.DataFrame(u, index=counts.index, columns=counts.columns, copy=False)


# Counts (genes positive in every sample × samples) from which the size factors take two threads.
_THREADED_SIZE_FACTOR_VALUES = 1 << 20


def _count_values(counts: pd.DataFrame) -> np.ndarray:
    """The counts as an array, genes × samples, without a copy: integers stay integers, others float64."""
    y = counts.to_numpy()
    if y.dtype.kind not in "iu" and y.dtype != np.float64:
        y = counts.to_numpy(dtype=np.float64)
    return y


def _sum_over_columns(values: np.ndarray) -> np.ndarray:
    """Row sums of a genes × samples array, adding the columns in order (as numpy sums a column-major
    array over its samples, whatever the array's memory order)."""
    total = values[:, 0].copy()
    for j in range(1, values.shape[1]):
        total += values[:, j]
    return total


def _block_mean_sd(values: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The mean and sd of every gene of a block, as :func:`batchmix.vst.mean_sd` takes them (NaN-aware)."""
    v = values.to_numpy(dtype=float)
    mean = np.nanmean(v, axis=1) if v.size else np.array([])
    sd = np.nanstd(v, axis=1, ddof=1) if v.shape[1] > 1 else np.full(v.shape[0], np.nan)
    return mean, sd


def row_mean_sd(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and sd (ddof 1) of every row of a genes × samples array.

    The doubles of :func:`numpy.nanmean` and :func:`numpy.nanstd` (which :func:`batchmix.vst.mean_sd`
    uses): the same operations on an array of the same memory order, without their copy and NaN mask
    when no value is missing (with one, those functions run). Each row's numbers depend on that row only.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        The means and the standard deviations, one per row.
    """
    n = values.shape[1]
    total = np.sum(values, axis=1)
    if not np.isfinite(total).all() or n < 2 or values.shape[0] == 0:
        return _block_mean_sd(pd.DataFrame(values, copy=False))  # NaN (or too few samples): numpy's own
    mean = total / n
    deviation = np.subtract(values, mean[:, None])
    np.multiply(deviation, deviation, out=deviation)
    sd = np.sum(deviation, axis=1)
    sd /= n - 1
    np.sqrt(sd, out=sd)
    return mean, sd


class _BlockStats:
    """The per-gene mean and sd of the genes of the blocks, in table order, for :func:`_mean_sd_from_blocks`."""

    def __init__(self):
        self.positions: list[np.ndarray] = []
        self.mean: list[np.ndarray] = []
        self.sd: list[np.ndarray] = []

    def add(self, g0: int, keep: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> None:
        """The genes ``keep`` (a mask over the block that starts at position ``g0``) with finite mean and sd."""
        ok = keep & np.isfinite(mean) & np.isfinite(sd)
        self.positions.append(g0 + np.flatnonzero(ok))
        self.mean.append(mean[ok])
        self.sd.append(sd[ok])


def _mean_sd_from_blocks(stats: _BlockStats, genes: np.ndarray) -> pd.DataFrame:
    """:func:`batchmix.vst.mean_sd` of a whole table from its blocks' mean and sd per gene.

    The per-gene mean and sd do not depend on the other genes; the ranks and the running median
    are taken again over all genes, as :func:`~batchmix.vst.mean_sd` does (genes in table order,
    stable sort by mean, window 2% of the genes). ``genes``: the table's gene ids.
    """
    positions = np.concatenate(stats.positions) if stats.positions else np.array([], dtype=np.intp)
    mean = np.concatenate(stats.mean) if stats.mean else np.array([])
    sd = np.concatenate(stats.sd) if stats.sd else np.array([])
    order = np.argsort(mean, kind="stable")
    n = order.size
    sd_sorted = sd[order]
    run = vst_mod.running_median(sd_sorted, max(1, n // 50))
    return pd.DataFrame(
        {
            "gene_id": genes[positions[order]],
            "rank_of_mean": np.arange(1, n + 1),
            "mean": mean[order],
            "sd": sd_sorted,
            "running_median_sd": run,
        }
    )


@dataclass
class CountSummaries:
    """What the stabilise stage reports of the counts themselves (they need the size factors only).

    Attributes
    ----------
    status : numpy.ndarray
        ``ok`` or ``filtered:low_counts`` per gene.
    base_mean : numpy.ndarray
        The mean normalised count per gene.
    n_observed : numpy.ndarray
        The samples with a count, per gene.
    before : _BlockStats
        Mean and sd of log2(normalised count + 1) of the ``ok`` genes.
    """

    status: np.ndarray
    base_mean: np.ndarray
    n_observed: np.ndarray
    before: _BlockStats


def summarise_counts(expr: pd.DataFrame, sf: np.ndarray, fcfg: dict, block_genes: int) -> CountSummaries:
    """The low-count filter, the mean normalised count and the mean and sd of log2(normalised count + 1).

    A block of ``block_genes`` genes at a time; the numbers pandas gave for ``block / sf``, its row
    means and ``log2(. + 1)``, with numpy on an array of the block's memory order, so the sums add in
    the same order. ``sf``: the size factors in the order of the columns; ``fcfg``: the config's
    ``filter`` (``min_count``, ``min_samples``).

    Returns
    -------
    CountSummaries
    """
    n_genes, n_samples = expr.shape
    out = CountSummaries(
        status=np.full(n_genes, "ok", dtype=object),
        base_mean=np.empty(n_genes),
        n_observed=np.empty(n_genes, dtype=np.int64),
        before=_BlockStats(),
    )
    for g0 in range(0, n_genes, block_genes):
        block = expr.iloc[g0 : g0 + block_genes]
        g1 = g0 + len(block)
        keep = vst_mod.low_count_filter(block, min_count=fcfg["min_count"], min_samples=fcfg["min_samples"])
        keep = keep.reindex(block.index).fillna(False).astype(bool).to_numpy()
        out.status[g0:g1][~keep] = "filtered:low_counts"
        before = np.divide(block.to_numpy(), sf)
        out.base_mean[g0:g1] = np.sum(before, axis=1) / n_samples
        before += 1.0
        np.log2(before, out=before)
        out.before.add(g0, keep, *row_mean_sd(before))
        del before
        out.n_observed[g0:g1] = block.notna().sum(axis=1).to_numpy()
    return out


class _BlockWriter:
    """Blocks handed to a :class:`~batchmix.io.matrices.MatrixWriter`, in order, in a second thread or not.

    At most one block waits or is being written while the caller prepares the next one, so memory
    holds two blocks; an error of the writer is raised at the next block or at the end.
    """

    def __init__(self, writer: MatrixWriter, *, background: bool):
        self.writer = writer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stabilise-writer") if background else None
        self._pending: Future | None = None

    def write(self, genes: list[str], values: np.ndarray) -> None:
        """Hand on a block's gene ids and values (:meth:`~batchmix.io.matrices.MatrixWriter.write_values`)."""
        if self._pool is None:
            self.writer.write_values(genes, values)
            return
        self.wait()
        self._pending = self._pool.submit(self.writer.write_values, genes, values)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> _BlockWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def _early_design_report(config: dict, samples_path: str) -> DesignReport | None:
    """The design check of the sample sheet, as :func:`batchmix.pipeline.validate.design_report` gives it
    for the validated inputs; None for log-scale input (whose check reads the values) or when the sheet
    cannot be read (the validation then says why)."""
    if config["input_type"] not in COUNT_INPUT_TYPES:
        return None
    try:
        return sheet_design_report(config, load_samples(config, samples_path))
    except Exception:  # noqa: BLE001 - any error is raised again by the validation in the main thread
        logger.debug("early design check failed; it runs again after the validation", exc_info=True)
        return None


def stabilise_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Validate the inputs, filter low counts and stabilise the variance, a block of genes at a time.

    Inputs ``expression`` and ``samples`` (the config's files). Writes ``outputs["expression"]``
    (genes × samples on the stabilised scale, every input gene; Parquet by default, see
    :mod:`batchmix.io.matrices`), ``outputs["size_factors"]``, ``outputs["gene_status"]`` (``ok`` or
    ``filtered:low_counts``), ``outputs["mean_sd"]`` (mean–sd plot data before and after) and
    ``outputs["info"]`` (the branch that ran, coefficients, gene counts).

    Besides the input table, memory holds one block of genes (:func:`write_block_genes`) at a time, two
    with ``params["threads"]`` of 2 or more (:class:`ChunkedVST`); the results are those of
    :func:`batchmix.vst.vst` on the whole table. With two threads, the counts' own summaries (the
    filter, the mean normalised counts, the "before" mean-sd) are computed while the dispersion
    trend is fitted, and a block of the matrix is encoded and written while the next is computed.

    Returns
    -------
    dict
        Counts: ``genes``, ``samples``, ``genes_ok``, ``genes_filtered``.
    """
    started = time.perf_counter()
    # The design check (which needs the sample sheet only, except for log-scale input) runs while
    # the table is read: the parse runs in threads that release the GIL.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stabilise-design") as pool:
        early_report = pool.submit(_early_design_report, config, inputs["samples"])
        validated = load_validated(config, expression=inputs["expression"], samples=inputs["samples"], check=False)
        report = early_report.result()
    # The design check too: `batchmix stabilise` refuses a design that cannot be fitted before it
    # writes anything, as the workflow's main process does before any job. Its errors come after
    # those of the inputs, as load_validated raises them.
    if report is None:
        report = design_report(config, validated)
    report.raise_on_errors(source=str(inputs["samples"]))
    expr = validated.expression
    n_genes = int(expr.shape[0])
    logger.info("read %d genes x %d samples (%.1f s)", n_genes, expr.shape[1], time.perf_counter() - started)
    info: dict = {"input_type": config["input_type"], "n_genes": n_genes, "n_samples": int(expr.shape[1])}
    counts_input = config["input_type"] in COUNT_INPUT_TYPES
    block_genes = write_block_genes(expr.shape[1])
    threads = int(params.get("threads", 1) or 1)

    if counts_input:
        vcfg, fcfg = config["vst"], config["filter"]
        design = None
        if not vcfg["blind"]:
            design, _ = fixed_design(config["model"], validated.samples)
        # With two threads, the counts are summarised (filter, normalised means, the "before" mean-sd)
        # while the trend is fitted: they need the size factors only.
        early: dict = {}
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stabilise-counts") if threads > 1 else None

        def summarise(sf_fitted: np.ndarray) -> None:
            early["sf"] = sf_fitted
            early["job"] = pool.submit(summarise_counts, expr, sf_fitted, fcfg, block_genes)

        try:
            model = ChunkedVST(
                fit_type=vcfg["fit_type"],
                blind=vcfg["blind"],
                design=design,
                nsub=vcfg["nsub"],
                size_factor_method=vcfg["size_factors"],
                block_genes=block_genes,
                threads=threads,
            ).fit(expr, size_factors_ready=summarise if pool is not None else None)
        except ValueError as err:
            raise InputError(f"{inputs['expression']}: variance stabilisation failed: {err}") from err
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        sf = model.size_factors.loc[expr.columns].to_numpy()
        if "job" in early and np.array_equal(early["sf"].view(np.uint64), sf.view(np.uint64)):
            summaries = early["job"].result()
        else:  # one thread, or the whole-table fallback (whose factors are the same doubles)
            summaries = summarise_counts(expr, sf, fcfg, block_genes)
        size_factors = model.size_factors.rename("size_factor").rename_axis("sample_id").reset_index()
        info.update(
            {
                "vst_fit_type_requested": vcfg["fit_type"],
                "vst_fit_type_used": model.fit_type,
                "vst_blind": bool(vcfg["blind"]),
                "vst_nsub": model.used_nsub,
                "vst_coefficients": model.coefficients,
                "size_factor_method": vcfg["size_factors"],
                "before_scale": "log2(normalised count + 1)",
            }
        )
    else:
        # Size factors do not apply to log-scale input; the file still lists every sample.
        size_factors = pd.DataFrame({"sample_id": expr.columns, "size_factor": np.nan})
        info.update({"vst_fit_type_used": "none (input_type: log)", "before_scale": "input (log scale)"})
        summaries = CountSummaries(
            status=np.full(n_genes, "ok", dtype=object),
            base_mean=np.empty(n_genes),
            n_observed=np.empty(n_genes, dtype=np.int64),
            before=_BlockStats(),
        )
    status, base_mean, n_observed, before_stats = (
        summaries.status,
        summaries.base_mean,
        summaries.n_observed,
        summaries.before,
    )
    mean_expression = np.empty(n_genes)
    after_stats = _BlockStats()
    # With two threads, a block is encoded and written (Arrow, which releases the GIL) while the next
    # one is transformed; the file is the same, written block after block in order.
    with (
        # The values are rounded here, so that the writer thread only encodes and writes: the two
        # threads then share the work of a block about equally (the same numbers: the writer would
        # round them the same way).
        MatrixWriter(outputs["expression"], list(expr.columns), n_genes=n_genes, significant_digits=None) as writer,
        _BlockWriter(writer, background=threads > 1) as block_writer,
    ):
        for g0 in range(0, n_genes, block_genes):
            block = expr.iloc[g0 : g0 + block_genes]
            g1 = g0 + len(block)
            if counts_input:
                try:
                    values = model.transform(block, start=g0)
                except ValueError as err:
                    raise InputError(f"{inputs['expression']}: variance stabilisation failed: {err}") from err
                after_mean, after_sd = row_mean_sd(values.to_numpy())
                after_stats.add(g0, status[g0:g1] == "ok", after_mean, after_sd)
                # limma's trend covariate: the average on the log-like scale the models see
                mean_expression[g0:g1] = after_mean
            else:
                values = block
                base_mean[g0:g1] = block.mean(axis=1).to_numpy()
                ok = status[g0:g1] == "ok"
                before_stats.add(g0, ok, *_block_mean_sd(block))
                after_stats.add(g0, ok, *_block_mean_sd(block))
                mean_expression[g0:g1] = values.mean(axis=1).to_numpy()
                n_observed[g0:g1] = block.notna().sum(axis=1).to_numpy()
            block_writer.write(
                [str(g) for g in block.index],
                round_significant(values.to_numpy(dtype=np.float64), SIGNIFICANT_DIGITS),
            )
            logger.info("stabilised %d of %d genes (%.1f s)", g1, n_genes, time.perf_counter() - started)
        # The summary tables are written while the writer thread finishes the matrix's last blocks.
        ok_all = status == "ok"
        if ok_all.sum() >= 2:
            genes = expr.index.to_numpy()
            mean_sd = pd.concat(
                [
                    _mean_sd_from_blocks(before_stats, genes).assign(scale="before"),
                    _mean_sd_from_blocks(after_stats, genes).assign(scale="after"),
                ],
                ignore_index=True,
            )
        else:
            mean_sd = pd.DataFrame(columns=MEAN_SD_COLUMNS)

        info["n_genes_ok"] = int(ok_all.sum())
        info["n_genes_filtered"] = int((~ok_all).sum())
        info["notes"] = validated.notes
        gene_status = pd.DataFrame(
            {
                "gene_id": expr.index,
                "status": status,
                "base_mean": base_mean,
                "mean_expression": mean_expression,
                "n_observed": n_observed,
            }
        )
        write_table(size_factors, outputs["size_factors"])
        write_table(gene_status, outputs["gene_status"])
        write_table(mean_sd, outputs["mean_sd"])
        write_json(info, outputs["info"])
    return {
        "genes": info["n_genes"],
        "samples": info["n_samples"],
        "genes_ok": info["n_genes_ok"],
        "genes_filtered": info["n_genes_filtered"],
    }
