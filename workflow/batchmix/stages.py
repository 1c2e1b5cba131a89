"""The workflow's stages as functions from files to files.

Each stage reads its inputs, calls the numerical modules and writes tidy tables. The
Snakemake scripts in ``workflow/scripts/`` and the ``batchmix`` command line are thin
adapters over these functions, so both produce the same files.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from batchmix import io
from batchmix.io import InputError, table_lines, table_writer, write_table

__all__ = [
    "load_validated",
    "stabilise_stage",
    "split_stage",
    "lmm_chunk_stage",
    "gather_stage",
    "simpson_stage",
    "batch_is_random",
    "log_to",
    "consistent_reversals",
]


def _write_json(obj: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def load_validated(config: dict) -> io.ValidatedInputs:
    """Read and validate the config's expression table and sample sheet."""
    return io.validate_inputs(
        config["expression"], config["samples"], config["input_type"], config["model"], config["batch"]
    )


def batch_is_random(config: dict) -> bool:
    """Whether the config's batch column is a grouping factor of a random term in ``model``."""
    from batchmix.design import parse_formula

    return any(term.group == config["batch"] for term in parse_formula(config["model"]).random)


def _read_matrix(path: str | Path) -> pd.DataFrame:
    # Gene ids as written (converters={0: str}): parsed as numbers, ids such as 007 or 1e5 would
    # change and no longer match gene_status.tsv or the streamed chunk files.
    table = pd.read_csv(path, sep="\t", index_col=0, converters={0: str}, na_values=["NA"], keep_default_na=False)
    table.index = table.index.astype(str)
    table.index.name = "gene_id"
    return table.astype(float)


def stabilise_stage(config: dict, out: dict[str, str]) -> None:
    """Validate the inputs, filter low counts and stabilise the variance.

    Writes ``out["expression"]`` (genes × samples on the stabilised scale, every input gene),
    ``out["size_factors"]``, ``out["gene_status"]`` (``ok`` or ``filtered:low_counts``),
    ``out["mean_sd"]`` (mean–sd plot data before and after) and ``out["info"]`` (the branch
    that ran, coefficients, gene counts).
    """
    from batchmix import vst as vst_mod
    from batchmix.design import fixed_design

    inputs = load_validated(config)
    expr = inputs.expression
    status = pd.Series("ok", index=expr.index, name="status")
    info: dict = {"input_type": config["input_type"], "n_genes": int(expr.shape[0]), "n_samples": int(expr.shape[1])}

    if config["input_type"] == "counts":
        vcfg, fcfg = config["vst"], config["filter"]
        design = None
        if not vcfg["blind"]:
            design, _ = fixed_design(config["model"], inputs.samples)
        try:
            result = vst_mod.vst(
                expr, fit_type=vcfg["fit_type"], blind=vcfg["blind"], design=design,
                nsub=vcfg["nsub"], size_factor_method=vcfg["size_factors"],
            )
        except ValueError as err:
            raise InputError(f"{config['expression']}: variance stabilisation failed: {err}") from err
        keep = vst_mod.low_count_filter(expr, min_count=fcfg["min_count"], min_samples=fcfg["min_samples"])
        status[~keep.reindex(expr.index).fillna(False).astype(bool)] = "filtered:low_counts"
        values = result.values.loc[expr.index, expr.columns]
        sf = result.size_factors.rename("size_factor").rename_axis("sample_id").reset_index()
        normalised = expr / result.size_factors.loc[expr.columns].to_numpy()
        before = np.log2(normalised + 1.0)
        info.update(
            {
                "vst_fit_type_requested": result.fit_type_requested,
                "vst_fit_type_used": result.fit_type,
                "vst_blind": result.blind,
                "vst_nsub": result.nsub,
                "vst_coefficients": result.coefficients,
                "size_factor_method": vcfg["size_factors"],
                "before_scale": "log2(normalised count + 1)",
            }
        )
        base_mean = normalised.mean(axis=1)
    else:
        values = expr
        before = expr
        # Size factors do not apply to log-scale input; the file still lists every sample.
        sf = pd.DataFrame({"sample_id": expr.columns, "size_factor": np.nan})
        info.update({"vst_fit_type_used": "none (input_type: log)", "before_scale": "input (log scale)"})
        base_mean = expr.mean(axis=1)

    mean_sd = pd.concat(
        [
            vst_mod.mean_sd(before.loc[status == "ok"]).assign(scale="before"),
            vst_mod.mean_sd(values.loc[status == "ok"]).assign(scale="after"),
        ],
        ignore_index=True,
    ) if (status == "ok").sum() >= 2 else pd.DataFrame(columns=["rank_of_mean", "mean", "sd", "running_median_sd", "scale"])

    info["n_genes_ok"] = int((status == "ok").sum())
    info["n_genes_filtered"] = int((status != "ok").sum())
    info["notes"] = inputs.notes
    gene_status = pd.DataFrame(
        {"gene_id": expr.index, "status": status.to_numpy(), "base_mean": base_mean.to_numpy(),
         # limma's trend covariate: the average on the log-like scale the models see
         "mean_expression": values.mean(axis=1).to_numpy(),
         "n_observed": expr.notna().sum(axis=1).to_numpy()}
    )
    write_table(values.rename_axis("gene_id"), out["expression"], index=True)
    write_table(sf, out["size_factors"])
    write_table(gene_status, out["gene_status"])
    write_table(mean_sd, out["mean_sd"])
    _write_json(info, out["info"])


def _count_rows(table_path: str | Path) -> int:
    """Rows of a small text table below its header line."""
    with table_lines(table_path) as fh:
        return sum(1 for _ in fh) - 1


def split_stage(expression_path: str, status_path: str, chunk_paths: list[str]) -> None:
    """Split the stabilised table into contiguous gene chunks, in input order.

    ``numpy.array_split`` gives chunk sizes that differ by at most one gene (the first
    ``genes % chunks`` chunks get one more); chunks can be empty when there are more chunks than
    genes, and still get a file (header only).

    The table is streamed: each chunk gets the header line and its genes' lines as they are in
    ``expression_path``, so memory does not grow with the table. The gene count comes from
    ``status_path`` (gene_status.tsv, one short line per gene) rather than a second pass over the
    table, and is checked against the table's lines.
    """
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


def lmm_chunk_stage(config: dict, chunk_path: str, status_path: str, samples_path: str, out: dict[str, str]) -> None:
    """Fit the per-gene LMM on one chunk of genes.

    Writes ``out["fits"]``, ``out["blups"]`` and, when the batch is a random grouping factor,
    ``out["corrected"]`` (the chunk's expression minus its batch BLUPs).
    """
    from batchmix import lmm

    expr = _read_matrix(chunk_path)
    samples = io.read_samples(samples_path).loc[expr.columns]
    status = pd.read_csv(status_path, sep="\t", dtype={"gene_id": str}).set_index("gene_id")["status"]
    fit = lmm.fit(expr, samples, config["model"], reml=config["reml"], gene_status=status.reindex(expr.index))
    write_table(fit.gene_fits, out["fits"])
    write_table(fit.blups, out["blups"])
    if "corrected" in out:
        corrected = lmm.corrected_expression(expr, samples, fit, groups=[config["batch"]])
        write_table(corrected.rename_axis("gene_id"), out["corrected"], index=True)


def gather_stage(config: dict, fits: list[str], blups: list[str], corrected: list[str], status_path: str,
                 out: dict[str, str]) -> None:
    """Concatenate the chunks in order, moderate the variances over all genes, and write the tables.

    Moderation borrows strength across every gene, so it runs here and not per chunk, on
    ``gene_fits`` read whole (one row per gene). The BLUPs and the corrected expression are streamed:
    their chunks' lines are copied as they are under one header. Checks that every input gene has
    exactly one row (nothing lost).
    """
    from batchmix import moderate

    gene_fits = pd.concat([pd.read_csv(p, sep="\t", dtype={"gene_id": str}) for p in fits], ignore_index=True)
    status = pd.read_csv(status_path, sep="\t", dtype={"gene_id": str})
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
    write_table(gene_fits, out["gene_fits"])
    _concatenate_tables(blups, out["blups"])
    if "corrected" in out:
        _concatenate_tables(corrected, out["corrected"])


def _concatenate_tables(paths: list[str], out_path: str) -> None:
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


def consistent_reversals(reversals: pd.DataFrame) -> pd.DataFrame:
    """Reversals ordered for display: most batches agreeing with the within-batch sign first, then by p.

    The table itself is sorted by p; but the smallest p-values often come from genes that are nearly
    constant in most batches, which make a poor picture of the paradox. A pair whose within-batch sign
    holds in every batch tells the story at a glance.
    """
    return reversals.sort_values(["n_batches_within_sign", "p", "gene_a", "gene_b"],
                                 ascending=[False, True, True, True], kind="mergesort")


def simpson_stage(config: dict, expression_path: str, status_path: str, samples_path: str, out: dict[str, str]) -> None:
    """Scan all gene pairs for Simpson's-paradox reversals and draw the top pairs.

    Writes ``out["reversals"]``, ``out["excluded"]`` (every gene not scanned, with the reason),
    ``out["summary"]`` (pair counts, FDR, permutation check) and ``out["figure"]``.
    """
    from batchmix import simpson
    from batchmix.design import fixed_design

    scfg = config["simpson"]
    expr = _read_matrix(expression_path)
    status = pd.read_csv(status_path, sep="\t", dtype={"gene_id": str}).set_index("gene_id")["status"]
    samples = io.read_samples(samples_path).loc[expr.columns]
    batch = samples[config["batch"]].map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
    ok = status.reindex(expr.index) == "ok"
    covariates = None
    if scfg["adjust_for"]:
        X, names = fixed_design("~ " + " + ".join(scfg["adjust_for"]), samples)
        covariates = X[:, [i for i, n in enumerate(names) if n != "Intercept"]]
    genes = None if scfg["genes"] == "all" else int(scfg["genes"])
    result = simpson.scan(expr.loc[ok], batch, fdr=scfg["fdr"], method=scfg["method"], covariates=covariates, genes=genes)
    excluded = pd.concat([status[~ok].rename("reason"), result.genes_excluded.rename("reason")])
    summary = {
        "n_genes_scanned": result.n_genes, "n_pairs": result.n_pairs, "n_candidates": result.n_candidates,
        "n_reversals": int(len(result.reversals)), "fdr": result.fdr, "method": result.method,
        "adjust_for": scfg["adjust_for"], "n_genes_excluded": int(len(excluded)),
    }
    if scfg["permutation_check"]:
        check = simpson.permutation_check(
            expr.loc[ok], batch, fdr=scfg["fdr"], method=scfg["method"], covariates=covariates, genes=genes,
            n_permutations=scfg["n_permutations"],
        )
        summary["permutation_check"] = check.__dict__
    write_table(result.reversals, out["reversals"])
    write_table(excluded.rename_axis("gene_id").reset_index(), out["excluded"])
    _write_json(summary, out["summary"])
    fig = simpson.plot_reversals(expr.loc[ok], batch, consistent_reversals(result.reversals),
                                 top=config["report"]["top_pairs"] or 1)
    Path(out["figure"]).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out["figure"], dpi=110, metadata={"Software": None})


@contextlib.contextmanager
def log_to(path: str | Path):
    """Send warnings, logging and stderr of a stage to its log file; record a failure's traceback there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh, contextlib.redirect_stderr(fh):
        handler = logging.StreamHandler(fh)
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        try:
            yield
        except Exception:
            fh.write(traceback.format_exc())
            raise
        finally:
            root.removeHandler(handler)
