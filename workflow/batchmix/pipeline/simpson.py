"""The Simpson stages: the all-pairs reversal scan, scattered over block-pair jobs, its sign-flip
calibration replicates (one job each), and the gather that writes the reversals.

- ``simpson_prepare``: the residualised data of the scan (:func:`batchmix.simpson.prepare` on the genes
  the VST kept) and the unit rows the scan multiplies, written once (``SimpsonData.save``).
- ``simpson_block`` (job ``i-of-n``): candidates of every n-th block pair, starting at the i-th
  (:func:`batchmix.simpson.block_pairs`), each with its exact p.
- ``simpson_null`` (job ``r-of-n``): the pairs flagged on sign-flip replicate r - 1.
- ``simpson``: BH/BY over all G(G-1)/2 pairs from the gathered candidates (identical to one scan),
  the lurking factor, the calibration summary, the figure.  Without gathered inputs (the
  ``batchmix simpson`` command) it scans and calibrates in the one job.

The block-pair and replicate jobs and the gather memory-map the prepared data (input ``prepared``),
so they see identical numbers and none of them reads the matrix or residualises again; each holds in
its own memory only the rows it multiplies.  Without ``prepared`` (the ``batchmix simpson`` command)
a stage prepares the data itself.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from batchmix import simpson
from batchmix.defaults import DEFAULT_SEED
from batchmix.design import fixed_design
from batchmix.io import (
    COUNT_INPUT_TYPES,
    InputError,
    batch_labels,
    read_matrix,
    read_result_table,
    write_json,
    write_table,
)
from batchmix.io.matrices import iter_matrix_rows, matrix_format, matrix_index
from batchmix.pipeline.validate import load_samples
from batchmix.plots.simpson import plot_reversals
from batchmix.plots.style import save_png
from batchmix.vst import transform_normalised

__all__ = [
    "simpson_stage",
    "simpson_prepare_stage",
    "simpson_block_stage",
    "simpson_null_stage",
    "consistent_reversals",
    "zero_value_of",
    "check_simpson_settings",
    "job_of",
    "write_candidates",
]

logger = logging.getLogger(__name__)

_JOB = re.compile(r"(?P<index>\d+)-of-(?P<count>\d+)")


def job_of(path: str) -> tuple[int, int]:
    """The job ``(i, n)`` (1-based) of a per-job Simpson file, from its ``i-of-n`` name."""
    name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    found = _JOB.search(name)
    if found is None:
        raise ValueError(f"{path!r} does not name its job as i-of-n")
    index, count = int(found["index"]), int(found["count"])
    if not 1 <= index <= count:
        raise ValueError(f"{path!r}: job {index} of {count}")
    return index, count


def zero_value_of(info: dict) -> float | None:
    """The stabilised value of a zero count, from the VST's recorded trend (``results/vst/info.json``).

    None for log-scale input (no counts) and for the ``local`` trend, whose spline the info does not
    record (the usable mask then rests on ``min_sd`` alone, logged as a warning).
    """
    if info.get("input_type") not in COUNT_INPUT_TYPES:
        return None
    fit_type = info.get("vst_fit_type_used")
    try:
        return float(transform_normalised(0.0, fit_type=fit_type, coefficients=info.get("vst_coefficients", {})))
    except (ValueError, KeyError):
        logger.warning(
            "the %s dispersion trend does not give the value of a zero count: the Simpson scan's usable "
            "batches are chosen by the within-batch SD alone",
            fit_type,
        )
        return None


def check_simpson_settings(config: dict, samples: pd.DataFrame) -> None:
    """Settings of ``simpson:`` that cannot work with this sample sheet, as an ``InputError``.

    ``min_batches`` larger than the number of batches would give every pair p = 1 under the
    random-effects test: a run that reports "no reversals" for a reason that is the config's, so
    it is an error, not a warning.
    """
    scfg = config["simpson"]
    if not scfg.get("enabled", True) or scfg.get("within_test", "random_effects") != "random_effects":
        return
    n_batches = int(batch_labels(samples, config["batch"]).nunique())
    if int(scfg["min_batches"]) > n_batches:
        raise InputError(
            f"simpson.min_batches is {scfg['min_batches']} but the sample sheet has {n_batches} batches "
            f"({config['batch']}): no pair could be tested. Set simpson.min_batches to at most {n_batches} "
            "(3 or more is advisable: a sign seen in two batches is weak evidence), or use "
            "simpson.within_test: pooled."
        )


@dataclass
class _Scan:
    """The prepared data of a run and what the stages around it need."""

    data: simpson.SimpsonData
    expression: pd.DataFrame  # the stabilised genes the VST kept
    samples: pd.DataFrame
    batch: pd.Series
    covariates: np.ndarray | None
    excluded_by_vst: pd.Series
    zero_value: float | None


def _prepare(config: dict, inputs: dict) -> _Scan:
    scfg = config["simpson"]
    expr = read_matrix(inputs["expression"])
    status = read_result_table(inputs["gene_status"]).set_index("gene_id")["status"]
    samples = load_samples(config, inputs["samples"]).loc[expr.columns]
    check_simpson_settings(config, samples)
    batch = batch_labels(samples, config["batch"])
    ok = status.reindex(expr.index) == "ok"
    covariates = _covariates(config, samples)
    genes = None if scfg["genes"] == "all" else int(scfg["genes"])
    zero_value = None
    if inputs.get("vst_info"):
        with open(inputs["vst_info"], encoding="utf-8") as handle:
            zero_value = zero_value_of(json.load(handle))
    expression = expr.loc[ok.to_numpy()]
    data = simpson.prepare(
        expression, batch, covariates=covariates, genes=genes, min_sd=scfg["min_sd"], zero_value=zero_value
    )
    return _Scan(data, expression, samples, batch, covariates, status[~ok], zero_value)


def _covariates(config: dict, samples: pd.DataFrame) -> np.ndarray | None:
    adjust_for = config["simpson"]["adjust_for"]
    if not adjust_for:
        return None
    X, names = fixed_design("~ " + " + ".join(adjust_for), samples)
    return X[:, [i for i, n in enumerate(names) if n != "Intercept"]]


# In simpson_prepare's folder, next to the data: the stabilised genes the VST did not keep, and why.
_VST_EXCLUDED = "vst_excluded.json"


def _prepared_data(inputs: dict) -> simpson.SimpsonData:
    """The data ``simpson_prepare`` wrote (input ``prepared``), memory-mapped."""
    return simpson.SimpsonData.load(inputs["prepared"])


def _loaded_scan(config: dict, inputs: dict) -> _Scan:
    """:func:`_prepare`'s result from the prepared data: the same numbers, without reading the matrix.

    The expression the gather draws and attributes lurking factors from is that of the scanned genes
    (``data.values``): every reported gene is one of them.
    """
    data = _prepared_data(inputs)
    samples = load_samples(config, inputs["samples"]).loc[data.samples]
    batch = batch_labels(samples, config["batch"])
    expression = pd.DataFrame(data.values, index=data.genes, columns=data.samples, copy=False)
    with open(Path(inputs["prepared"]) / _VST_EXCLUDED, encoding="utf-8") as handle:
        excluded = json.load(handle)
    excluded_by_vst = pd.Series(
        [s for _, s in excluded], index=pd.Index([g for g, _ in excluded], name="gene_id"), name="status"
    )
    return _Scan(data, expression, samples, batch, _covariates(config, samples), excluded_by_vst, data.zero_value)


def _matrix_rows(path: str):
    """The gene ids, the sample ids and a reader of the rows of a stabilised matrix, in blocks.

    A Parquet matrix is read a row group at a time (the preparation never holds it whole); the
    other formats whole.
    """
    if matrix_format(path) == "parquet":
        genes, samples = matrix_index(path)

        def read_blocks():
            for frame in iter_matrix_rows(path):
                yield frame.to_numpy(dtype=np.float64)

        return genes, samples, read_blocks
    whole = read_matrix(path)
    values = whole.to_numpy(dtype=np.float64)

    def read_whole():
        yield values

    return whole.index, whole.columns, read_whole


def simpson_prepare_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Prepare the scan once: the residualised data and the unit rows, written to ``outputs["prepared"]``.

    Inputs ``expression``, ``gene_status``, ``samples``, ``vst_info``.  The genes the VST kept are
    read a block at a time and residualised as :func:`batchmix.simpson.prepare` does
    (:func:`batchmix.simpson.prepare_saved`: the same numbers, bounded memory); the unit rows of the
    configured test (float32 for the screen, float64 for the exact p) are saved with them.
    """
    scfg = config["simpson"]
    genes, sample_ids, read_blocks = _matrix_rows(inputs["expression"])
    status = read_result_table(inputs["gene_status"]).set_index("gene_id")["status"]
    samples = load_samples(config, inputs["samples"]).loc[sample_ids]
    check_simpson_settings(config, samples)
    batch = batch_labels(samples, config["batch"])
    ok = status.reindex(genes) == "ok"
    ok_rows = ok.to_numpy()
    zero_value = None
    if inputs.get("vst_info"):
        with open(inputs["vst_info"], encoding="utf-8") as handle:
            zero_value = zero_value_of(json.load(handle))

    def read_kept():
        row = 0
        for block in read_blocks():
            chosen = ok_rows[row : row + block.shape[0]]
            row += block.shape[0]
            yield block if chosen.all() else block[chosen]

    units = simpson.UNITS_RANDOM_EFFECTS if scfg["within_test"] == "random_effects" else simpson.UNITS_POOLED
    data = simpson.prepare_saved(
        outputs["prepared"],
        read_kept,
        pd.Index(genes)[ok_rows],
        pd.Index(sample_ids),
        batch,
        covariates=_covariates(config, samples),
        genes=None if scfg["genes"] == "all" else int(scfg["genes"]),
        min_sd=scfg["min_sd"],
        zero_value=zero_value,
        units=units,
    )
    # the genes the VST did not keep, for the gather's list of excluded genes
    excluded = [[str(g), str(v)] for g, v in status[~ok].items()]
    with open(Path(outputs["prepared"]) / _VST_EXCLUDED, "w", encoding="utf-8") as handle:
        json.dump(excluded, handle)
    return {"genes": int(data.n_genes), "genes_excluded": int(len(data.genes_excluded) + len(excluded))}


def _scan_options(config: dict) -> dict:
    scfg = config["simpson"]
    return {
        "fdr": scfg["fdr"],
        "method": scfg["method"],
        "within_test": scfg["within_test"],
        "min_batches": int(scfg["min_batches"]),
    }


def _my_block_pairs(n_genes: int, block_size: int, index: int, count: int) -> list[tuple[slice, slice]]:
    """Job ``index`` of ``count`` takes every count-th block pair, starting at the index-th."""
    return simpson.block_pairs(n_genes, block_size)[index - 1 :: count]


def simpson_block_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """One block-pair job: the candidates (index_a, index_b, p) of its share of the block pairs.

    Inputs ``expression``, ``gene_status``, ``samples``, ``vst_info``; writes ``outputs["candidates"]``,
    whose ``i-of-n`` name says which share.
    """
    index, count = job_of(outputs["candidates"])
    data = _prepared_data(inputs) if inputs.get("prepared") else _prepare(config, inputs).data
    options = _scan_options(config)
    mine = _my_block_pairs(data.n_genes, int(config["simpson"]["block_size"]), index, count)
    parts = []
    for done, (a, b) in enumerate(mine, start=1):
        parts.append(simpson.scan_block_pair(data, a, b, **options))
        if done % 10 == 0 or done == len(mine):
            logger.info("block pairs: %d of %d done", done, len(mine))
    columns = simpson.CANDIDATE_COLUMNS
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    # float p written exactly (17 significant digits round-trip), so that the gather's step-up is the
    # single scan's
    table = table.astype({"index_a": np.int64, "index_b": np.int64, "p": np.float64})
    write_candidates(table, outputs["candidates"])
    return {"block_pairs": len(mine), "candidates": int(len(table)), "genes": int(data.n_genes)}


def write_candidates(table: pd.DataFrame, path: str) -> None:
    """A block job's candidates as TSV: ``index_a``, ``index_b`` and ``p`` as ``%.17g``.

    The bytes of ``table.to_csv(path, sep="\\t", index=False, float_format="%.17g")``, written
    without pandas' per-cell formatting (a job can have hundreds of thousands of candidates).
    """
    columns = [
        table["index_a"].to_numpy(dtype=np.int64).astype(str).tolist(),
        table["index_b"].to_numpy(dtype=np.int64).astype(str).tolist(),
        ["%.17g" % p for p in table["p"].to_numpy(dtype=np.float64).tolist()],
    ]
    lines = ["\t".join(simpson.CANDIDATE_COLUMNS), *map("\t".join, zip(*columns))]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write("\n".join(lines) + "\n")


def _read_candidates(path: str) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"index_a": np.int64, "index_b": np.int64, "p": np.float64})


def simpson_null_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """One sign-flip replicate (``r-of-n`` in its output name: replicate r - 1): the pairs it flags.

    Writes ``outputs["null"]``: ``{replicate, seed, flagged}`` (JSON).
    """
    index, _ = job_of(outputs["null"])
    scfg = config["simpson"]
    Path(outputs["null"]).parent.mkdir(parents=True, exist_ok=True)
    data = _prepared_data(inputs) if inputs.get("prepared") else _prepare(config, inputs).data
    flagged = simpson.sign_flip_replicate(
        data,
        index - 1,
        seed=int(scfg["seed"]),
        block_size=int(scfg["block_size"]),
        # the replicate's residuals go to a temporary folder next to the output, a block at a time
        workdir=Path(outputs["null"]).parent,
        **_scan_options(config),
    )
    write_json({"replicate": index - 1, "seed": int(scfg["seed"]), "flagged": int(flagged)}, outputs["null"])
    return {"replicate": index - 1, "flagged": int(flagged)}


def consistent_reversals(reversals: pd.DataFrame) -> pd.DataFrame:
    """Reversals ordered for display: the most consistent across batches first, then by p.

    Consistency is ``n_agree`` (usable batches whose r_b has the sign of the random-effects mean),
    then its share of the usable batches.  The table itself is sorted by p; but the smallest p-values
    can come from pairs seen in few batches, which make a poor picture of the paradox.  A pair whose
    within-batch sign holds in every batch tells the story at a glance.
    """
    if reversals.empty:
        return reversals
    with np.errstate(invalid="ignore", divide="ignore"):
        share = reversals["n_agree"] / reversals["k_usable"].where(reversals["k_usable"] > 0)
    return (
        reversals.assign(_share=share.fillna(0.0))
        .sort_values(
            ["n_agree", "_share", "p", "gene_a", "gene_b"],
            ascending=[False, False, True, True, True],
            kind="mergesort",
        )
        .drop(columns="_share")
    )


def _permutation_check(
    config: dict, scan: _Scan, flagged: int, workdir: Path, *, seed: int = DEFAULT_SEED
) -> simpson.PermutationCheck:
    """The within-batch permutation check on the prepared data: each permuted data set prepared a
    block of genes at a time in a temporary folder in ``workdir`` and scanned memory-mapped
    (:func:`batchmix.simpson.permutation_check_saved`: the numbers of the in-memory check)."""
    scfg = config["simpson"]
    workdir.mkdir(parents=True, exist_ok=True)
    return simpson.permutation_check_saved(
        scan.data,
        scan.batch,
        workdir,
        covariates=scan.covariates,
        n_permutations=int(scfg["n_permutations"]),
        seed=seed,
        min_sd=scfg["min_sd"],
        zero_value=scan.zero_value,
        observed=flagged,
        **_scan_options(config),
    )


def _calibration(config: dict, scan: _Scan, flagged: int, null_paths: list[str], workdir: Path) -> dict:
    """The ``calibration`` block of the summary: the replicates' counts, gathered or computed here."""
    scfg = config["simpson"]
    method = scfg["calibration"]
    if method == "none":
        return {"method": "none"}
    seed = int(scfg["seed"])
    options = _scan_options(config)
    if method == "permutation":
        check = _permutation_check(config, scan, flagged, workdir, seed=seed)
        return simpson.calibration_summary(flagged, check.null_counts, method="permutation", seed=seed)
    if null_paths:
        records = []
        for path in null_paths:
            with open(path, encoding="utf-8") as handle:
                records.append(json.load(handle))
        records.sort(key=lambda r: r["replicate"])
        counts = [int(r["flagged"]) for r in records]
    else:
        # each replicate's residuals a block of genes at a time in a temporary folder next to the outputs
        workdir.mkdir(parents=True, exist_ok=True)
        counts = [
            simpson.sign_flip_replicate(
                scan.data, r, seed=seed, block_size=int(scfg["block_size"]), workdir=workdir, **options
            )
            for r in range(int(scfg["n_replicates"]))
        ]
    return simpson.calibration_summary(flagged, counts, method="sign_flip", seed=seed)


def simpson_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Gather the scan: BH/BY over all pairs, the lurking factor, the calibration, the figure.

    Inputs ``expression`` (stabilised), ``gene_status``, ``samples``, ``vst_info`` and, from the
    scattered workflow, ``candidates`` (every block-pair job's file) and ``null`` (every sign-flip
    replicate's file); without them the scan and the replicates run here, on data prepared as
    ``simpson_prepare`` prepares it, in a temporary folder next to the outputs.  Writes
    ``outputs["reversals"]`` (with ``share_<column>`` per lurking factor), ``outputs["excluded"]``,
    ``outputs["summary"]`` and ``outputs["figure"]``.
    """
    scfg = config["simpson"]
    if not inputs.get("prepared"):
        # One job (the command line, batchmix run): prepared as the workflow's simpson_prepare job
        # prepares, into a temporary folder next to the outputs, and scanned memory-mapped, so that
        # memory stays that of a block of genes; the same numbers (batchmix.simpson.prepare_saved).
        folder = Path(outputs["summary"]).parent
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".prepared.", dir=folder) as prepared:
            simpson_prepare_stage(config, inputs, {"prepared": prepared}, params)
            return simpson_stage(config, {**inputs, "prepared": prepared}, outputs, params)
    scan = _loaded_scan(config, inputs)
    data = scan.data
    options = _scan_options(config)
    candidate_paths = inputs.get("candidates") or []
    if candidate_paths:
        candidates = [_read_candidates(p) for p in candidate_paths]
        result = simpson.combine(data, candidates, **options)
    else:
        result = simpson.scan_data(data, block_size=int(scfg["block_size"]), **options)
    excluded = pd.concat([scan.excluded_by_vst.rename("reason"), result.genes_excluded.rename("reason")])
    adjusted = tuple(scfg["adjust_for"])
    lurking = simpson.lurking_factors(
        # every reported gene is a scanned gene: no copy of the scanned rows
        scan.expression,
        scan.samples,
        result.reversals,
        batch=config["batch"],
        covariates=scan.covariates,
        exclude=adjusted,
    )
    reversals = pd.concat([result.reversals, lurking.shares], axis=1)
    calibration = _calibration(
        config, scan, len(result.reversals), inputs.get("null") or [], Path(outputs["summary"]).parent
    )
    summary = {
        "n_genes_scanned": result.n_genes,
        "n_pairs": result.n_pairs,
        "n_candidates": result.n_candidates,
        "n_reversals": int(len(result.reversals)),
        "fdr": result.fdr,
        "method": result.method,
        "adjust_for": scfg["adjust_for"],
        "n_genes_excluded": int(len(excluded)),
        "within_test": result.within_test,
        "min_batches": int(result.min_batches),
        "min_sd": float(scfg["min_sd"]),
        "zero_value": scan.zero_value,
        "calibration": calibration,
        "lurking": {"nested": lurking.nested, "factors": lurking.summary},
    }
    if scfg["permutation_check"]:
        check = _permutation_check(config, scan, len(result.reversals), Path(outputs["summary"]).parent)
        summary["permutation_check"] = check.__dict__
    write_table(reversals, outputs["reversals"])
    write_table(excluded.rename_axis("gene_id").reset_index(), outputs["excluded"])
    write_json(summary, outputs["summary"])
    fig = plot_reversals(
        scan.expression, scan.batch, consistent_reversals(result.reversals), top=config["report"]["top_pairs"] or 1
    )
    save_png(fig, outputs["figure"])
    return {
        "genes_scanned": int(result.n_genes),
        "pairs": int(result.n_pairs),
        "reversals": int(len(result.reversals)),
        "genes_excluded": int(len(excluded)),
    }
