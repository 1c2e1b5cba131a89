"""Every output path of the workflow, defined once, relative to an output directory.

The Snakemake rules (``workflow/rules/common.smk``), the ``batchmix`` command line and the
report's inputs all take their paths from here, so a file moves in one place. Paths are plain
strings joined with ``/`` (``"results/vst/expression.tsv.gz"`` for the default ``outdir``), as
Snakemake wants them; LMM chunk paths keep Snakemake's ``{scatteritem}`` wildcard (``i-of-n``)
unless a chunk is named.

The big matrices (the stabilised and the batch-corrected expression) take the suffix of the
config's ``outputs: {matrices: parquet|tsv.gz|h5ad}`` (``{matrix}`` in the patterns below, Parquet
by default); an LMM chunk's gene fits are Parquet and its corrected expression ``.npy`` (intermediates).
"""

from __future__ import annotations

import re

__all__ = [
    "OUTDIR",
    "MATRIX_KEYS",
    "matrix_suffix",
    "chunk_count",
    "STAGE_OUTPUTS",
    "CHUNK_OUTPUTS",
    "batch_is_random",
    "uncertainty_enabled",
    "kinship_input",
    "scatteritems",
    "path",
    "chunk_path",
    "stage_outputs",
    "stage_inputs",
    "log_path",
    "warnings_path",
    "final_outputs",
    "report_inputs",
    "simpson_runs",
    "de_table_name",
    "de_table_coefficients",
    "de_table_paths",
    "SIMPSON_JOB_OUTPUTS",
    "simpson_job_path",
    "simpson_gather_inputs",
    "COMPARE_OUTPUTS",
    "comparison_key",
    "compare_outputs",
    "compare_inputs",
    "index_inputs",
]

# The default output directory, relative to the working directory of a run.
OUTDIR = "results"

# Output files of one LMM chunk, relative to the outdir; {scatteritem} is ``i-of-n``. ``genes`` is
# the chunk's gene range (JSON, from split_genes): the chunk job reads those genes' row groups of
# the stabilised matrix, so no copy of the expression is made per chunk.
CHUNK_OUTPUTS = {
    "genes": "lmm/chunks/{scatteritem}.genes.json",
    "fits": "lmm/chunks/{scatteritem}.fits.parquet",
    "blups": "lmm/chunks/{scatteritem}.blups.tsv",
    "fixed_vcov": "lmm/chunks/{scatteritem}.fixed_vcov.tsv",
    "corrected": "lmm/chunks/{scatteritem}.corrected.npy",
}

# Outputs that are genes x samples matrices in the format of ``outputs.matrices``, by stage.
MATRIX_KEYS = {"stabilise": ("expression",), "gather_lmm": ("corrected",)}

# Output files of one Simpson job, relative to the outdir; {scatteritem} is ``i-of-n``: block-pair
# job i of simpson.jobs, or sign-flip replicate i of simpson.n_replicates.
SIMPSON_JOB_OUTPUTS = {
    "candidates": "simpson/blocks/{scatteritem}.candidates.tsv",
    "null": "simpson/null/{scatteritem}.json",
}

# Output files of every stage, relative to the outdir, by the names the stages use.
STAGE_OUTPUTS: dict[str, dict[str, str]] = {
    "validate": {},
    "stabilise": {
        "expression": "vst/expression{matrix}",
        "size_factors": "vst/size_factors.tsv",
        "gene_status": "vst/gene_status.tsv",
        "mean_sd": "vst/mean_sd.tsv",
        "info": "vst/info.json",
    },
    "split_genes": {"chunks": CHUNK_OUTPUTS["genes"]},
    "lmm_chunk": {key: CHUNK_OUTPUTS[key] for key in ("fits", "blups", "fixed_vcov", "corrected")},
    "gather_lmm": {
        "gene_fits": "lmm/gene_fits.tsv",
        "blups": "lmm/blups.tsv",
        "fixed_vcov": "lmm/fixed_vcov.tsv",
        "model": "lmm/model.json",
        "corrected": "corrected/expression{matrix}",
    },
    # a folder of .npy arrays (batchmix.simpson.SimpsonData.save), temporary in the workflow
    "simpson_prepare": {"prepared": "simpson/prepared"},
    "simpson_block": {"candidates": SIMPSON_JOB_OUTPUTS["candidates"]},
    "simpson_null": {"null": SIMPSON_JOB_OUTPUTS["null"]},
    "simpson": {
        "reversals": "simpson/reversals.tsv",
        "excluded": "simpson/excluded_genes.tsv",
        "summary": "simpson/summary.json",
        "figure": "simpson/top_pairs.png",
    },
    "uncertainty": {
        "bootstrap": "uncertainty/bootstrap.tsv",
        "posterior": "uncertainty/posterior.tsv",
        "posterior_diagnostics": "uncertainty/posterior_diagnostics.tsv",
        "summary": "uncertainty/summary.json",
        "figures": "uncertainty/figures",
    },
    "design": {"design": "design/design.json"},
    "de": {"tables": "de/{coef}.tsv", "summary": "de/summary.json"},
    "diagnostics": {"pca": "diagnostics/pca.json", "scores": "diagnostics/pca_scores.tsv"},
    "summary": {"summary": "summary.json"},
    "report": {"html": "report.html", "figures": "figures"},
    "run_record": {"record": "run.json"},
}

# Stages with one job per LMM chunk: their logs are per chunk.
_PER_CHUNK = frozenset({"lmm_chunk", "simpson_block", "simpson_null"})


def simpson_runs(config: dict) -> bool:
    """Whether the Simpson scan runs: ``simpson.enabled`` and a batch (the scan compares within batches)."""
    return bool(config["simpson"]["enabled"]) and bool(config.get("batch"))


def de_table_name(coefficient: str) -> str:
    """The file name stem of a coefficient's DE table.

    ``:`` of an interaction becomes ``__``; any other character that is not safe in a file name
    (``/`` of a level such as ``C57BL/6J``, spaces) becomes ``_``.
    """
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", coefficient.replace(":", "__"))


def de_table_coefficients(config: dict, samples=None) -> list[str]:
    """The coefficients that get a ``de/<coef>.tsv``, from the design alone (before any job).

    Every fixed-effect coefficient except the intercept and the batch's own contrasts
    (:func:`batchmix.de.de_coefficients`), from the config's sample sheet (read with
    :func:`batchmix.pipeline.validate.load_samples`) unless ``samples`` is given.
    """
    from batchmix.de import de_coefficients
    from batchmix.pipeline.validate import load_samples

    if samples is None:
        samples = load_samples(config)
    return de_coefficients(config["model"], samples, batch=config.get("batch"), levels=config.get("levels") or {})


def de_table_paths(config: dict, *, outdir: str = OUTDIR) -> list[str]:
    """The DE tables of a run, in coefficient order."""
    pattern = STAGE_OUTPUTS["de"]["tables"]
    return [path(pattern.replace("{coef}", de_table_name(c)), outdir=outdir) for c in de_table_coefficients(config)]


def batch_is_random(config: dict) -> bool:
    """Whether the config's batch column is a grouping factor of a random term in ``model``.

    Only then is there a batch-corrected expression (expression minus the batch BLUPs).
    """
    # imported here: the formula library is not needed by every job that asks where a file goes
    from batchmix.design import parse_formula

    return any(term.group == config["batch"] for term in parse_formula(config["model"]).random)


def kinship_input(config: dict) -> dict[str, str]:
    """``{"kinship": path}`` when the config gives a kinship matrix (``covariance: {kinship: path}``), else empty.

    The stages that read the sample sheet with the matrix attached (lmm_chunk, gather_lmm,
    uncertainty, design, report) take it as an input, so that Snakemake reruns them when it changes.
    """
    matrix = (config.get("covariance") or {}).get("kinship")
    return {"kinship": str(matrix)} if matrix else {}


def uncertainty_enabled(config: dict) -> bool:
    """Whether the optional uncertainty stage runs (a parametric bootstrap and/or the grid posterior)."""
    return config["uncertainty"]["bootstrap"] > 0 or bool(config["uncertainty"]["bayes"])


def matrix_suffix(config: dict) -> str:
    """The file suffix of the big matrices for ``config``'s ``outputs.matrices`` (``.parquet`` by default)."""
    fmt = (config.get("outputs") or {}).get("matrices", "parquet")
    suffixes = {"parquet": ".parquet", "tsv.gz": ".tsv.gz", "h5ad": ".h5ad"}
    if fmt not in suffixes:
        raise ValueError(f"outputs.matrices is {fmt!r}; use one of {', '.join(suffixes)}")
    return suffixes[fmt]


def chunk_count(config: dict, stage: str = "lmm") -> int:
    """The number of chunks (jobs) of ``stage`` (``lmm`` or ``simpson``) from the config's ``chunks``.

    ``chunks`` is an integer (the LMM's chunks; one job for every other stage) or a mapping per
    stage, ``{lmm: 8, simpson: 4}``; a stage it does not name runs as one job.
    """
    chunks = config.get("chunks", 4)
    if isinstance(chunks, dict) and stage in chunks:
        return int(chunks[stage])
    if stage == "simpson":
        # without chunks.simpson, the Simpson section's own key (its block-pair jobs)
        return int((config.get("simpson") or {}).get("jobs", 1))
    if isinstance(chunks, dict):
        return 4
    return int(chunks)


def scatteritems(n_chunks: int) -> list[str]:
    """The chunk names Snakemake's ``scattergather`` gives ``n_chunks`` chunks: ``1-of-n`` … ``n-of-n``."""
    return [f"{i}-of-{n_chunks}" for i in range(1, n_chunks + 1)]


def path(relative: str, *, outdir: str = OUTDIR, config: dict | None = None) -> str:
    """``relative`` under ``outdir``, joined with ``/``; ``{matrix}`` becomes the matrix suffix of ``config``."""
    if "{matrix}" in relative:
        relative = relative.replace("{matrix}", matrix_suffix(config or {}))
    return f"{str(outdir).rstrip('/')}/{relative}"


def chunk_path(key: str, *, outdir: str = OUTDIR, scatteritem: str = "{scatteritem}") -> str:
    """The file ``key`` (``genes``, ``fits``, ``blups``, ``fixed_vcov``, ``corrected``) of one LMM chunk."""
    return path(CHUNK_OUTPUTS[key], outdir=outdir).replace("{scatteritem}", scatteritem)


def stage_outputs(
    stage: str, config: dict, *, outdir: str = OUTDIR, scatteritem: str = "{scatteritem}", n_chunks: int | None = None
) -> dict[str, str | list[str]]:
    """The output files of ``stage`` for ``config``, by name.

    Parameters
    ----------
    stage : str
        A stage of :data:`STAGE_OUTPUTS`.
    config : dict
        The workflow config with defaults filled in.
    outdir : str
        The output directory.
    scatteritem : str
        The chunk (``i-of-n``) of ``lmm_chunk``; by default Snakemake's wildcard.
    n_chunks : int, optional
        For ``split_genes``: the number of chunks, giving ``chunks`` as a list of paths; by default
        ``chunks`` is the pattern with the wildcard.

    Returns
    -------
    dict
        Name to path; ``corrected`` only when the batch is a random factor.
    """
    if stage not in STAGE_OUTPUTS:
        raise KeyError(f"unknown stage {stage!r}; the stages are {', '.join(STAGE_OUTPUTS)}")
    random_batch = batch_is_random(config)
    out: dict[str, str | list[str]] = {}
    for key, relative in STAGE_OUTPUTS[stage].items():
        if key == "corrected" and not random_batch:
            continue
        out[key] = path(relative, outdir=outdir, config=config).replace("{scatteritem}", scatteritem)
    if stage == "de":
        out["tables"] = de_table_paths(config, outdir=outdir)
    if stage == "split_genes" and n_chunks is not None:
        out["chunks"] = [chunk_path("genes", outdir=outdir, scatteritem=s) for s in scatteritems(n_chunks)]
    return out


def stage_inputs(
    stage: str,
    config: dict,
    *,
    outdir: str = OUTDIR,
    scatteritem: str = "{scatteritem}",
    n_chunks: int | None = None,
    vst_outdir: str | None = None,
    simpson_outdir: str | None = None,
) -> dict[str, str | list[str]]:
    """The input files of ``stage`` for ``config``, by name (the config's own files included).

    ``gather_lmm`` takes every chunk's files as lists, which needs ``n_chunks``; the Snakemake rule
    builds those lists with ``gather.lmm`` from :func:`chunk_path` instead. ``report`` takes
    :func:`report_inputs`. ``vst_outdir`` / ``simpson_outdir``: where the stabilise / Simpson outputs
    are, when not under ``outdir`` (jobs shared by several analyses, :mod:`batchmix.analyses`).
    """
    vst = STAGE_OUTPUTS["stabilise"]
    vst_outdir = vst_outdir or outdir
    status = path(vst["gene_status"], outdir=vst_outdir)
    expression = path(vst["expression"], outdir=vst_outdir, config=config)
    if stage in ("validate", "stabilise"):
        return {"expression": config["expression"], "samples": config["samples"]}
    if stage == "run_record":
        # the record hashes the files the config names; after the report, so that whenever a job of
        # the analysis runs again its record is written again (config, versions and command of that run)
        return {
            "expression": config["expression"],
            "samples": config["samples"],
            **kinship_input(config),
            "report": path(STAGE_OUTPUTS["report"]["html"], outdir=outdir),
        }
    if stage == "split_genes":
        return {"gene_status": status}
    if stage == "lmm_chunk":
        return {
            "genes": chunk_path("genes", outdir=outdir, scatteritem=scatteritem),
            "expression": expression,
            "gene_status": status,
            "samples": config["samples"],
            **kinship_input(config),
        }
    if stage == "gather_lmm":
        if n_chunks is None:
            raise ValueError("gather_lmm's inputs are per chunk: give n_chunks")
        items = scatteritems(n_chunks)
        keys = ["fits", "blups", "fixed_vcov"] + (["corrected"] if batch_is_random(config) else [])
        inputs: dict[str, str | list[str]] = {
            key: [chunk_path(key, outdir=outdir, scatteritem=s) for s in items] for key in keys
        }
        inputs.setdefault("corrected", [])
        inputs.update({"gene_status": status, "samples": config["samples"], **kinship_input(config)})
        return inputs
    if stage in ("simpson", "simpson_prepare"):
        # vst/info.json records the trend that gives the stabilised value of a zero count
        info = path(vst["info"], outdir=vst_outdir)
        return {"expression": expression, "gene_status": status, "samples": config["samples"], "vst_info": info}
    if stage in ("simpson_block", "simpson_null"):
        # the prepared data only (simpson_prepare): the config holds every setting the jobs use
        prepared = path(STAGE_OUTPUTS["simpson_prepare"]["prepared"], outdir=simpson_outdir or outdir)
        return {"prepared": prepared}
    if stage == "uncertainty":
        return {
            "expression": expression,
            "gene_status": status,
            "gene_fits": path(STAGE_OUTPUTS["gather_lmm"]["gene_fits"], outdir=outdir),
            "samples": config["samples"],
            **kinship_input(config),
        }
    if stage == "design":
        return {"expression": config["expression"], "samples": config["samples"], **kinship_input(config)}
    lmm_out = STAGE_OUTPUTS["gather_lmm"]
    if stage == "de":
        return {
            "gene_fits": path(lmm_out["gene_fits"], outdir=outdir),
            "expression": expression,
            "samples": config["samples"],
            "model": path(lmm_out["model"], outdir=outdir),
        }
    if stage == "diagnostics":
        inputs = {"expression": expression, "gene_status": status, "samples": config["samples"]}
        if batch_is_random(config):
            inputs["corrected"] = path(lmm_out["corrected"], outdir=outdir)
        return inputs
    if stage == "summary":
        return {
            "design": path(STAGE_OUTPUTS["design"]["design"], outdir=outdir),
            "gene_fits": path(lmm_out["gene_fits"], outdir=outdir),
            "model": path(lmm_out["model"], outdir=outdir),
            "pca": path(STAGE_OUTPUTS["diagnostics"]["pca"], outdir=outdir),
            "de_summary": path(STAGE_OUTPUTS["de"]["summary"], outdir=outdir),
        }
    if stage == "report":
        return report_inputs(config, outdir=outdir, vst_outdir=vst_outdir, simpson_outdir=simpson_outdir)
    raise KeyError(f"unknown stage {stage!r}; the stages are {', '.join(STAGE_OUTPUTS)}")


def simpson_job_path(key: str, *, outdir: str = OUTDIR, scatteritem: str = "{scatteritem}") -> str:
    """The file ``key`` (``candidates`` or ``null``) of one Simpson job ``i-of-n``."""
    return path(SIMPSON_JOB_OUTPUTS[key], outdir=outdir).replace("{scatteritem}", scatteritem)


def simpson_gather_inputs(config: dict, *, outdir: str = OUTDIR) -> dict[str, list[str] | str]:
    """The per-job files the ``simpson`` gather of the scattered workflow reads, by name.

    ``candidates``: one file per block-pair job (``simpson.jobs``); ``null``: one per sign-flip
    replicate (``simpson.n_replicates``; none unless ``simpson.calibration`` is ``sign_flip``);
    ``prepared``: the folder of ``simpson_prepare`` (one), whose data the gather reads instead of
    preparing it again.  Without them (the ``batchmix simpson`` command) the stage prepares, scans
    and calibrates in one job.
    """
    scfg = config["simpson"]
    blocks = [
        simpson_job_path("candidates", outdir=outdir, scatteritem=s)
        for s in scatteritems(chunk_count(config, "simpson"))
    ]
    nulls = []
    if scfg["calibration"] == "sign_flip":
        replicates = scatteritems(int(scfg["n_replicates"]))
        nulls = [simpson_job_path("null", outdir=outdir, scatteritem=s) for s in replicates]
    prepared = path(STAGE_OUTPUTS["simpson_prepare"]["prepared"], outdir=outdir)
    return {"candidates": blocks, "null": nulls, "prepared": prepared}


def log_path(stage: str, *, outdir: str = OUTDIR, scatteritem: str = "{scatteritem}") -> str:
    """The log file of one job of ``stage`` (``logs/<stage>.log``; per chunk ``logs/<stage>/<i-of-n>.log``)."""
    if stage in _PER_CHUNK:
        return path(f"logs/{stage}/{scatteritem}.log", outdir=outdir)
    return path(f"logs/{stage}.log", outdir=outdir)


def warnings_path(stage: str, *, outdir: str = OUTDIR, scatteritem: str = "{scatteritem}") -> str:
    """The machine-readable run record of one job of ``stage``: its warnings, counts and time (JSON).

    ``logs/<stage>.warnings.json``; per chunk ``logs/lmm_chunk/<i-of-n>.warnings.json``. Read them
    all with :func:`batchmix.pipeline.logs.read_run_records`.
    """
    return log_path(stage, outdir=outdir, scatteritem=scatteritem).removesuffix(".log") + ".warnings.json"


def final_outputs(
    config: dict, *, outdir: str = OUTDIR, vst_outdir: str | None = None, simpson_outdir: str | None = None
) -> list[str]:
    """The files a whole run is asked for (Snakemake's ``rule all``); the others follow from them."""
    vst, lmm = STAGE_OUTPUTS["stabilise"], STAGE_OUTPUTS["gather_lmm"]
    vst_outdir = vst_outdir or outdir
    outputs = [
        path(vst["expression"], outdir=vst_outdir, config=config),
        path(vst["size_factors"], outdir=vst_outdir),
        path(lmm["gene_fits"], outdir=outdir),
        path(lmm["blups"], outdir=outdir),
        path(STAGE_OUTPUTS["report"]["html"], outdir=outdir),
    ]
    if batch_is_random(config):
        outputs.append(path(lmm["corrected"], outdir=outdir, config=config))
    outputs += [
        path(STAGE_OUTPUTS["design"]["design"], outdir=outdir),
        path(STAGE_OUTPUTS["summary"]["summary"], outdir=outdir),
        # the de rule writes the tables with it (their names need the sample sheet: stage_outputs)
        path(STAGE_OUTPUTS["de"]["summary"], outdir=outdir),
    ]
    if simpson_runs(config):
        outputs.append(path(STAGE_OUTPUTS["simpson"]["reversals"], outdir=simpson_outdir or outdir))
    if uncertainty_enabled(config):
        unc = STAGE_OUTPUTS["uncertainty"]
        outputs += [path(unc["bootstrap"], outdir=outdir), path(unc["posterior"], outdir=outdir)]
    outputs.append(path(STAGE_OUTPUTS["run_record"]["record"], outdir=outdir))
    return outputs


def report_inputs(
    config: dict, *, outdir: str = OUTDIR, vst_outdir: str | None = None, simpson_outdir: str | None = None
) -> dict[str, str]:
    """Everything the report summarises, by the keys :func:`batchmix.report.build_report` reads.

    Always: ``vst_info``, ``size_factors``, ``gene_status``, ``mean_sd``, ``vst_expression``,
    ``gene_fits``, ``blups``, ``fixed_vcov``, ``model``, ``samples``, ``expression``; with a random
    batch ``corrected``; with ``simpson.enabled`` ``reversals``, ``simpson_summary``,
    ``simpson_figure``; with the uncertainty stage ``uncertainty_summary``, ``uncertainty_bootstrap``,
    ``uncertainty_posterior``, ``uncertainty_figures`` (a directory);
    with ``covariance: {kinship: path}`` ``kinship`` (the matrix, read with the sheet). Also always ``design``,
    ``summary``, ``pca``, ``pca_scores`` and ``de_summary`` (the DE tables are read next to it, named by
    :func:`de_table_name`, as the de rule writes them with it).
    """
    vst, lmm = STAGE_OUTPUTS["stabilise"], STAGE_OUTPUTS["gather_lmm"]
    simpson, unc = STAGE_OUTPUTS["simpson"], STAGE_OUTPUTS["uncertainty"]

    def at(relative: str, root: str = outdir) -> str:
        return path(relative, outdir=root, config=config)

    vst_root = vst_outdir or outdir
    inputs = {
        "vst_info": at(vst["info"], vst_root),
        "size_factors": at(vst["size_factors"], vst_root),
        "gene_status": at(vst["gene_status"], vst_root),
        "mean_sd": at(vst["mean_sd"], vst_root),
        "vst_expression": at(vst["expression"], vst_root),
        "gene_fits": at(lmm["gene_fits"]),
        "blups": at(lmm["blups"]),
        "fixed_vcov": at(lmm["fixed_vcov"]),
        "model": at(lmm["model"]),
        "samples": config["samples"],
        "expression": config["expression"],
        **kinship_input(config),
    }
    if batch_is_random(config):
        inputs["corrected"] = at(lmm["corrected"])
    inputs["design"] = at(STAGE_OUTPUTS["design"]["design"])
    inputs["summary"] = at(STAGE_OUTPUTS["summary"]["summary"])
    inputs["pca"] = at(STAGE_OUTPUTS["diagnostics"]["pca"])
    inputs["pca_scores"] = at(STAGE_OUTPUTS["diagnostics"]["scores"])
    inputs["de_summary"] = at(STAGE_OUTPUTS["de"]["summary"])
    if simpson_runs(config):
        simpson_root = simpson_outdir or outdir
        inputs["reversals"] = at(simpson["reversals"], simpson_root)
        inputs["simpson_summary"] = at(simpson["summary"], simpson_root)
        inputs["simpson_figure"] = at(simpson["figure"], simpson_root)
    if uncertainty_enabled(config):
        inputs["uncertainty_summary"] = at(unc["summary"])
        inputs["uncertainty_bootstrap"] = at(unc["bootstrap"])
        inputs["uncertainty_posterior"] = at(unc["posterior"])
        inputs["uncertainty_figures"] = at(unc["figures"])
    return inputs


# Outputs of the comparison of a config's analyses (the compare and index stages), relative to the
# results folder (not to an analysis's folder).
COMPARE_OUTPUTS = {
    "information_criteria": "compare/information_criteria.tsv",
    "best_models": "compare/best_models.tsv",
    "de_agreement": "compare/de_agreement.tsv",
    "summary": "compare/summary.json",
    "index": "index.html",
}


def compare_outputs(outdir: str = OUTDIR, stage: str | None = None) -> dict[str, str]:
    """The files of the comparison under ``outdir``, by name (:data:`COMPARE_OUTPUTS`).

    ``stage="compare"``: what the ``compare`` stage writes (all but ``index``); ``stage="index"``:
    what the ``index`` stage writes (``index``, ``results/index.html``); None: all.
    """
    if stage not in (None, "compare", "index"):
        raise KeyError(f"compare_outputs: stage is compare, index or None, not {stage!r}")
    keys = [k for k in COMPARE_OUTPUTS if stage is None or (k == "index") == (stage == "index")]
    return {key: path(COMPARE_OUTPUTS[key], outdir=outdir) for key in keys}


def comparison_key(analysis) -> tuple[str, str, str]:
    """What makes analyses comparable gene by gene: the same stabilise job, expression and sample sheet.

    ``analysis``: a :class:`batchmix.analyses.Analysis`. Analyses with equal keys are on the same data
    and genes; the ``compare`` stage compares their models.
    """
    cfg = analysis.config
    return (str(analysis.stabilise_outdir), str(cfg["expression"]), str(cfg["samples"]))


def compare_inputs(config: dict, outdir: str = OUTDIR) -> dict[str, list[str]]:
    """Every file of the analyses that the ``compare`` stage reads, by kind (lists, no duplicates).

    Parameters
    ----------
    config : dict
        The whole config, with or without ``analyses:`` (:func:`batchmix.analyses.resolve_analyses`).
    outdir : str
        The results folder.

    Returns
    -------
    dict of str to list of str
        Of every analysis: ``summary`` (its ``summary.json``), ``de_summary`` and ``simpson_summary``
        (when its Simpson scan runs); of the analyses compared with another (same
        :func:`comparison_key`): ``expression`` (the stabilised matrix of their shared stabilise job),
        ``samples`` (the sample sheets), ``gene_fits`` and ``de_tables`` (every ``de/<coef>.tsv``). In
        the analyses' order.
    """
    from batchmix.analyses import resolve_analyses

    kinds = ("expression", "samples", "gene_fits", "summary", "de_summary", "de_tables", "simpson_summary")
    inputs: dict[str, list[str]] = {kind: [] for kind in kinds}

    def add(kind: str, value: str) -> None:
        if value not in inputs[kind]:
            inputs[kind].append(value)

    analyses = resolve_analyses(config, outdir=outdir)
    keys = [comparison_key(a) for a in analyses]
    for analysis, key in zip(analyses, keys):
        cfg, out = analysis.config, analysis.outdir
        if keys.count(key) > 1:
            expression = path(STAGE_OUTPUTS["stabilise"]["expression"], outdir=analysis.stabilise_outdir, config=cfg)
            add("expression", expression)
            add("samples", str(cfg["samples"]))
            add("gene_fits", path(STAGE_OUTPUTS["gather_lmm"]["gene_fits"], outdir=out))
            for table in de_table_paths(cfg, outdir=out):
                add("de_tables", table)
        add("summary", path(STAGE_OUTPUTS["summary"]["summary"], outdir=out))
        add("de_summary", path(STAGE_OUTPUTS["de"]["summary"], outdir=out))
        if simpson_runs(cfg):
            add("simpson_summary", path(STAGE_OUTPUTS["simpson"]["summary"], outdir=analysis.simpson_outdir))
    return inputs


def index_inputs(outdir: str = OUTDIR, config: dict | None = None) -> dict[str, str | list[str]]:
    """The files the ``index`` stage renders: the ``compare`` stage's outputs, by name.

    With ``config`` also ``reports``: every analysis's ``report.html``, which the index links to (the
    stage does not read them; as inputs they make the workflow write them before the index).
    """
    inputs: dict[str, str | list[str]] = dict(compare_outputs(outdir, stage="compare"))
    if config is not None:
        from batchmix.analyses import resolve_analyses

        inputs["reports"] = [
            path(STAGE_OUTPUTS["report"]["html"], outdir=a.outdir) for a in resolve_analyses(config, outdir=outdir)
        ]
    return inputs
