# Shared set-up: config validation, input validation, the analyses of the config, and the paths of
# every rule, taken from batchmix.pipeline.paths (the one definition of every output path). batchmix
# is installed (`make venv`: pip install -e .; with --sdm conda: envs/batchmix.post-deploy.sh).
#
# A config is one analysis (written under results/), or several under `analyses:` (each under
# results/<name>/, batchmix.analyses): every rule is defined once per analysis, in a loop over
# ANALYSES; without `analyses:` its name is the stage's (stabilise, lmm_chunk, report, ...).
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from batchmix.analyses import has_analyses, resolve_analyses, stage_settings
from batchmix.config import check_config_columns
from batchmix.io import InputError
from batchmix.pipeline import paths
from batchmix.pipeline.validate import design_report, load_validated


# batchmix's own validation (the schema, plus the sheet columns that keys such as simpson.adjust_for
# name): an error prints the failing key, its value, what is allowed and the key's description,
# not the whole schema as snakemake.utils.validate does. With `analyses:`, every analysis is
# validated after its overrides are merged, and the message names the analysis.
try:
    ANALYSES = resolve_analyses(config, "config")
    if workflow.is_main_process:
        for _analysis in ANALYSES:
            check_config_columns(_analysis.config)
except InputError as err:
    raise WorkflowError(f"batchmix config validation failed:\n{err}") from None
MULTI = has_analyses(config)
if not MULTI:
    # one analysis: the config itself, with its defaults filled in (as the jobs read it)
    config.update(ANALYSES[0].config)

# Check the inputs once, in the main process, before any job runs: a bad table or sheet stops
# the run with a message naming the file, the row or column and what to do, and nothing is written.
# Jobs spawned on a cluster re-read the Snakefile and skip this.
if workflow.is_main_process:
    # the command that started the run, for each analysis's run record (run.json)
    os.environ.setdefault("BATCHMIX_COMMAND", shlex.join(sys.argv))
    for _analysis in ANALYSES:
        where = "" if _analysis.name is None else f" ({_analysis.label})"
        try:
            # the design check once: its errors stop the run, its warnings are said below
            _validated = load_validated(_analysis.config, check=False)
            _design = design_report(_analysis.config, _validated)
            _design.raise_on_errors(source=str(_analysis.config["samples"]))
        except InputError as err:
            raise WorkflowError(f"batchmix input validation failed{where}:\n{err}") from None
        # The design check's warnings (confounding, few batches, counts given as log) are said before
        # the run too; they are in design/design.json and the report.
        for _finding in _design.findings:
            if _finding.severity == "warning":
                print(
                    f"batchmix design check{where}: warning [{_finding.code}]: {_finding.message}",
                    file=sys.stderr,
                )


scattergather:
    lmm=paths.chunk_count(config, "lmm"),


wildcard_constraints:
    scatteritem=r"\d+-of-\d+",


# One stabilise job per distinct stabilise setting, one Simpson scan per distinct scan: analyses on
# the same data (and, for the scan, with the same simpson settings) share them.
STABILISE_JOBS = list({analysis.stabilise_outdir: analysis for analysis in ANALYSES}.values())
SIMPSON_JOBS = list(
    {a.simpson_outdir: a for a in ANALYSES if paths.simpson_runs(a.config)}.values()
)
# the stages whose jobs analyses share, and where each analysis finds them
SHARED_STAGES = {
    "stabilise": "stabilise_outdir",
    "simpson_prepare": "simpson_outdir",
    "simpson_block": "simpson_outdir",
    "simpson_null": "simpson_outdir",
    "simpson": "simpson_outdir",
}


def shared_rule(stage, analysis):
    """The name of a shared stage's rule (`stage`, or `stage_<key>`, the key of the shared folder)."""
    if analysis.name is None:
        return stage
    key = getattr(analysis, SHARED_STAGES[stage]).rsplit("-", 1)[-1]
    return f"{stage}_{key}"


def stage_outdir(stage, analysis):
    """Where the outputs of `stage` of `analysis` go: its folder, or the shared folder of a shared stage."""
    return getattr(analysis, SHARED_STAGES[stage]) if stage in SHARED_STAGES else analysis.outdir


def batch_is_random(analysis):
    """Whether the analysis's batch is a random grouping factor (then there is a corrected expression)."""
    return paths.batch_is_random(analysis.config)


def final_outputs():
    """Every file the run produces, for rule all."""
    outputs = []
    for analysis in ANALYSES:
        outputs += paths.final_outputs(
            analysis.config,
            outdir=analysis.outdir,
            vst_outdir=analysis.stabilise_outdir,
            simpson_outdir=analysis.simpson_outdir,
        )
    if MULTI:
        outputs += list(paths.compare_outputs().values())
    return outputs


def stage_inputs(stage, analysis):
    """The named inputs of a rule (not for gather_lmm, whose chunk lists come from gather.lmm)."""
    return paths.stage_inputs(
        stage,
        analysis.config,
        outdir=stage_outdir(stage, analysis),
        vst_outdir=analysis.stabilise_outdir,
        simpson_outdir=analysis.simpson_outdir,
    )


def stage_outputs(stage, analysis, *leave_out):
    """The named outputs of a rule, without those in `leave_out` (which the rule declares itself)."""
    outputs = paths.stage_outputs(stage, analysis.config, outdir=stage_outdir(stage, analysis))
    return {k: v for k, v in outputs.items() if k not in leave_out}


def stage_log(stage, analysis):
    """A rule's log file and its JSON run record (warnings, counts, time)."""
    outdir = stage_outdir(stage, analysis)
    return {
        "log": paths.log_path(stage, outdir=outdir),
        "record": paths.warnings_path(stage, outdir=outdir),
    }


def stage_params(stage, analysis):
    """A rule's parameters: the analysis (the job reads its config) and the settings the stage
    depends on, so that Snakemake's params rerun trigger reruns exactly the jobs whose settings
    changed (batchmix.analyses.STAGE_SETTINGS). A job that analyses share names its shared folder
    instead of an analysis: which analyses share it, and in which order, does not rerun it."""
    settings = stage_settings(analysis.config, stage)
    if MULTI and stage in SHARED_STAGES:
        # the shared folder's name (stabilise-<key>, simpson-<key>), not its path: a hard-coded
        # output prefix in a param would not follow a remote storage prefix
        return {"shared": Path(stage_outdir(stage, analysis)).name, "settings": settings}
    return {"analysis": analysis.name, "settings": settings}


def gathered_chunks(key, analysis):
    """The chunk files `key` of every LMM chunk, in order (none for `corrected` without a random batch)."""
    if key == "corrected" and not batch_is_random(analysis):
        return []
    return gather.lmm(paths.chunk_path(key, outdir=analysis.outdir))
