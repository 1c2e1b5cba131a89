"""The stabilise stage: validation, the low-count filter and the variance-stabilising transformation."""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from batchmix import vst as vst_mod
from batchmix.design import fixed_design
from batchmix.io import InputError, write_json, write_table
from batchmix.io.matrices import MatrixWriter
from batchmix.pipeline.validate import load_validated

__all__ = ["stabilise_stage", "write_stabilised", "WRITE_BLOCK_GENES"]

MEAN_SD_COLUMNS = ["rank_of_mean", "mean", "sd", "running_median_sd", "scale"]

# Genes per block when the stabilised matrix is written (and logged as progress).
WRITE_BLOCK_GENES = 4096

logger = logging.getLogger(__name__)


def write_stabilised(values: pd.DataFrame, path: str) -> None:
    """Write the stabilised matrix a block of genes at a time, in the format its file name says.

    Parquet (gene row groups, :mod:`batchmix.io.matrices`) by default; a block at a time keeps the
    text formats from building the whole table as one string.
    """
    started = time.perf_counter()
    n_genes = len(values)
    with MatrixWriter(path, list(values.columns), n_genes=n_genes) as writer:
        for g0 in range(0, n_genes, WRITE_BLOCK_GENES):
            writer.write(values.iloc[g0 : g0 + WRITE_BLOCK_GENES])
            done = min(n_genes, g0 + WRITE_BLOCK_GENES)
            logger.info(
                "stabilised matrix: %d of %d genes written (%.1f s)", done, n_genes, time.perf_counter() - started
            )


def stabilise_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Validate the inputs, filter low counts and stabilise the variance.

    Inputs ``expression`` and ``samples`` (the config's files). Writes ``outputs["expression"]``
    (genes × samples on the stabilised scale, every input gene), ``outputs["size_factors"]``,
    ``outputs["gene_status"]`` (``ok`` or ``filtered:low_counts``), ``outputs["mean_sd"]`` (mean–sd
    plot data before and after) and ``outputs["info"]`` (the branch that ran, coefficients, gene counts).

    Returns
    -------
    dict
        Counts: ``genes``, ``samples``, ``genes_ok``, ``genes_filtered``.
    """
    validated = load_validated(config, expression=inputs["expression"], samples=inputs["samples"])
    expr = validated.expression
    status = pd.Series("ok", index=expr.index, name="status")
    info: dict = {"input_type": config["input_type"], "n_genes": int(expr.shape[0]), "n_samples": int(expr.shape[1])}

    if config["input_type"] == "counts":
        vcfg, fcfg = config["vst"], config["filter"]
        design = None
        if not vcfg["blind"]:
            design, _ = fixed_design(config["model"], validated.samples)
        try:
            result = vst_mod.vst(
                expr,
                fit_type=vcfg["fit_type"],
                blind=vcfg["blind"],
                design=design,
                nsub=vcfg["nsub"],
                size_factor_method=vcfg["size_factors"],
            )
        except ValueError as err:
            raise InputError(f"{inputs['expression']}: variance stabilisation failed: {err}") from err
        keep = vst_mod.low_count_filter(expr, min_count=fcfg["min_count"], min_samples=fcfg["min_samples"])
        status[~keep.reindex(expr.index).fillna(False).astype(bool)] = "filtered:low_counts"
        values = result.values.loc[expr.index, expr.columns]
        size_factors = result.size_factors.rename("size_factor").rename_axis("sample_id").reset_index()
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
        size_factors = pd.DataFrame({"sample_id": expr.columns, "size_factor": np.nan})
        info.update({"vst_fit_type_used": "none (input_type: log)", "before_scale": "input (log scale)"})
        base_mean = expr.mean(axis=1)

    ok = status == "ok"
    if ok.sum() >= 2:
        mean_sd = pd.concat(
            [
                vst_mod.mean_sd(before.loc[ok]).assign(scale="before"),
                vst_mod.mean_sd(values.loc[ok]).assign(scale="after"),
            ],
            ignore_index=True,
        )
    else:
        mean_sd = pd.DataFrame(columns=MEAN_SD_COLUMNS)

    info["n_genes_ok"] = int(ok.sum())
    info["n_genes_filtered"] = int((~ok).sum())
    info["notes"] = validated.notes
    gene_status = pd.DataFrame(
        {
            "gene_id": expr.index,
            "status": status.to_numpy(),
            "base_mean": base_mean.to_numpy(),
            # limma's trend covariate: the average on the log-like scale the models see
            "mean_expression": values.mean(axis=1).to_numpy(),
            "n_observed": expr.notna().sum(axis=1).to_numpy(),
        }
    )
    write_stabilised(values, outputs["expression"])
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
