"""The diagnostics and summary stages: batch diagnostics of the samples, then the verdict.

- ``diagnostics`` writes ``results/diagnostics/pca.json`` (per data set, before and after batch
  correction: the variance share of each top component, its batch R², the batch share of the top
  components' variance and the batch silhouette width) and ``results/diagnostics/pca_scores.tsv``
  (the scores of the top components, one row per data set and sample), from
  :func:`batchmix.diagnostics.batch_diagnostics`.
- ``summary`` writes ``results/summary.json``: the verdict (:func:`batchmix.verdict.classify`:
  ``batch_effect``, ``design``, ``recommendation``, ``text`` and the figures it rests on), the gene
  counts, and the differential-expression counts per coefficient.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from batchmix.de import FITTED_STATUSES
from batchmix.io import batch_labels, read_matrix, read_result_table, write_json, write_table
from batchmix.io.matrices import iter_matrix_rows, matrix_format, read_matrix_rows
from batchmix.lmm.results import ModelMetadata
from batchmix.pipeline.validate import load_samples
from batchmix.verdict import RECOMMENDATIONS, THRESHOLDS, classify

__all__ = ["DATA_SETS", "diagnostics_stage", "summary_stage", "gene_counts", "pca_candidates"]

logger = logging.getLogger(__name__)

#: The data sets of the diagnostics: the stabilised expression and, with a random batch, the corrected one.
DATA_SETS = ("before", "after")


def _rounded(values) -> list:
    return [None if v is None or not np.isfinite(v) else round(float(v), 6) for v in np.asarray(values, dtype=float)]


# Relative margin below the PCA_TOP_GENES-th largest variance of the first pass within which genes are
# kept as candidates: the variances of the two passes can differ in their last bits (a block of one gene
# is summed in another order), never by this much.
_CANDIDATE_MARGIN = 1e-9


def _above(entry: tuple, floor: float) -> tuple:
    """A kept block's rows (and the corrected block's) whose variance is at least ``floor``, with their variances."""
    part, other, variance = entry
    if variance.size == 0 or variance.min() >= floor:
        return entry
    rows = variance >= floor
    return part.loc[rows], (other.loc[rows] if other is not None else None), variance[rows]


def pca_candidates(expression_path: str, corrected_path: str | None, status: pd.Series):
    """The usable genes of the diagnostics that can enter the PCA, from Parquet matrices a row group at a time.

    The diagnostics use the most variable of the usable genes (status ``ok``, no missing value in
    either matrix: :func:`batchmix.diagnostics.pca` takes the top
    :data:`~batchmix.diagnostics.PCA_TOP_GENES`, ties in input order). One pass over the row groups
    finds every usable gene and its variance and keeps the rows that can still be among the top;
    the candidates are then the kept genes whose variance is within :data:`_CANDIDATE_MARGIN` of
    the top's smallest, which holds every gene the PCA can choose.
    The candidates' frames are laid out as the whole matrices' are (genes × samples, one block), so
    ``pca`` on them computes the same numbers as on the whole usable table. Memory: a row group of
    each matrix and the candidates, not the matrices.

    Returns
    -------
    usable : pandas.DataFrame
        The candidate rows of the stabilised matrix, in matrix order (every usable gene when there
        are at most ``PCA_TOP_GENES``); with fewer than two usable genes, all of them (the caller
        then writes the note).
    corrected : pandas.DataFrame or None
        The same rows of the corrected matrix (its columns in the stabilised matrix's order).
    """
    from batchmix.diagnostics import PCA_TOP_GENES

    def blocks():
        corrected_blocks = iter_matrix_rows(corrected_path) if corrected_path else None
        for block in iter_matrix_rows(expression_path):
            other = None
            if corrected_blocks is not None:
                other = next(corrected_blocks, None)
                if other is None or list(other.index) != list(block.index):
                    raise RuntimeError(
                        f"{corrected_path} and {expression_path} do not list the same genes in the same order; "
                        "rerun gather_lmm"
                    )
                other = other.reindex(columns=block.columns)
            yield block, other

    # One pass: each block's rows that can still be among the top are kept as they are read (a
    # gene below the running PCA_TOP_GENES-th largest variance can only fall further behind), so
    # the matrices are read once; the final cut is the same test as on all the variances at once.
    ids, variances = [], []
    kept: list[tuple[pd.DataFrame, pd.DataFrame | None, np.ndarray]] = []
    running = np.zeros(0)  # the largest variances so far, at most PCA_TOP_GENES of them
    for block, other in blocks():
        usable = block.loc[status.reindex(block.index).eq("ok").to_numpy()].dropna(how="any")
        if other is not None:
            usable = usable.loc[usable.index.isin(other.dropna(how="any").index)]
        variance = usable.var(axis=1, ddof=1).to_numpy()
        ids.extend(usable.index)
        variances.append(variance)
        running = np.sort(np.concatenate([running, variance]))[::-1][:PCA_TOP_GENES]
        keep = np.ones(variance.size, dtype=bool)
        if len(ids) > PCA_TOP_GENES:
            keep = variance >= running[-1] * (1.0 - _CANDIDATE_MARGIN)
        # The rows as the former second pass took them (block.loc), each with its variance as computed here.
        rows = block.index.isin(set(usable.index[keep]))
        kept.append((block.loc[rows], other.loc[rows] if other is not None else None, variance[keep]))
        # Rows kept from earlier blocks that have fallen behind are dropped here (memory: about the
        # candidates and a block).
        if len(ids) > PCA_TOP_GENES:
            floor = running[-1] * (1.0 - _CANDIDATE_MARGIN)
            kept = [_above(entry, floor) for entry in kept]
    variance = np.concatenate(variances) if variances else np.zeros(0)
    keep = np.ones(variance.size, dtype=bool)
    if variance.size > PCA_TOP_GENES:
        smallest_top = np.sort(variance)[::-1][PCA_TOP_GENES - 1]
        keep = variance >= smallest_top * (1.0 - _CANDIDATE_MARGIN)
    chosen = set(np.asarray(ids, dtype=object)[keep].tolist())
    parts, corrected_parts = [], []
    for part, other_part, _ in kept:
        rows = part.index.isin(chosen)
        parts.append(part.loc[rows])
        if other_part is not None:
            corrected_parts.append(other_part.loc[rows])
    if not parts:
        empty = read_matrix_rows(expression_path, 0, 0)
        return empty, (empty.copy() if corrected_path else None)
    usable = pd.concat(parts)
    corrected = pd.concat(corrected_parts) if corrected_path else None
    logger.info(
        "diagnostics: %d usable genes, %d candidates for the PCA's %d most variable",
        len(ids),
        len(usable),
        PCA_TOP_GENES,
    )
    return usable, corrected


def diagnostics_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """PCA of the most variable fitted genes, and the batch's share of it, before and after correction.

    Inputs ``expression`` (stabilised), ``gene_status``, ``samples`` and, when the batch is a random
    factor, ``corrected``. The genes are the most variable of the genes with status ``ok`` and no
    missing value (in both tables), the same genes before and after. Writes ``outputs["pca"]`` and
    ``outputs["scores"]``.
    """
    # imported here: batchmix.diagnostics imports scipy.spatial, which the summary stage does not need
    from batchmix.diagnostics import DIAGNOSTIC_COMPONENTS, batch_diagnostics, pca

    status = read_result_table(inputs["gene_status"]).set_index("gene_id")["status"]
    corrected_path = inputs.get("corrected") or None
    if all(matrix_format(p) == "parquet" for p in [inputs["expression"], corrected_path] if p):
        usable, corrected = pca_candidates(inputs["expression"], corrected_path, status)
    else:
        expression = read_matrix(inputs["expression"])
        usable = expression.loc[status.reindex(expression.index).eq("ok").to_numpy()].dropna(how="any")
        corrected = None
        if corrected_path:
            corrected = read_matrix(corrected_path).reindex(columns=expression.columns)
        if corrected is not None:
            usable = usable.loc[usable.index.isin(corrected.dropna(how="any").index)]
    samples = load_samples(config, inputs["samples"]).loc[usable.columns]
    batch_name = config.get("batch")
    batch = batch_labels(samples, batch_name) if batch_name else None
    result: dict = {"batch": batch_name, "has_corrected": corrected is not None, "n_genes": 0, "data": {}, "note": ""}
    score_rows = []
    if usable.shape[0] < 2 or usable.shape[1] < 3:
        result["note"] = "Too few genes or samples for a PCA."
    else:
        first = pca(usable)
        genes = first.genes
        result["n_genes"] = len(genes)
        sets = {"before": usable}
        if corrected is not None:
            sets["after"] = corrected.loc[usable.index]
        for key, data in sets.items():
            if batch is not None and batch.nunique() >= 2:
                # The stabilised data's PCA on these genes is the one that chose them: not done twice.
                d = batch_diagnostics(data, batch, genes=genes, components=first if key == "before" else None)
                k = d["n_components"]
                entry = {
                    "n_components": k,
                    "variance_ratio": _rounded(d["pca"].variance_ratio.iloc[:k]),
                    "batch_r2": _rounded(d["share"]),
                    "weighted_share": _rounded([d["weighted_share"]])[0],
                    "silhouette": _rounded([d["silhouette"]])[0],
                }
                scores = d["pca"].scores.iloc[:, :k]
            else:
                p = first if key == "before" else pca(data, genes=genes)
                k = min(DIAGNOSTIC_COMPONENTS, p.scores.shape[1])
                entry = {
                    "n_components": k,
                    "variance_ratio": _rounded(p.variance_ratio.iloc[:k]),
                    "batch_r2": None,
                    "weighted_share": None,
                    "silhouette": None,
                }
                scores = p.scores.iloc[:, :k]
            result["data"][key] = entry
            frame = scores.rename_axis("sample_id").reset_index()
            frame.insert(0, "data", key)
            score_rows.append(frame)
    scores_table = (
        pd.concat(score_rows, ignore_index=True) if score_rows else pd.DataFrame(columns=["data", "sample_id"])
    )
    write_json(result, outputs["pca"])
    write_table(scores_table, outputs["scores"])
    return {"genes": int(result["n_genes"]), "data_sets": len(result["data"])}


def gene_counts(gene_fits: pd.DataFrame) -> dict:
    """Genes in, fitted (ok or singular), singular, filtered and failed, from ``gene_fits.tsv``'s statuses."""
    status = gene_fits["status"].astype(str)
    kind = status.str.split(":").str[0]
    return {
        "in": int(len(status)),
        "fitted": int(status.isin(FITTED_STATUSES).sum()),
        "singular": int((status == "singular").sum()),
        "filtered": int((kind == "filtered").sum()),
        "failed": int((kind == "failed").sum()),
    }


def summary_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """The verdict and the run's headline numbers, in ``outputs["summary"]`` (``results/summary.json``).

    Inputs ``design`` (design.json), ``gene_fits``, ``model`` (model.json), ``pca`` (pca.json) and
    ``de_summary`` (de/summary.json).
    """
    design = json.loads(Path(inputs["design"]).read_text())
    gene_fits = read_result_table(inputs["gene_fits"])
    metadata = ModelMetadata.read_json(inputs["model"])
    diagnostics = json.loads(Path(inputs["pca"]).read_text())
    de = json.loads(Path(inputs["de_summary"]).read_text())
    before = diagnostics["data"].get("before", {}).get("batch_r2")
    after = diagnostics["data"].get("after", {}).get("batch_r2")
    verdict = classify(
        design_report=design,
        gene_fits=gene_fits,
        batch=config.get("batch"),
        metadata=metadata,
        batch_r2_before=before,
        batch_r2_after=after,
    )
    summary = {
        "verdict": {
            "batch_effect": verdict.batch_effect,
            "design": verdict.design,
            "recommendation": verdict.recommendation,
            "recommendation_meaning": RECOMMENDATIONS[verdict.recommendation],
            "text": verdict.text,
        },
        "figures": verdict.figures,
        "thresholds": THRESHOLDS,
        "genes": gene_counts(gene_fits),
        "findings": {
            severity: [f["code"] for f in design["findings"] if f["severity"] == severity]
            for severity in ("error", "warning", "note")
        },
        "de": {
            name: {k: v for k, v in entry.items() if k not in ("lost_genes", "gained_genes")}
            for name, entry in de["coefficients"].items()
        },
    }
    write_json(summary, outputs["summary"])
    return {"batch_effect": verdict.batch_effect, "design": verdict.design, "recommendation": verdict.recommendation}
