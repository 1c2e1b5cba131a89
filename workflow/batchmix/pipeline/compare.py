"""The compare and index stages: the analyses of one config side by side.

``compare`` (:func:`compare_stage`) reads every analysis's outputs and, for the analyses on the same
data and genes (the same expression and sample sheet, one shared stabilise job), refits each
analysis's model to the genes it fitted by maximum likelihood, picks the best model per gene by AIC
and BIC and compares the DE calls (:mod:`batchmix.compare`). It writes, under the results folder
(:data:`batchmix.pipeline.paths.COMPARE_OUTPUTS`):

- ``compare/information_criteria.tsv``: long, ``gene_id, group, analysis, model, status, loglik_ml,
  n_params, aic, bic`` (groups, then analyses in the config's order, then genes in the stabilised
  matrix's order);
- ``compare/best_models.tsv``: per group and gene ``status, best_aic, model_aic, delta_aic, best_bic,
  model_bic, delta_bic`` (every gene, with a status);
- ``compare/de_agreement.tsv``: per group, pair of analyses and shared coefficient the counts of
  :func:`batchmix.compare.de_agreement`, the disagreeing genes joined by ``,``;
- ``compare/summary.json``: per analysis the index's row (data, model, genes, verdict, batch figures,
  DE counts, Simpson reversals, the link to its report) and per group the win counts.

``index`` (:func:`index_stage`) renders ``results/index.html`` from those files
(:func:`batchmix.report.index.build_index`).

Both take the whole config (with ``analyses:``) and find the analyses with
:func:`batchmix.analyses.resolve_analyses`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pandas as pd

from batchmix.analyses import Analysis, resolve_analyses, stabilise_key
from batchmix.compare import AGREEMENT_COLUMNS, best_models, de_agreement, information_criteria, win_counts
from batchmix.io import read_matrix, read_result_table, write_json, write_table
from batchmix.pipeline import paths
from batchmix.pipeline.validate import load_samples

__all__ = ["IC_TABLE_COLUMNS", "analysis_label", "comparison_groups", "compare_stage", "index_stage", "results_root"]

logger = logging.getLogger(__name__)

#: Columns of ``compare/information_criteria.tsv``.
IC_TABLE_COLUMNS = ["gene_id", "group", "analysis", "model", "status", "loglik_ml", "n_params", "aic", "bic"]
_BEST_TABLE_COLUMNS = [
    "group",
    "gene_id",
    "status",
    "best_aic",
    "model_aic",
    "delta_aic",
    "best_bic",
    "model_bic",
    "delta_bic",
]


def analysis_label(analysis: Analysis) -> str:
    """The analysis's name in the comparison: its name under ``analyses:``, ``analysis`` without one."""
    return analysis.name or "analysis"


def results_root(outputs: dict, stage: str = "compare") -> str:
    """The results folder of a compare or index job, from where its outputs go."""
    key = "summary" if stage == "compare" else "index"
    relative = paths.COMPARE_OUTPUTS[key]
    target = str(outputs[key])
    if not target.endswith(relative):
        raise ValueError(f"{stage}: the output {key} is {target}, which does not end in {relative}")
    return target[: -len(relative)].rstrip("/") or "."


def comparison_groups(analyses: list[Analysis]) -> list[tuple[str, list[Analysis]]]:
    """The analyses on the same data and genes: the same stabilise job, expression and sample sheet
    (:func:`batchmix.pipeline.paths.comparison_key`).

    Returns
    -------
    list of (str, list of Analysis)
        Group name (``stabilise-<key>``, the shared stabilise folder's name) and its analyses, groups
        in the order of their first analysis, analyses in the config's order.
    """
    groups: dict[tuple, list[Analysis]] = {}
    for analysis in analyses:
        groups.setdefault(paths.comparison_key(analysis), []).append(analysis)
    named = []
    for members in groups.values():
        name = f"stabilise-{stabilise_key(members[0].config)}"
        if any(name == other for other, _ in named):
            name = f"{name}-{len(named) + 1}"
        named.append((name, members))
    return named


class _Reader:
    """Reads the analyses' files, each of which must be among the stage's inputs when they are given."""

    def __init__(self, inputs: dict):
        listed = [v for value in inputs.values() for v in ([value] if isinstance(value, str) else value)]
        self.listed = {os.path.normpath(p) for p in listed} if listed else None

    def check(self, path: str) -> str:
        if self.listed is not None and os.path.normpath(path) not in self.listed:
            raise RuntimeError(
                f"compare: {path} is read but is not among the stage's inputs; the inputs are out of date "
                "(batchmix.pipeline.paths.compare_inputs lists them)"
            )
        return path

    def json(self, path: str) -> dict:
        return json.loads(Path(self.check(path)).read_text())

    def table(self, path: str) -> pd.DataFrame:
        return read_result_table(self.check(path))


def _de_counts(de_summary: dict) -> dict:
    keep = ("n_tested", "n_significant_lmm", "n_significant_ols", "n_gained", "n_lost")
    return {coef: {k: entry.get(k) for k in keep} for coef, entry in de_summary.get("coefficients", {}).items()}


def _analysis_row(analysis: Analysis, group: str, root: str, reader: _Reader) -> dict:
    """The index's row of one analysis, from its summary.json, de/summary.json and Simpson summary."""
    cfg, out = analysis.config, analysis.outdir
    summary = reader.json(paths.path(paths.STAGE_OUTPUTS["summary"]["summary"], outdir=out))
    de = reader.json(paths.path(paths.STAGE_OUTPUTS["de"]["summary"], outdir=out))
    figures = summary.get("figures", {})
    reversals = None
    if paths.simpson_runs(cfg):
        simpson = reader.json(paths.path(paths.STAGE_OUTPUTS["simpson"]["summary"], outdir=analysis.simpson_outdir))
        reversals = int(simpson["n_reversals"])
    report = paths.path(paths.STAGE_OUTPUTS["report"]["html"], outdir=out)
    verdict = summary.get("verdict", {})
    return {
        "name": analysis_label(analysis),
        "group": group,
        "data": str(cfg["expression"]),
        "samples": str(cfg["samples"]),
        "model": cfg["model"],
        "reml": bool(cfg["reml"]),
        "batch": cfg.get("batch"),
        "report": Path(os.path.relpath(report, root)).as_posix(),
        "genes": summary.get("genes", {}),
        "verdict": {k: verdict.get(k) for k in ("batch_effect", "design", "recommendation", "text")},
        "batch_fraction_median": figures.get("batch_fraction_median"),
        "lrt_share_q05": figures.get("lrt_share_q05"),
        "de": _de_counts(de),
        "de_fdr": de.get("fdr"),
        "simpson_reversals": reversals,
    }


def _gene_status(reader: _Reader, analysis: Analysis) -> pd.Series:
    fits = reader.table(paths.path(paths.STAGE_OUTPUTS["gather_lmm"]["gene_fits"], outdir=analysis.outdir))
    return fits.set_index("gene_id")["status"].astype(str)


def _de_tables(reader: _Reader, analysis: Analysis) -> dict[str, pd.DataFrame]:
    cfg = analysis.config
    coefficients = paths.de_table_coefficients(cfg, load_samples(cfg))
    tables = paths.de_table_paths(cfg, outdir=analysis.outdir)
    return {coef: reader.table(p)[["gene_id", "status", "q"]] for coef, p in zip(coefficients, tables)}


def _models_of(best: pd.Series, models: dict[str, str]) -> list:
    return [None if pd.isna(b) else "|".join(models[n] for n in str(b).split("|")) for b in best]


def _compare_group(name: str, members: list[Analysis], reader: _Reader) -> tuple[pd.DataFrame, ...]:
    """Refit, best models and DE agreement of one group; returns the three tables and its summary."""
    labels = [analysis_label(a) for a in members]
    models = {analysis_label(a): a.config["model"] for a in members}
    first = members[0]
    expression_path = paths.path(
        paths.STAGE_OUTPUTS["stabilise"]["expression"], outdir=first.stabilise_outdir, config=first.config
    )
    expression = read_matrix(reader.check(expression_path))
    logger.info(
        "group %s: %d genes, analyses %s; refitting every model by ML", name, len(expression), ", ".join(labels)
    )
    ics = {}
    frames = []
    for analysis, label in zip(members, labels):
        samples = load_samples(analysis.config, reader.check(str(analysis.config["samples"])))
        ic = information_criteria(
            expression, samples, analysis.config["model"], gene_status=_gene_status(reader, analysis), label=label
        )
        ics[label] = ic
        frame = ic.copy()
        frame.insert(1, "group", name)
        frame.insert(2, "analysis", label)
        frame.insert(3, "model", analysis.config["model"])
        frames.append(frame[IC_TABLE_COLUMNS])
    best = best_models(ics)
    counts = win_counts(best, labels)
    best.insert(0, "group", name)
    best["model_aic"] = _models_of(best["best_aic"], models)
    best["model_bic"] = _models_of(best["best_bic"], models)
    fdrs = sorted({float(a.config["de"]["fdr"]) for a in members})
    notes = []
    if len(fdrs) > 1:
        notes.append(f"the analyses call DE at different FDRs ({', '.join(map(str, fdrs))}); compared at {fdrs[0]}")
    agreement = de_agreement({label: _de_tables(reader, a) for label, a in zip(labels, members)}, fdrs[0])
    agreement.insert(0, "group", name)
    not_fitted = {label: int((~ic["status"].isin(["ok", "singular"])).sum()) for label, ic in ics.items()}
    summary = {
        "name": name,
        "data": str(first.config["expression"]),
        "samples": str(first.config["samples"]),
        "analyses": labels,
        "models": models,
        "compared": True,
        "fdr": fdrs[0],
        "not_fitted": not_fitted,
        "notes": notes,
        **counts,
    }
    return pd.concat(frames, ignore_index=True), best[_BEST_TABLE_COLUMNS], agreement, summary


def compare_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Compare the analyses of ``config``: ML information criteria, best models, DE agreement, the index's rows.

    Parameters
    ----------
    config : dict
        The whole config, with ``analyses:`` (a config without is one analysis: nothing to compare,
        its row is still written).
    inputs : dict
        :func:`batchmix.pipeline.paths.compare_inputs`: every file read must be listed there.
    outputs : dict
        :func:`batchmix.pipeline.paths.compare_outputs` with ``stage="compare"``.
    params : dict
        ``outdir``: the results folder (default: from where ``outputs["summary"]`` goes).

    Returns
    -------
    dict
        Counts for the log: analyses, groups compared, genes refitted.
    """
    root = params.get("outdir") or results_root(outputs, "compare")
    analyses = resolve_analyses(config, outdir=root)
    reader = _Reader(inputs)
    started = time.perf_counter()
    rows, groups = [], []
    ic_frames, best_frames, agree_frames = [], [], []
    for name, members in comparison_groups(analyses):
        rows += [_analysis_row(a, name, root, reader) for a in members]
        if len(members) < 2:
            groups.append(
                {
                    "name": name,
                    "data": str(members[0].config["expression"]),
                    "samples": str(members[0].config["samples"]),
                    "analyses": [analysis_label(members[0])],
                    "models": {analysis_label(members[0]): members[0].config["model"]},
                    "compared": False,
                    "notes": ["only one analysis of this data: no model comparison"],
                }
            )
            continue
        ic, best, agreement, summary = _compare_group(name, members, reader)
        ic_frames.append(ic)
        best_frames.append(best)
        agree_frames.append(agreement)
        groups.append(summary)
        logger.info("group %s compared (%.1f s)", name, time.perf_counter() - started)
    ic = pd.concat(ic_frames, ignore_index=True) if ic_frames else pd.DataFrame(columns=IC_TABLE_COLUMNS)
    best = pd.concat(best_frames, ignore_index=True) if best_frames else pd.DataFrame(columns=_BEST_TABLE_COLUMNS)
    agreement = (
        pd.concat(agree_frames, ignore_index=True)
        if agree_frames
        else pd.DataFrame(columns=["group", *AGREEMENT_COLUMNS])
    )
    agreement = agreement.copy()
    for column in ("genes_only_a", "genes_only_b"):
        agreement[column] = [",".join(genes) for genes in agreement[column]]
    write_table(ic, outputs["information_criteria"])
    write_table(best, outputs["best_models"])
    write_table(agreement, outputs["de_agreement"])
    write_json(
        {
            "analyses": rows,
            "groups": groups,
            "files": {k: Path(os.path.relpath(v, root)).as_posix() for k, v in paths.compare_outputs(root).items()},
        },
        outputs["summary"],
    )
    return {
        "analyses": len(rows),
        "groups_compared": sum(1 for g in groups if g["compared"]),
        "genes_refitted": int(ic["status"].isin(["ok", "singular"]).sum()),
    }


def index_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Render ``results/index.html`` from the compare stage's outputs.

    Inputs :func:`batchmix.pipeline.paths.index_inputs` (``summary``, ``best_models``,
    ``de_agreement``; ``information_criteria`` and ``reports`` are linked, not read); output ``index``.
    """
    from batchmix.report.index import build_index

    summary = json.loads(Path(inputs["summary"]).read_text())
    best = read_result_table(inputs["best_models"])
    agreement = read_result_table(inputs["de_agreement"])
    build_index(summary, best, agreement, outputs["index"])
    return {"analyses": len(summary["analyses"]), "groups": len(summary["groups"])}
