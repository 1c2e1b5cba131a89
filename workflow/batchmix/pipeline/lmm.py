"""The per-gene LMM stages: split the genes into chunks, fit each chunk, gather the chunks.

The split and the gather stream their tables line by line, so their memory does not grow with
the table; the gathered tables have the same bytes whatever the number of chunks.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from batchmix import lmm, moderate
from batchmix.io import read_matrix, read_result_table, table_lines, table_writer, write_table
from batchmix.pipeline.validate import load_samples

__all__ = ["split_genes_stage", "lmm_chunk_stage", "gather_lmm_stage", "concatenate_tables"]


def _count_rows(table_path: str | Path) -> int:
    """Rows of a small text table below its header line."""
    with table_lines(table_path) as fh:
        return sum(1 for _ in fh) - 1


def split_genes_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Split the stabilised table into contiguous gene chunks, in input order.

    Inputs ``expression`` (the stabilised table) and ``gene_status``; ``outputs["chunks"]`` is the
    list of chunk files, in order. ``numpy.array_split`` gives chunk sizes that differ by at most one
    gene (the first ``genes % chunks`` chunks get one more); chunks can be empty when there are more
    chunks than genes, and still get a file (header only).

    The table is streamed: each chunk gets the header line and its genes' lines as they are in the
    table, so memory does not grow with it. The gene count comes from ``gene_status`` (one short line
    per gene) rather than a second pass over the table, and is checked against the table's lines.
    """
    expression_path, status_path, chunk_paths = inputs["expression"], inputs["gene_status"], outputs["chunks"]
    n_genes = _count_rows(status_path)
    sizes = [len(part) for part in np.array_split(np.arange(n_genes), len(chunk_paths))]
    with table_lines(expression_path) as source:
        header = source.readline()
        if not header:
            raise RuntimeError(f"{expression_path} is empty; rerun the stabilise rule")
        genes_read = 0
        for size, path in zip(sizes, chunk_paths):
            with table_writer(path) as chunk:
                chunk.write(header)
                for line in itertools.islice(source, size):
                    chunk.write(line)
                    genes_read += 1
        genes_read += sum(1 for _ in source)
    if genes_read != n_genes:
        raise RuntimeError(
            f"{expression_path} has {genes_read} gene lines but {status_path} lists {n_genes} genes; "
            "one of them is stale: rerun the stabilise rule"
        )
    return {"genes": n_genes, "chunks": len(chunk_paths)}


def lmm_chunk_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Fit the per-gene LMM on one chunk of genes.

    Inputs ``expression`` (the chunk), ``gene_status``, ``samples``. Writes ``outputs["fits"]``,
    ``outputs["blups"]``, ``outputs["fixed_vcov"]`` (Cov(β̂) of every fitted gene, long) and, when the
    batch is a random grouping factor, ``outputs["corrected"]`` (the chunk's expression minus its
    batch BLUPs).
    """
    expr = read_matrix(inputs["expression"])
    samples = load_samples(config, inputs["samples"]).loc[expr.columns]
    status = read_result_table(inputs["gene_status"]).set_index("gene_id")["status"]
    fit = lmm.fit(expr, samples, config["model"], reml=config["reml"], gene_status=status.reindex(expr.index))
    write_table(fit.gene_fits, outputs["fits"])
    write_table(fit.blups, outputs["blups"])
    write_table(fit.fixed_vcov, outputs["fixed_vcov"])
    if "corrected" in outputs:
        corrected = lmm.corrected_expression(expr, samples, fit, groups=[config["batch"]])
        write_table(corrected.rename_axis("gene_id"), outputs["corrected"], index=True)
    fitted = fit.gene_fits["status"].isin(["ok", "singular"])
    return {"genes": int(len(expr)), "genes_fitted": int(fitted.sum())}


def gather_lmm_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Concatenate the chunks in order, moderate the variances over all genes, and write the tables.

    Inputs ``fits``, ``blups``, ``fixed_vcov``, ``corrected`` (lists of chunk files, in order; ``corrected``
    empty when the batch is not random), ``gene_status``, ``samples``. Writes ``outputs["gene_fits"]``,
    ``outputs["blups"]``, ``outputs["fixed_vcov"]``, ``outputs["model"]`` (the model's metadata,
    :func:`batchmix.lmm.model_metadata`, JSON) and ``outputs["corrected"]`` when asked for.

    Moderation borrows strength across every gene, so it runs here and not per chunk, on ``gene_fits``
    read whole (one row per gene). The other tables are streamed: their chunks' lines are copied as
    they are under one header. Checks that every input gene has exactly one row (nothing lost).
    """
    gene_fits = pd.concat([read_result_table(p) for p in inputs["fits"]], ignore_index=True)
    status = read_result_table(inputs["gene_status"])
    if list(gene_fits["gene_id"]) != list(status["gene_id"]):
        raise RuntimeError(
            f"gathered {len(gene_fits)} gene rows but the input has {len(status)} genes (or a different order); "
            "a chunk is missing or stale: rerun with --forcerun lmm_chunk"
        )
    mcfg = config["moderate"]
    if mcfg["enabled"]:
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
        concatenate_tables(inputs["corrected"], outputs["corrected"])
    counts = gene_fits["status"].str.split(":").str[0].value_counts()
    return {"genes": int(len(gene_fits)), **{f"status_{k}": int(v) for k, v in sorted(counts.items())}}


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
