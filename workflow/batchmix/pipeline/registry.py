"""One registry of the workflow's stages, each with one signature, its logging and its timing.

Every stage is a function ``run(config, inputs, outputs, params) -> counts``:

- ``config``: the workflow config with defaults filled in;
- ``inputs`` / ``outputs``: file paths by name (a list of paths for per-chunk files), as
  :func:`batchmix.pipeline.paths.stage_inputs` / :func:`~batchmix.pipeline.paths.stage_outputs` name them;
- ``params``: job settings that are not files (``threads``; the run record's ``analysis`` and ``command``);
- it returns counts for the log (``{"genes": 200}``).

:func:`run_stage` runs one job of a stage with its log file, console logging, timing and JSON run
record (:mod:`batchmix.pipeline.logs`); the Snakemake scripts (:func:`run_snakemake_job`) and the
``batchmix`` command line both go through it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from batchmix.io import InputError
from batchmix.pipeline.logs import stage_logging

__all__ = ["Stage", "STAGES", "COMPOSITES", "get_stage", "job_config", "run_stage", "run_snakemake_job"]

Paths = dict[str, "str | list[str]"]
StageFunction = Callable[[dict, Paths, Paths, dict], "dict | None"]


def uncertainty_job(config: dict, inputs: Paths, outputs: Paths, params: dict) -> dict:
    """The uncertainty stage (:func:`batchmix.pipeline.uncertainty.uncertainty_stage`), registry signature."""
    # Imported here: the stage's module pulls in the bootstrap and its figures, which no other
    # stage needs.
    from batchmix.pipeline.uncertainty import uncertainty_stage

    uncertainty_stage(
        config,
        inputs["expression"],
        inputs["gene_status"],
        inputs["gene_fits"],
        inputs["samples"],
        outputs,
        threads=int(params.get("threads", 1)),
    )
    return {}


def report_job(config: dict, inputs: Paths, outputs: Paths, params: dict) -> dict:
    """The report stage (:func:`batchmix.report.build_report`) under the registry's signature."""
    from batchmix.report import build_report

    build_report(config, inputs, outputs["html"], outputs["figures"])
    return {}


@dataclass(frozen=True)
class Stage:
    """One stage of the workflow.

    Attributes
    ----------
    name : str
        The stage's name: its Snakemake rule, its ``batchmix`` sub-command, its log file.
    target : callable or str
        ``run(config, inputs, outputs, params) -> counts``, or where it lives as
        ``"module:function"``, imported when the stage runs (:attr:`run`).
    summary : str
        One line for ``batchmix --help``.
    per_chunk : bool
        One job per LMM chunk (``{scatteritem}``) rather than one job per run.
    whole_config : bool
        The stage takes the whole config with its ``analyses:`` (and its paths from
        :func:`~batchmix.pipeline.paths.compare_inputs` / :func:`~batchmix.pipeline.paths.compare_outputs`)
        rather than one analysis's config.
    """

    name: str
    target: StageFunction | str
    summary: str
    per_chunk: bool = False
    whole_config: bool = False

    @property
    def run(self) -> StageFunction:
        """The stage's function, its module imported on first use.

        Every job is a fresh interpreter that runs one stage: importing only that stage's module
        (not the Simpson scan, the report's plotting or the DE code for a stabilise job) spares each
        job a part of its start-up.
        """
        if callable(self.target):
            return self.target
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


# The stage modules' package: each stage names its function as "module:function".
_P = "batchmix.pipeline"

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in [
        Stage(
            "validate", f"{_P}.validate:validate_stage", "check the config, the expression table and the sample sheet"
        ),
        Stage(
            "stabilise",
            f"{_P}.stabilise:stabilise_stage",
            "size factors, low-count filter and variance-stabilising transformation",
        ),
        Stage("split_genes", f"{_P}.lmm:split_genes_stage", "cut the genes into chunks (gene ranges) for the LMM"),
        Stage(
            "lmm_chunk", f"{_P}.lmm:lmm_chunk_stage", "per-gene linear mixed models on one gene chunk", per_chunk=True
        ),
        Stage(
            "gather_lmm",
            f"{_P}.lmm:gather_lmm_stage",
            "gather the LMM chunks, moderate the variances, write gene fits, BLUPs, corrected expression",
        ),
        Stage("design", f"{_P}.design:design_stage", "the design check: crosstabs, Cramér's V, random terms, findings"),
        Stage(
            "de",
            f"{_P}.de:de_stage",
            "differential expression per coefficient, with (mixed model) and without (OLS) batch",
        ),
        Stage(
            "diagnostics",
            f"{_P}.summary:diagnostics_stage",
            "PCA of the samples and the batch R² of the top components",
        ),
        Stage(
            "summary", f"{_P}.summary:summary_stage", "the verdict: batch effect, design, recommendation (summary.json)"
        ),
        Stage(
            "simpson_prepare",
            f"{_P}.simpson:simpson_prepare_stage",
            "Simpson scan: residualise the genes once for every block-pair job (simpson/prepared/)",
        ),
        Stage(
            "simpson_block",
            f"{_P}.simpson:simpson_block_stage",
            "Simpson scan: the candidate pairs of one share of the block pairs (job i-of-n)",
            per_chunk=True,
        ),
        Stage(
            "simpson_null",
            f"{_P}.simpson:simpson_null_stage",
            "Simpson calibration: the pairs flagged on one sign-flip replicate (job r-of-n)",
            per_chunk=True,
        ),
        Stage(
            "simpson",
            f"{_P}.simpson:simpson_stage",
            "scan all gene pairs for Simpson's-paradox reversals (gathers the jobs)",
        ),
        Stage(
            "uncertainty",
            f"{_P}.registry:uncertainty_job",
            "parametric bootstrap and exact grid posterior for every gene",
        ),
        Stage("report", f"{_P}.registry:report_job", "the self-contained HTML report"),
        Stage(
            "compare",
            f"{_P}.compare:compare_stage",
            "compare the config's analyses: per-gene AIC/BIC by ML, best models, DE agreement (results/compare/)",
            whole_config=True,
        ),
        Stage(
            "index",
            f"{_P}.compare:index_stage",
            "the self-contained index page of the analyses (results/index.html)",
            whole_config=True,
        ),
        Stage(
            "run_record",
            f"{_P}.record:run_record_stage",
            "the run record (run.json): resolved config, input MD5s, versions",
        ),
    ]
}

# Sequences of stages the command line offers under one name.
COMPOSITES: dict[str, tuple[str, ...]] = {
    "lmm": ("split_genes", "lmm_chunk", "gather_lmm"),
}


def get_stage(name: str) -> Stage:
    """The stage called ``name``; a ``KeyError`` lists the stages."""
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; the stages are {', '.join(STAGES)}") from None


def run_stage(
    name: str,
    config: dict,
    inputs: Paths,
    outputs: Paths,
    params: dict | None = None,
    *,
    log_path: str | None = None,
    record_path: str | None = None,
    job: str | None = None,
    console: bool = True,
) -> dict:
    """Run one job of a stage with its logging, timing and run record.

    Parameters
    ----------
    name : str
        The stage (a key of :data:`STAGES`).
    config, inputs, outputs, params
        The stage's arguments (see the module's docstring).
    log_path, record_path : str, optional
        The job's log file and JSON run record (:func:`batchmix.pipeline.paths.log_path`,
        :func:`~batchmix.pipeline.paths.warnings_path`); none: not written.
    job : str, optional
        The job within the stage (an LMM chunk's ``i-of-n``), for the log.
    console : bool
        Whether to log to stderr too.

    Returns
    -------
    dict
        The stage's counts.
    """
    stage = get_stage(name)
    run = stage.run  # its module imported before the clock starts: the record times the stage's work
    with stage_logging(name, log_path=log_path, record_path=record_path, job=job, console=console) as record:
        counts = run(config, inputs, outputs, dict(params or {})) or {}
        record.counts = {k: v for k, v in counts.items() if isinstance(v, (int, float, str))}
    return counts


def _as_paths(named) -> Paths:
    """Snakemake's named inputs/outputs/logs as plain strings, lists kept as lists."""
    return {name: str(value) if isinstance(value, str) else [str(v) for v in value] for name, value in named.items()}


def job_config(config: dict, analysis: str | None, shared: str | None = None) -> dict:
    """The config a job runs with: the run's config, or the merged config of one of its analyses.

    With ``analyses:`` (:mod:`batchmix.analyses`) each rule passes its analysis's name as the
    parameter ``analysis``, and a job that analyses share passes its shared folder's name as ``shared``
    (every analysis that uses the folder has the settings the job depends on); without, the run's
    config (defaults filled in) is the analysis.
    """
    if analysis is None and shared is None:
        return config
    from batchmix.analyses import resolve_analyses

    for resolved in resolve_analyses(config):
        folders = (resolved.stabilise_outdir, resolved.simpson_outdir)
        if resolved.name == analysis or shared in {folder.rsplit("/", 1)[-1] for folder in folders}:
            return resolved.config
    raise KeyError(f"no analysis {analysis or shared!r} in the config's analyses")


def _named(values) -> dict:
    """The named entries of a Snakemake ``params`` (none when the job has no params)."""
    return dict(values.items()) if values is not None and hasattr(values, "items") else {}


def run_snakemake_job(smk, name: str) -> dict:
    """Run the stage ``name`` for a Snakemake ``script:`` job (the adapters in ``workflow/scripts/``).

    Parameters
    ----------
    smk
        The ``snakemake`` object Snakemake gives a script (used through its attributes only: the
        package never imports Snakemake). Its named ``log`` entries ``log`` and ``record`` are the job's
        log file and run record; its named ``params`` are passed to the stage with ``threads``.
    name : str
        The stage.
    """
    logs = _as_paths(smk.log)
    try:
        return run_stage(
            name,
            job_config(dict(smk.config), getattr(smk.params, "analysis", None), getattr(smk.params, "shared", None)),
            _as_paths(smk.input),
            _as_paths(smk.output),
            {**_named(getattr(smk, "params", None)), "threads": smk.threads},
            log_path=logs.get("log"),
            record_path=logs.get("record"),
            job=dict(smk.wildcards.items()).get("scatteritem"),
        )
    except InputError as err:
        # The message names the file and what to do (the job log has it too); a traceback would
        # only bury it in Snakemake's output.
        raise SystemExit(f"batchmix {name}: {err}") from None
