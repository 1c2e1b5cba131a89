"""Every output path of the workflow, defined once, relative to an output directory.

The Snakemake rules (``workflow/rules/common.smk``), the ``batchmix`` command line and the
report's inputs all take their paths from here, so a file moves in one place. Paths are plain
strings joined with ``/`` (``"results/vst/expression.tsv.gz"`` for the default ``outdir``), as
Snakemake wants them; LMM chunk paths keep Snakemake's ``{scatteritem}`` wildcard (``i-of-n``)
unless a chunk is named.
"""

from __future__ import annotations

from batchmix.design import parse_formula

__all__ = [
    "OUTDIR",
    "STAGE_OUTPUTS",
    "CHUNK_OUTPUTS",
    "batch_is_random",
    "uncertainty_enabled",
    "scatteritems",
    "path",
    "chunk_path",
    "stage_outputs",
    "stage_inputs",
    "log_path",
    "warnings_path",
    "final_outputs",
    "report_inputs",
    "SIMPSON_JOB_OUTPUTS",
    "simpson_job_path",
    "simpson_gather_inputs",
]

# The default output directory, relative to the working directory of a run.
OUTDIR = "results"

# Output files of one LMM chunk, relative to the outdir; {scatteritem} is ``i-of-n``.
CHUNK_OUTPUTS = {
    "expression": "lmm/chunks/{scatteritem}.expression.tsv.gz",
    "fits": "lmm/chunks/{scatteritem}.fits.tsv",
    "blups": "lmm/chunks/{scatteritem}.blups.tsv",
    "fixed_vcov": "lmm/chunks/{scatteritem}.fixed_vcov.tsv",
    "corrected": "lmm/chunks/{scatteritem}.corrected.tsv.gz",
}

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
        "expression": "vst/expression.tsv.gz",
        "size_factors": "vst/size_factors.tsv",
        "gene_status": "vst/gene_status.tsv",
        "mean_sd": "vst/mean_sd.tsv",
        "info": "vst/info.json",
    },
    "split_genes": {"chunks": CHUNK_OUTPUTS["expression"]},
    "lmm_chunk": {key: CHUNK_OUTPUTS[key] for key in ("fits", "blups", "fixed_vcov", "corrected")},
    "gather_lmm": {
        "gene_fits": "lmm/gene_fits.tsv",
        "blups": "lmm/blups.tsv",
        "fixed_vcov": "lmm/fixed_vcov.tsv",
        "model": "lmm/model.json",
        "corrected": "corrected/expression.tsv.gz",
    },
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
        "summary": "uncertainty/summary.json",
        "figures": "uncertainty/figures",
    },
    "report": {"html": "report.html", "figures": "figures"},
}

# Stages with one job per LMM chunk: their logs are per chunk.
_PER_CHUNK = frozenset({"lmm_chunk", "simpson_block", "simpson_null"})


def batch_is_random(config: dict) -> bool:
    """Whether the config's batch column is a grouping factor of a random term in ``model``.

    Only then is there a batch-corrected expression (expression minus the batch BLUPs).
    """
    return any(term.group == config["batch"] for term in parse_formula(config["model"]).random)


def uncertainty_enabled(config: dict) -> bool:
    """Whether the optional uncertainty stage runs (a parametric bootstrap and/or the grid posterior)."""
    return config["uncertainty"]["bootstrap"] > 0 or bool(config["uncertainty"]["bayes"])


def scatteritems(n_chunks: int) -> list[str]:
    """The chunk names Snakemake's ``scattergather`` gives ``n_chunks`` chunks: ``1-of-n`` … ``n-of-n``."""
    return [f"{i}-of-{n_chunks}" for i in range(1, n_chunks + 1)]


def path(relative: str, *, outdir: str = OUTDIR) -> str:
    """``relative`` under ``outdir``, joined with ``/``."""
    return f"{str(outdir).rstrip('/')}/{relative}"


def chunk_path(key: str, *, outdir: str = OUTDIR, scatteritem: str = "{scatteritem}") -> str:
    """The file ``key`` (``expression``, ``fits``, ``blups``, ``fixed_vcov``, ``corrected``) of one LMM chunk."""
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
        out[key] = path(relative, outdir=outdir).replace("{scatteritem}", scatteritem)
    if stage == "split_genes" and n_chunks is not None:
        out["chunks"] = [chunk_path("expression", outdir=outdir, scatteritem=s) for s in scatteritems(n_chunks)]
    return out


def stage_inputs(
    stage: str, config: dict, *, outdir: str = OUTDIR, scatteritem: str = "{scatteritem}", n_chunks: int | None = None
) -> dict[str, str | list[str]]:
    """The input files of ``stage`` for ``config``, by name (the config's own files included).

    ``gather_lmm`` takes every chunk's files as lists, which needs ``n_chunks``; the Snakemake rule
    builds those lists with ``gather.lmm`` from :func:`chunk_path` instead. ``report`` takes
    :func:`report_inputs`.
    """
    vst = STAGE_OUTPUTS["stabilise"]
    status = path(vst["gene_status"], outdir=outdir)
    expression = path(vst["expression"], outdir=outdir)
    if stage in ("validate", "stabilise"):
        return {"expression": config["expression"], "samples": config["samples"]}
    if stage == "split_genes":
        return {"expression": expression, "gene_status": status}
    if stage == "lmm_chunk":
        return {
            "expression": chunk_path("expression", outdir=outdir, scatteritem=scatteritem),
            "gene_status": status,
            "samples": config["samples"],
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
        inputs.update({"gene_status": status, "samples": config["samples"]})
        return inputs
    if stage in ("simpson", "simpson_block", "simpson_null"):
        # vst/info.json records the trend that gives the stabilised value of a zero count
        info = path(vst["info"], outdir=outdir)
        return {"expression": expression, "gene_status": status, "samples": config["samples"], "vst_info": info}
    if stage == "uncertainty":
        return {
            "expression": expression,
            "gene_status": status,
            "gene_fits": path(STAGE_OUTPUTS["gather_lmm"]["gene_fits"], outdir=outdir),
            "samples": config["samples"],
        }
    if stage == "report":
        return report_inputs(config, outdir=outdir)
    raise KeyError(f"unknown stage {stage!r}; the stages are {', '.join(STAGE_OUTPUTS)}")


def simpson_job_path(key: str, *, outdir: str = OUTDIR, scatteritem: str = "{scatteritem}") -> str:
    """The file ``key`` (``candidates`` or ``null``) of one Simpson job ``i-of-n``."""
    return path(SIMPSON_JOB_OUTPUTS[key], outdir=outdir).replace("{scatteritem}", scatteritem)


def simpson_gather_inputs(config: dict, *, outdir: str = OUTDIR) -> dict[str, list[str]]:
    """The per-job files the ``simpson`` gather of the scattered workflow reads, by name.

    ``candidates``: one file per block-pair job (``simpson.jobs``); ``null``: one per sign-flip
    replicate (``simpson.n_replicates``; none unless ``simpson.calibration`` is ``sign_flip``).
    Without them (the ``batchmix simpson`` command) the stage scans and calibrates in one job.
    """
    scfg = config["simpson"]
    blocks = [simpson_job_path("candidates", outdir=outdir, scatteritem=s) for s in scatteritems(int(scfg["jobs"]))]
    nulls = []
    if scfg["calibration"] == "sign_flip":
        replicates = scatteritems(int(scfg["n_replicates"]))
        nulls = [simpson_job_path("null", outdir=outdir, scatteritem=s) for s in replicates]
    return {"candidates": blocks, "null": nulls}


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


def final_outputs(config: dict, *, outdir: str = OUTDIR) -> list[str]:
    """The files a whole run is asked for (Snakemake's ``rule all``); the others follow from them."""
    vst, lmm = STAGE_OUTPUTS["stabilise"], STAGE_OUTPUTS["gather_lmm"]
    outputs = [
        path(vst["expression"], outdir=outdir),
        path(vst["size_factors"], outdir=outdir),
        path(lmm["gene_fits"], outdir=outdir),
        path(lmm["blups"], outdir=outdir),
        path(STAGE_OUTPUTS["report"]["html"], outdir=outdir),
    ]
    if batch_is_random(config):
        outputs.append(path(lmm["corrected"], outdir=outdir))
    if config["simpson"]["enabled"]:
        outputs.append(path(STAGE_OUTPUTS["simpson"]["reversals"], outdir=outdir))
    if uncertainty_enabled(config):
        unc = STAGE_OUTPUTS["uncertainty"]
        outputs += [path(unc["bootstrap"], outdir=outdir), path(unc["posterior"], outdir=outdir)]
    return outputs


def report_inputs(config: dict, *, outdir: str = OUTDIR) -> dict[str, str]:
    """Everything the report summarises, by the keys :func:`batchmix.report.build_report` reads.

    Always: ``vst_info``, ``size_factors``, ``gene_status``, ``mean_sd``, ``vst_expression``,
    ``gene_fits``, ``blups``, ``fixed_vcov``, ``model``, ``samples``, ``expression``; with a random
    batch ``corrected``; with ``simpson.enabled`` ``reversals``, ``simpson_summary``,
    ``simpson_figure``; with the uncertainty stage ``uncertainty_summary``, ``uncertainty_bootstrap``,
    ``uncertainty_posterior``, ``uncertainty_figures`` (a directory).
    """
    vst, lmm = STAGE_OUTPUTS["stabilise"], STAGE_OUTPUTS["gather_lmm"]
    simpson, unc = STAGE_OUTPUTS["simpson"], STAGE_OUTPUTS["uncertainty"]

    def at(relative: str) -> str:
        return path(relative, outdir=outdir)

    inputs = {
        "vst_info": at(vst["info"]),
        "size_factors": at(vst["size_factors"]),
        "gene_status": at(vst["gene_status"]),
        "mean_sd": at(vst["mean_sd"]),
        "vst_expression": at(vst["expression"]),
        "gene_fits": at(lmm["gene_fits"]),
        "blups": at(lmm["blups"]),
        "fixed_vcov": at(lmm["fixed_vcov"]),
        "model": at(lmm["model"]),
        "samples": config["samples"],
        "expression": config["expression"],
    }
    if batch_is_random(config):
        inputs["corrected"] = at(lmm["corrected"])
    if config["simpson"]["enabled"]:
        inputs["reversals"] = at(simpson["reversals"])
        inputs["simpson_summary"] = at(simpson["summary"])
        inputs["simpson_figure"] = at(simpson["figure"])
    if uncertainty_enabled(config):
        inputs["uncertainty_summary"] = at(unc["summary"])
        inputs["uncertainty_bootstrap"] = at(unc["bootstrap"])
        inputs["uncertainty_posterior"] = at(unc["posterior"])
        inputs["uncertainty_figures"] = at(unc["figures"])
    return inputs
