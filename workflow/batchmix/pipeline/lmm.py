"""The per-gene LMM stages: split the genes into chunks, fit each chunk, gather the chunks.

The stabilised matrix is Parquet with row groups of genes (:mod:`batchmix.io.matrices`): the split
only writes each chunk's gene range (a small JSON file), and each chunk job reads the row groups
that hold its genes. A chunk hands the gather typed intermediates where the gather needs numbers
(its gene fits as Parquet, its corrected expression as ``.npy``) and final text where it only
copies (the BLUPs and the covariances, TSV). The gather streams them; the gathered tables have the
same bytes whatever the number of chunks, and the same as when the chunks were all TSV.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from batchmix import lmm
from batchmix.io import (
    read_matrix,
    read_result_table,
    table_lines,
    table_writer,
    write_json,
    write_table,
)
from batchmix.io.matrices import (
    MatrixWriter,
    genes_per_row_group,
    iter_matrix_rows,
    iter_parquet_row_groups,
    matrix_format,
    matrix_shape,
    read_matrix_rows,
    read_parquet_table,
    round_significant,
    table_round_trip,
    write_parquet_table,
)
from batchmix.lmm.fitting import corrected_values
from batchmix.pipeline.validate import load_samples

__all__ = [
    "split_genes_stage",
    "chunk_ranges",
    "lmm_chunk_stage",
    "gather_lmm_stage",
    "concatenate_tables",
    "concatenate_matrices",
    "concatenate_arrays",
    "read_chunk_fits",
    "write_long_table",
    "FIT_BLOCK_GENES",
]

logger = logging.getLogger(__name__)

# Genes fitted per call inside a chunk job: progress is logged after each block. Each gene's fit
# does not depend on the others in its call, so the blocks give the same numbers as one call.
FIT_BLOCK_GENES = 2000


def chunk_ranges(n_genes: int, n_chunks: int, block_genes: int | None = None) -> list[tuple[int, int]]:
    """The gene positions ``[start, stop)`` of each chunk, in order.

    Chunks hold whole blocks of ``block_genes`` genes (default :data:`FIT_BLOCK_GENES`: the blocks a
    chunk job fits together), the
    blocks shared out by ``numpy.array_split`` (the first chunks get one block more; the last block
    may be short; chunks are empty when there are more chunks than blocks). Every block of the fit
    then holds the same genes whatever the chunk count, so the tables are the same bit for bit: a
    matrix product's last bits depend on its size (BLAS takes other kernels for small products), and
    chunks cut anywhere would give the blocks at their edges other sizes.
    """
    block_genes = FIT_BLOCK_GENES if block_genes is None else int(block_genes)
    n_blocks = -(-n_genes // block_genes)
    counts = [len(part) for part in np.array_split(np.arange(n_blocks), n_chunks)]
    stops = [min(n_genes, block_genes * int(total)) for total in np.cumsum(counts)]
    starts = [0, *stops[:-1]]
    return list(zip(starts, stops))


def split_genes_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Cut the genes into contiguous chunks, in input order, and write each chunk's gene range.

    Inputs ``gene_status`` (one row per gene, in the stabilised matrix's order); ``outputs["chunks"]``
    is the list of chunk files (JSON), in order: ``{"start", "stop", "n_genes", "first_gene",
    "last_gene"}`` (positions ``[start, stop)`` of the stabilised matrix, ``n_genes`` of the whole
    run). No expression values are copied: the chunk jobs read their genes' row groups.
    """
    status = read_result_table(inputs["gene_status"])
    genes = status["gene_id"].tolist()
    ranges = chunk_ranges(len(genes), len(outputs["chunks"]))
    for (start, stop), path in zip(ranges, outputs["chunks"]):
        write_json(
            {
                "start": start,
                "stop": stop,
                "n_genes": len(genes),
                "first_gene": genes[start] if stop > start else None,
                "last_gene": genes[stop - 1] if stop > start else None,
            },
            path,
        )
    return {"genes": len(genes), "chunks": len(ranges)}


def _read_rows(path: str, start: int, stop: int) -> tuple[pd.DataFrame, int]:
    """Genes ``start:stop`` of a matrix and its gene count: from Parquet its row groups only, from
    ``.tsv.gz`` or ``.h5ad`` (``outputs.matrices``) the whole file, then cut."""
    if matrix_format(path) == "parquet":
        return read_matrix_rows(path, start, stop), matrix_shape(path)[0]
    whole = read_matrix(path)
    return whole.iloc[start:stop], len(whole)


def _read_chunk_expression(inputs: dict, status: pd.Series) -> pd.DataFrame:
    """The chunk's genes of the stabilised matrix, checked against its gene range and gene_status."""
    spec = json.loads(Path(inputs["genes"]).read_text())
    expr, n_genes = _read_rows(inputs["expression"], spec["start"], spec["stop"])
    if n_genes != spec["n_genes"] or len(status) != n_genes:
        raise RuntimeError(
            f"{inputs['expression']} has {n_genes} genes, {inputs['genes']} expects {spec['n_genes']} and "
            f"{inputs['gene_status']} lists {len(status)}; one of them is stale: rerun the stabilise rule"
        )
    if expr.index.tolist() != status.index[spec["start"] : spec["stop"]].tolist():
        raise RuntimeError(
            f"the genes {spec['start']}..{spec['stop']} of {inputs['expression']} differ from those of "
            f"{inputs['gene_status']}; rerun the stabilise rule"
        )
    return expr


def lmm_chunk_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Fit the per-gene LMM on one chunk of genes.

    Inputs ``genes`` (the chunk's gene range from :func:`split_genes_stage`), ``expression`` (the
    stabilised matrix: only the chunk's row groups are read), ``gene_status``, ``samples``. Writes
    ``outputs["fits"]`` (Parquet: the numbers its TSV would carry, :func:`batchmix.io.matrices.table_round_trip`,
    and the sample order of the corrected expression as metadata), ``outputs["blups"]``,
    ``outputs["fixed_vcov"]`` (Cov(β̂) of every fitted gene, long; both TSV, which the gather copies
    as they are) and, when the batch is a random grouping factor, ``outputs["corrected"]`` (the
    chunk's expression minus its batch BLUPs, rounded as the matrices are, genes × samples float64,
    ``.npy`` in column-major order). Logs genes done out of the chunk's genes as it goes.
    """
    # the ids and statuses only: every chunk reads the whole gene list
    status = read_result_table(inputs["gene_status"], columns=["gene_id", "status"]).set_index("gene_id")["status"]
    expr = _read_chunk_expression(inputs, status)
    samples = load_samples(config, inputs["samples"]).loc[expr.columns]
    status = status.reindex(expr.index)
    started = time.perf_counter()
    fits, blups, vcovs = [], [], []
    n_genes = len(expr)
    # column-major: the gather writes the matrix a sample column at a time
    corrected = np.empty((expr.shape[1], n_genes), dtype=np.float64).T if "corrected" in outputs else None
    for g0 in range(0, max(n_genes, 1), FIT_BLOCK_GENES):
        block = expr.iloc[g0 : g0 + FIT_BLOCK_GENES]
        fit = lmm.fit(
            block, samples, config["model"], reml=config["reml"], gene_status=status.iloc[g0 : g0 + FIT_BLOCK_GENES]
        )
        fits.append(fit.gene_fits)
        blups.append(fit.blups)
        vcovs.append(fit.fixed_vcov)
        if corrected is not None and len(block):
            corrected_values(block, samples, fit, groups=[config["batch"]], out=corrected[g0 : g0 + len(block)])
        done = min(n_genes, g0 + FIT_BLOCK_GENES)
        logger.info("LMM: %d of %d genes fitted (%.1f s)", done, n_genes, time.perf_counter() - started)
    gene_fits = pd.concat(fits, ignore_index=True) if len(fits) > 1 else fits[0]
    rounded = gene_fits.copy()
    floats = [name for name in rounded.columns if rounded[name].dtype == np.float64]
    if floats:  # every float column in one call: its text round trip is paid once
        values = table_round_trip(np.concatenate([rounded[name].to_numpy() for name in floats]))
        for j, name in enumerate(floats):
            rounded[name] = values[j * len(rounded) : (j + 1) * len(rounded)]
    write_parquet_table(rounded, outputs["fits"], {"samples": [str(c) for c in expr.columns]})
    write_long_table(pd.concat(blups, ignore_index=True) if len(blups) > 1 else blups[0], outputs["blups"])
    write_long_table(pd.concat(vcovs, ignore_index=True) if len(vcovs) > 1 else vcovs[0], outputs["fixed_vcov"])
    if corrected is not None:
        np.save(outputs["corrected"], round_significant(corrected), allow_pickle=False)
    fitted = gene_fits["status"].isin(["ok", "singular"])
    return {"genes": int(n_genes), "genes_fitted": int(fitted.sum())}


def write_long_table(table: pd.DataFrame, path: str) -> None:
    """:func:`batchmix.io.write_table` of a long table (the BLUPs, the covariances of the fixed effects).

    Kept as the chunk's writer of its long tables: write_table builds them as bytes, the text columns
    from their few distinct values and the numbers with :func:`batchmix.io.textformat.format_cells`.
    """
    write_table(table, path)


def read_chunk_fits(path: str) -> tuple[pd.DataFrame, dict]:
    """A chunk's gene fits and metadata: Parquet as :func:`lmm_chunk_stage` writes them (or a TSV table)."""
    if str(path).endswith(".parquet"):
        return read_parquet_table(path)
    return read_result_table(path), {}


def gather_lmm_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Concatenate the chunks in order, moderate the variances over all genes, and write the tables.

    Inputs ``fits``, ``blups``, ``fixed_vcov``, ``corrected`` (lists of chunk files, in order; ``corrected``
    empty when the batch is not random), ``gene_status``, ``samples``. Writes ``outputs["gene_fits"]``,
    ``outputs["blups"]``, ``outputs["fixed_vcov"]``, ``outputs["model"]`` (the model's metadata,
    :func:`batchmix.lmm.model_metadata`, JSON) and ``outputs["corrected"]`` when asked for (in the
    format its name says, :mod:`batchmix.io.matrices`; the chunks are Parquet).

    Moderation borrows strength across every gene, so it runs here and not per chunk, on ``gene_fits``
    read whole (one row per gene). The other tables are streamed: their chunks' lines are copied as
    they are under one header, the corrected matrix a row group at a time. Checks that every input
    gene has exactly one row (nothing lost). When no gene could be fitted (all filtered or failed),
    every gene still has its row and status, nothing is moderated, and the run goes on.
    """
    chunks = [read_chunk_fits(p) for p in inputs["fits"]]
    gene_fits = pd.concat([fits for fits, _ in chunks], ignore_index=True)
    status = read_result_table(inputs["gene_status"])
    ids, expected = (table["gene_id"].to_numpy(dtype=object) for table in (gene_fits, status))
    if ids.shape != expected.shape or not (ids == expected).all():
        raise RuntimeError(
            f"gathered {len(gene_fits)} gene rows but the input has {len(status)} genes (or a different order); "
            "a chunk is missing or stale: rerun with --forcerun lmm_chunk"
        )
    mcfg = config["moderate"]
    n_fitted = int(gene_fits["status"].isin(["ok", "singular"]).sum())
    if n_fitted == 0:
        logger.warning(
            "no gene could be fitted (%d genes, all filtered or failed: see the status column of %s); "
            "nothing to moderate",
            len(gene_fits),
            outputs["gene_fits"],
        )
    elif mcfg["enabled"]:
        # imported here: batchmix.moderate imports scipy.stats and scipy.optimize (about 0.5 s),
        # which the other stages of this module do not need
        from batchmix import moderate

        mean_expr = status.set_index("gene_id")["mean_expression"]
        gene_fits = moderate.moderate_gene_fits(
            gene_fits, trend=mcfg["trend"], mean_expression=mean_expr, robust=mcfg["robust"]
        )
    write_table(gene_fits, outputs["gene_fits"])
    concatenate_tables(inputs["blups"], outputs["blups"])
    if "fixed_vcov" in outputs:
        concatenate_tables(inputs["fixed_vcov"], outputs["fixed_vcov"])
    if "model" in outputs:
        samples = load_samples(config, inputs["samples"])
        lmm.model_metadata(config["model"], samples, reml=config["reml"]).write_json(outputs["model"])
    if "corrected" in outputs:
        if inputs["corrected"] and all(str(p).endswith(".npy") for p in inputs["corrected"]):
            concatenate_arrays(
                inputs["corrected"],
                outputs["corrected"],
                genes=gene_fits["gene_id"].tolist(),
                samples=[meta.get("samples") for _, meta in chunks],
            )
        else:
            concatenate_matrices(inputs["corrected"], outputs["corrected"], n_genes=len(status))
    # the statuses counted first, then cut at ":" (a handful of distinct values, not one per gene)
    counts = gene_fits["status"].value_counts()
    counts = counts.groupby(counts.index.str.split(":").str[0]).sum()
    return {"genes": int(len(gene_fits)), **{f"status_{k}": int(v) for k, v in sorted(counts.items())}}


def concatenate_arrays(paths: list[str], out_path: str, *, genes: list[str], samples: list) -> None:
    """Write the chunks' corrected expression (``.npy``, genes × samples, rounded) into one matrix.

    ``genes``: every gene id in order (the chunks' rows one after the other); ``samples``: each
    chunk's sample ids (from its gene fits' metadata), the same for every chunk. A row group of the
    output at a time goes through memory (the chunks are memory-mapped); the output's format follows
    its name, and its bytes are those :func:`concatenate_matrices` gave from Parquet chunks.
    """
    if any(s != samples[0] for s in samples) or samples[0] is None:
        raise RuntimeError(f"{paths[0]}: the chunks' samples differ or are not recorded; rerun lmm_chunk")
    started = time.perf_counter()
    step = genes_per_row_group(len(genes))
    with MatrixWriter(out_path, samples[0], n_genes=len(genes), significant_digits=None) as writer:
        for path in paths:
            values = np.load(path, mmap_mode="r", allow_pickle=False)
            first = writer.genes_written
            if values.ndim != 2 or values.shape[1] != len(samples[0]) or first + len(values) > len(genes):
                raise RuntimeError(f"{path} does not match the chunks' gene fits; a chunk is stale: rerun lmm_chunk")
            for g0 in range(0, len(values), step):
                block = values[g0 : g0 + step]
                writer.write_values(genes[first + g0 : first + g0 + len(block)], np.asarray(block))
            logger.info(
                "corrected expression: %d of %d genes gathered (%.1f s)",
                writer.genes_written,
                len(genes),
                time.perf_counter() - started,
            )


def concatenate_matrices(paths: list[str], out_path: str, *, n_genes: int) -> None:
    """Write the matrices at ``paths`` (chunks of genes, same samples) one after the other into ``out_path``.

    Streams a row group at a time; the output's format follows its name (Parquet, ``.tsv.gz``,
    ``.h5ad``), and its bytes do not depend on how the genes were cut into chunks.
    """
    samples = list(read_matrix_rows(paths[0], 0, 0).columns) if paths else []
    started = time.perf_counter()
    # The chunks were rounded when they were written (MatrixWriter): their values go on as they are.
    # Parquet to Parquet (the default), the row groups go across as Arrow tables, without pandas.
    arrow = matrix_format(out_path) == "parquet" and all(matrix_format(p) == "parquet" for p in paths)
    with MatrixWriter(out_path, samples, n_genes=n_genes, significant_digits=None) as writer:
        for path in paths:
            for block in iter_parquet_row_groups(path) if arrow else iter_matrix_rows(path):
                names = block.column_names[1:] if arrow else list(block.columns)
                if names != samples:
                    raise RuntimeError(f"{path} has other samples than {paths[0]}; a chunk is stale: rerun lmm_chunk")
                if arrow:
                    writer.write_parquet_rows(block)
                else:
                    writer.write(block)
            logger.info(
                "corrected expression: %d of %d genes gathered (%.1f s)",
                writer.genes_written,
                n_genes,
                time.perf_counter() - started,
            )


def concatenate_tables(paths: list[str], out_path: str) -> None:
    """Write the tables at ``paths`` one after the other under one header, copying their lines as they are.

    Streams, so that memory does not grow with the tables (the corrected expression is genes ×
    samples). Every table must have the same header line: chunks from one run do, and a mismatch
    means a chunk is stale.
    """
    with table_writer(out_path) as out:
        header = None
        for path in paths:
            with table_lines(path) as source:
                line = source.readline()
                if header is None:
                    header = line
                    out.write(header)
                elif line != header:
                    raise RuntimeError(
                        f"{path} has other columns than {paths[0]}; a chunk is stale: rerun with --forcerun lmm_chunk"
                    )
                last = line
                while block := source.read(1 << 20):
                    out.write(block)
                    last = block
            # Every table we write ends with a newline; one that does not must not run into the next.
            if last and not last.endswith(b"\n"):
                out.write(b"\n")
