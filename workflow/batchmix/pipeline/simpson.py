"""The simpson stage: every gene pair scanned for Simpson's-paradox reversals, and the top pairs drawn."""

from __future__ import annotations

import pandas as pd

from batchmix import simpson
from batchmix.design import fixed_design
from batchmix.io import batch_labels, read_matrix, read_result_table, write_json, write_table
from batchmix.pipeline.validate import load_samples
from batchmix.plots.simpson import plot_reversals
from batchmix.plots.style import save_png

__all__ = ["simpson_stage", "consistent_reversals"]


def consistent_reversals(reversals: pd.DataFrame) -> pd.DataFrame:
    """Reversals ordered for display: most batches agreeing with the within-batch sign first, then by p.

    The table itself is sorted by p; but the smallest p-values often come from genes that are nearly
    constant in most batches, which make a poor picture of the paradox. A pair whose within-batch sign
    holds in every batch tells the story at a glance.
    """
    return reversals.sort_values(
        ["n_batches_within_sign", "p", "gene_a", "gene_b"], ascending=[False, True, True, True], kind="mergesort"
    )


def simpson_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Scan all gene pairs for Simpson's-paradox reversals and draw the top pairs.

    Inputs ``expression`` (stabilised), ``gene_status``, ``samples``. Writes ``outputs["reversals"]``,
    ``outputs["excluded"]`` (every gene not scanned, with the reason), ``outputs["summary"]`` (pair
    counts, FDR, permutation check) and ``outputs["figure"]``.
    """
    scfg = config["simpson"]
    expr = read_matrix(inputs["expression"])
    status = read_result_table(inputs["gene_status"]).set_index("gene_id")["status"]
    samples = load_samples(config, inputs["samples"]).loc[expr.columns]
    batch = batch_labels(samples, config["batch"])
    ok = status.reindex(expr.index) == "ok"
    covariates = None
    if scfg["adjust_for"]:
        X, names = fixed_design("~ " + " + ".join(scfg["adjust_for"]), samples)
        covariates = X[:, [i for i, n in enumerate(names) if n != "Intercept"]]
    genes = None if scfg["genes"] == "all" else int(scfg["genes"])
    result = simpson.scan(
        expr.loc[ok], batch, fdr=scfg["fdr"], method=scfg["method"], covariates=covariates, genes=genes
    )
    excluded = pd.concat([status[~ok].rename("reason"), result.genes_excluded.rename("reason")])
    summary = {
        "n_genes_scanned": result.n_genes,
        "n_pairs": result.n_pairs,
        "n_candidates": result.n_candidates,
        "n_reversals": int(len(result.reversals)),
        "fdr": result.fdr,
        "method": result.method,
        "adjust_for": scfg["adjust_for"],
        "n_genes_excluded": int(len(excluded)),
    }
    if scfg["permutation_check"]:
        check = simpson.permutation_check(
            expr.loc[ok],
            batch,
            fdr=scfg["fdr"],
            method=scfg["method"],
            covariates=covariates,
            genes=genes,
            n_permutations=scfg["n_permutations"],
        )
        summary["permutation_check"] = check.__dict__
    write_table(result.reversals, outputs["reversals"])
    write_table(excluded.rename_axis("gene_id").reset_index(), outputs["excluded"])
    write_json(summary, outputs["summary"])
    fig = plot_reversals(
        expr.loc[ok], batch, consistent_reversals(result.reversals), top=config["report"]["top_pairs"] or 1
    )
    save_png(fig, outputs["figure"])
    return {
        "genes_scanned": int(result.n_genes),
        "pairs": int(result.n_pairs),
        "reversals": int(len(result.reversals)),
        "genes_excluded": int(len(excluded)),
    }
