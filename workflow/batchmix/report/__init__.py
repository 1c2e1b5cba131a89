"""The run's self-contained HTML report and its figures.

:func:`build_report` reads the workflow's tables (:func:`load_tables`), gathers each section of the
page from them (:mod:`batchmix.report.sections`, with the statistics of
:mod:`batchmix.report.summaries` and the figures of :mod:`batchmix.plots`), writes each figure as a
PNG into a figures directory (for ``snakemake --report``) and renders one HTML page from the Jinja2
template in ``batchmix/report/templates/`` (:mod:`batchmix.report.render`) with the figures embedded
as ``data:`` URIs, the tables downloadable as TSV ``data:`` links and no network resource, so that the
page opens offline, e.g. from an email.

Outputs are deterministic: no time stamps, PNGs written without the software tag, principal
components with a fixed sign, tables in a fixed order.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from batchmix.io import read_matrix, read_result_table
from batchmix.io.matrices import iter_matrix_rows, matrix_format, read_matrix_rows
from batchmix.lmm import model_metadata
from batchmix.lmm.results import ModelMetadata
from batchmix.pipeline.paths import de_table_name
from batchmix.pipeline.validate import load_samples
from batchmix.report.conclusions import de_section, design_section, gene_search_section, verdict_section
from batchmix.report.render import Figures, render_page
from batchmix.report.sections import (
    batch_section,
    lmm_section,
    run_section,
    shrinkage_genes,
    shrinkage_section,
    simpson_section,
    uncertainty_section,
    vst_section,
)
from batchmix.report.summaries import component_labels

__all__ = ["build_report", "gene_rows", "load_tables"]

log = logging.getLogger(__name__)


def _json(path: str | Path | None) -> dict | None:
    return json.loads(Path(path).read_text()) if path else None


def load_tables(
    inputs: dict[str, str],
    config: dict | None = None,
    *,
    expression_genes: list[str] | None = None,
    model_genes: list[str] | None = None,
) -> dict[str, object]:
    """Read the report's inputs (the named inputs of the ``report`` rule).

    Parameters
    ----------
    inputs : dict of str to str
        Keys as in ``report_inputs`` of ``workflow/rules/common.smk``: ``vst_info``,
        ``size_factors``, ``gene_status``, ``mean_sd``, ``vst_expression``, ``gene_fits``,
        ``blups``, ``model`` (``results/lmm/model.json``), ``fixed_vcov``
        (``results/lmm/fixed_vcov.tsv``), ``samples``, ``expression``, and optionally ``corrected``, ``reversals``,
        ``simpson_summary``, ``simpson_figure``, ``uncertainty_summary``, ``uncertainty_bootstrap``,
        ``uncertainty_posterior``, ``uncertainty_figures`` (a directory); the conclusions' ``design``,
        ``summary``, ``pca``, ``pca_scores`` and ``de_summary`` (the DE tables are read next to it).
    config : dict, optional
        The workflow config: the sheet is read with its ``levels`` and batch
        (:func:`batchmix.pipeline.validate.load_samples`).
    expression_genes : list of str, optional
        Read only these genes' rows of the two matrices (``vst_expression`` and ``corrected``;
        from Parquet only the row groups that hold them): the page draws a few genes' values and
        takes everything else from the stages' summaries, so it need not hold the whole table.
        None: the whole matrices.
    model_genes : list of str, optional
        Read only these genes' rows of ``blups`` and ``fixed_vcov`` (:func:`gene_rows`): the page
        uses them for the shrinkage figures' genes only. None: the whole tables.

    Returns
    -------
    dict
        The same keys with tables (:class:`pandas.DataFrame`, read with
        :func:`batchmix.io.read_result_table` / :func:`batchmix.io.read_matrix`, ids kept as text),
        dicts (JSON), ``model`` as :class:`batchmix.lmm.results.ModelMetadata` or, for
        ``expression``, ``simpson_figure`` and ``uncertainty_figures``, the path; a missing optional
        input is ``None``.
    """
    optional = inputs.get
    gene_fits = read_result_table(inputs["gene_fits"])
    return {
        "vst_info": _json(inputs["vst_info"]),
        "size_factors": read_result_table(inputs["size_factors"]),
        "gene_status": read_result_table(inputs["gene_status"]),
        "mean_sd": read_result_table(inputs["mean_sd"]),
        "vst_expression": _matrix(inputs["vst_expression"], expression_genes, gene_fits),
        "gene_fits": gene_fits,
        "blups": gene_rows(inputs["blups"], model_genes),
        "model": ModelMetadata.read_json(inputs["model"]) if optional("model") else None,
        "fixed_vcov": gene_rows(inputs["fixed_vcov"], model_genes) if optional("fixed_vcov") else None,
        "samples": load_samples(config or {}, inputs["samples"]),
        "expression": inputs["expression"],
        "corrected": _matrix(inputs["corrected"], expression_genes, gene_fits) if optional("corrected") else None,
        "reversals": read_result_table(inputs["reversals"]) if optional("reversals") else None,
        "simpson_summary": _json(optional("simpson_summary")),
        "simpson_figure": optional("simpson_figure") or None,
        "uncertainty_summary": _json(optional("uncertainty_summary")),
        "uncertainty_bootstrap": (
            read_result_table(inputs["uncertainty_bootstrap"]) if optional("uncertainty_bootstrap") else None
        ),
        "uncertainty_posterior": (
            read_result_table(inputs["uncertainty_posterior"]) if optional("uncertainty_posterior") else None
        ),
        "uncertainty_figures": optional("uncertainty_figures") or None,
        "design": _json(optional("design")),
        "summary": _json(optional("summary")),
        "pca": _json(optional("pca")) or {"data": {}, "n_genes": 0, "note": "The diagnostics stage did not run."},
        "pca_scores": read_result_table(inputs["pca_scores"]) if optional("pca_scores") else None,
        "de_summary": _json(optional("de_summary")),
        "de_tables": _de_tables(optional("de_summary")),
    }


def _matrix(path: str, genes: list[str] | None, gene_fits: pd.DataFrame) -> pd.DataFrame:
    """The whole matrix (``genes`` None), or the rows of those of ``genes`` it has, in its order, with every sample.

    The stages write the matrices' rows in ``gene_fits.tsv``'s order, so a gene's position there
    says which Parquet row group holds it; a row that turns out to hold another gene (a matrix
    written otherwise) falls back to reading the row groups one by one. Text and ``.h5ad``
    matrices are read whole and cut (no genes: a text matrix's header line only).
    """
    try:
        fmt = matrix_format(path)
    except ValueError:
        fmt = "tsv"
    if genes is not None and not genes and fmt in ("tsv", "tsv.gz"):
        # No rows asked: the samples from the header line, not the whole table parsed.
        header = pd.read_csv(path, sep="\t", nrows=0, index_col=0)
        return pd.DataFrame(index=pd.Index([], dtype=object, name="gene_id"), columns=header.columns, dtype=float)
    if genes is None or fmt != "parquet":
        whole = read_matrix(path)
        return whole if genes is None else whole.loc[whole.index.isin(list(genes))]
    ids = gene_fits["gene_id"].astype(str).to_numpy(dtype=object)
    position: dict[str, int] = {}
    for gene in set(genes):
        found = np.flatnonzero(ids == gene)
        if found.size:
            position[gene] = int(found[0])
    wanted = sorted(position, key=position.__getitem__)
    rows = [read_matrix_rows(path, position[g], position[g] + 1) for g in wanted]
    if all(list(row.index) == [gene] for row, gene in zip(rows, wanted)) and len(wanted) == len(set(genes)):
        return pd.concat(rows) if rows else read_matrix_rows(path, 0, 0)
    # Not in gene_fits' order, or a gene gene_fits does not list: a row group at a time.
    chosen = set(genes)
    blocks = [block.loc[block.index.isin(chosen)] for block in iter_matrix_rows(path)]
    return pd.concat(blocks) if blocks else read_matrix_rows(path, 0, 0)


# Characters that make pandas quote a field of a tab-separated table: a gene id holding one is not
# written as is, so its rows cannot be found by their text.
_QUOTED = ('"', "\t", "\n", "\r")


def gene_rows(path: str | Path, genes: list[str] | None) -> pd.DataFrame:
    """The rows of some genes of a result table whose first column is the gene id, in the file's order.

    The same rows, columns and values as :func:`batchmix.io.read_result_table` of the whole table
    filtered on its first column, without parsing the other genes' rows: the lines of those genes
    are found by their text (``<gene>\\t`` at the start of a line) and only they are parsed, by
    :func:`~batchmix.io.read_result_table` itself. The BLUP table holds a row per gene and level
    of every grouping factor (390,000 rows for 20,000 genes in 20 batches): reading it whole took a
    tenth of the report's time and a third of its memory for the 4 genes of the shrinkage figures.

    Parameters
    ----------
    path : str or Path
        A table batchmix wrote (``results/lmm/blups.tsv``, ``results/lmm/fixed_vcov.tsv``).
    genes : list of str or None
        The genes; None: the whole table. A gzipped table, or a gene id that the writer would
        have quoted, is read whole and filtered.

    Returns
    -------
    pandas.DataFrame
    """
    if genes is None:
        return read_result_table(path)
    wanted = list(dict.fromkeys(str(g) for g in genes))
    if str(path).endswith(".gz") or any(c in gene for gene in wanted for c in _QUOTED):
        whole = read_result_table(path)
        return whole.loc[whole.iloc[:, 0].isin(wanted)].reset_index(drop=True)
    with open(path, "rb") as handle:
        data = handle.read() if wanted else handle.readline()
    header_end = data.find(b"\n")
    if header_end < 0:
        header_end = len(data)
    # Every data line follows a line end: "\n<gene>\t" from the header's line end on.
    starts = []
    for gene in wanted:
        key = b"\n" + gene.encode() + b"\t"
        at = data.find(key, header_end)
        while at >= 0:
            starts.append(at + 1)
            at = data.find(key, at + 1)
    lines = [data[: header_end + 1]]
    for start in sorted(starts):
        end = data.find(b"\n", start)
        lines.append(data[start:] if end < 0 else data[start : end + 1])
    with tempfile.TemporaryDirectory(prefix="batchmix-report-") as folder:
        part = Path(folder) / Path(path).name
        part.write_bytes(b"".join(lines))
        return read_result_table(part)


@contextlib.contextmanager
def _fewer_collections():
    """Python's cyclic garbage collector, run less often while the report is made.

    Drawing the figures makes hundreds of thousands of small matplotlib objects, and the collector
    ran some 350 times over them and over everything imported before (0.3 s of the report); with
    the objects that exist at the start frozen (never scanned again) and a collection every 10,000
    allocations rather than 700, it spends a fifth of that for 10 MB more memory. Both settings
    are restored at the end.
    """
    thresholds = gc.get_threshold()
    # Someone else's frozen objects are theirs to thaw: freeze only when nothing is frozen.
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    gc.set_threshold(10_000, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if freeze:
            gc.unfreeze()


def _de_tables(summary_path) -> dict:
    """The DE tables by coefficient, next to ``de/summary.json`` (the de stage writes them together)."""
    if not summary_path:
        return {}
    names = list(json.loads(Path(summary_path).read_text())["coefficients"])
    folder = Path(summary_path).parent
    return {name: read_result_table(folder / f"{de_table_name(name)}.tsv") for name in names}


def build_report(config: dict, inputs: dict[str, str], html_path: str | Path, figures_dir: str | Path) -> None:
    """Write the self-contained HTML report and its figures.

    Parameters
    ----------
    config : dict
        The workflow config with defaults filled in (``model``, ``batch``, ``reml``,
        ``simpson``, ``report``, …).
    inputs : dict of str to str
        Paths of the report's inputs, keyed as in :func:`load_tables`. Without ``model``, the
        model's structure is made from the design (:func:`batchmix.lmm.model_metadata`); without
        ``fixed_vcov`` the shrinkage figures have no band (both logged as warnings).
    html_path : str or Path
        The page to write (``results/report.html``).
    figures_dir : str or Path
        Directory for the PNG figures (``results/figures``), one file per figure of the page.

    Returns
    -------
    None
        The page and the figures are written to disk.
    """
    with _fewer_collections():
        _build_report(config, inputs, html_path, figures_dir)
    log.info("wrote %s and %d figures in %s", html_path, len(list(Path(figures_dir).glob("*.png"))), figures_dir)


def _build_report(config: dict, inputs: dict[str, str], html_path: str | Path, figures_dir: str | Path) -> None:
    # The expression values, the BLUPs and Cov(β̂) are read for the genes of the shrinkage figures
    # only, once the model is known.
    tables = load_tables(inputs, config, expression_genes=[], model_genes=[])
    if tables["model"] is None:
        # A caller that predates model.json: the same metadata, made from the design alone.
        log.warning("no model.json among the report's inputs: the model's structure is taken from the design")
        samples = tables["samples"].loc[tables["vst_expression"].columns]
        tables["model"] = model_metadata(config["model"], samples, reml=bool(config.get("reml", True)))
    if tables["fixed_vcov"] is None:
        log.warning("no fixed_vcov.tsv among the report's inputs: the shrinkage figures have no confidence band")
    genes = shrinkage_genes(config, tables)
    tables["vst_expression"] = _matrix(inputs["vst_expression"], genes, tables["gene_fits"])
    tables["blups"] = gene_rows(inputs["blups"], genes)
    if tables["fixed_vcov"] is not None:
        tables["fixed_vcov"] = gene_rows(inputs["fixed_vcov"], genes)
    figures = Figures(figures_dir)
    # The Simpson scan compares within batches: without a batch it does not run.
    simpson_config = config if config.get("batch") else {**config, "simpson": {**config["simpson"], "enabled": False}}
    labels = component_labels(tables["model"])
    context = {
        "title": "batchmix report",
        "config": config,
        "verdict": verdict_section(config, tables),
        "search": gene_search_section(tables["gene_fits"], tables["de_tables"], fraction_labels=labels),
        "design": design_section(config, tables),
        "de": de_section(config, tables, figures),
        "run": run_section(config, tables, inputs),
        # the corrected matrix's file as the run wrote it (its format follows outputs.matrices)
        "batch": {**batch_section(config, tables, figures), "corrected_path": inputs.get("corrected")},
        "lmm": lmm_section(config, tables, figures),
        "shrinkage": shrinkage_section(config, tables, figures),
        "vst": vst_section(config, tables, figures),
        "simpson": simpson_section(simpson_config, tables),
        "uncertainty": uncertainty_section(config, tables, figures),
    }
    render_page(context, html_path)
