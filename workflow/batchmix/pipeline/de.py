"""The de stage: differential expression with and without the batch, one table per coefficient.

Writes ``results/de/<coef>.tsv`` for every fixed-effect coefficient except the intercept (and the
batch's own contrasts), one row per input gene (:func:`batchmix.de.differential_expression`), and
``results/de/summary.json`` (:func:`batchmix.de.de_summary`: the counts, the genes that change call
and the sentence "Accounting for batch, N genes lose and M gain significance for <coef>").
"""

from __future__ import annotations

import logging

from batchmix.de import GeneBlocks, de_summary, differential_expression
from batchmix.io import read_matrix, read_result_table, write_json, write_table
from batchmix.io.matrices import iter_matrix_rows, matrix_format, matrix_index
from batchmix.lmm.results import ModelMetadata
from batchmix.pipeline.paths import de_table_coefficients
from batchmix.pipeline.validate import load_samples

__all__ = ["de_stage"]

logger = logging.getLogger(__name__)


def de_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Test every coefficient with the mixed model and with OLS ignoring the batch.

    Inputs ``gene_fits``, ``expression`` (the stabilised table), ``samples``, ``model``
    (``results/lmm/model.json``). ``outputs["tables"]`` is the list of tables in the order of
    :func:`batchmix.pipeline.paths.de_table_coefficients`; ``outputs["summary"]`` the JSON summary.
    """
    gene_fits = read_result_table(inputs["gene_fits"])
    # a Parquet matrix is read a few thousand genes at a time (GeneBlocks): the job holds a block, not
    # the table; other formats are read whole
    path = inputs["expression"]
    if matrix_format(path) == "parquet":
        genes, samples_in_matrix = matrix_index(path)
        expression = GeneBlocks(
            index=genes, columns=samples_in_matrix, read=lambda n: iter_matrix_rows(path, genes_per_block=n)
        )
    else:
        expression = read_matrix(path)
    samples = load_samples(config, inputs["samples"])
    metadata = ModelMetadata.read_json(inputs["model"])
    fdr = float(config["de"]["fdr"])
    tables = differential_expression(
        gene_fits,
        expression,
        samples,
        formula=config["model"],
        coefficients=list(metadata.coefficients),
        batch=config["batch"],
        moderate=config["moderate"],
        fdr=fdr,
        levels=config["levels"],
    )
    expected = de_table_coefficients(config, samples)
    if list(tables) != expected:
        raise RuntimeError(
            f"the model's coefficients {list(tables)} differ from those planned from the design {expected}; "
            "model.json is stale: rerun the lmm stages"
        )
    paths = outputs["tables"]
    paths = [paths] if isinstance(paths, str) else list(paths)
    for name, path in zip(expected, paths):
        write_table(tables[name], path)
    summary = de_summary(tables, fdr=fdr)
    write_json({"fdr": fdr, "coefficients": summary}, outputs["summary"])
    return {"coefficients": len(tables), "genes": int(len(gene_fits))}
