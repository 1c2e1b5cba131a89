# Shared set-up: config validation, input validation, and the paths of every rule, taken from
# batchmix.pipeline.paths (the one definition of every output path). batchmix is installed
# (`make venv`: pip install -e .; with --sdm conda: envs/batchmix.post-deploy.sh).
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError

from batchmix.config import fill_defaults, validate_config
from batchmix.io import InputError
from batchmix.pipeline import paths
from batchmix.pipeline.validate import design_report, load_validated


# batchmix's own validation (the schema, plus the sheet columns that keys such as simpson.adjust_for
# name): an error prints the failing key, its value, what is allowed and the key's description,
# not the whole schema as snakemake.utils.validate does.
try:
    config.update(validate_config(config, "config", check_inputs=workflow.is_main_process))
except InputError as err:
    raise WorkflowError(f"batchmix config validation failed:\n{err}") from None
config.update(fill_defaults(config))

# Check the inputs once, in the main process, before any job runs: a bad table or sheet stops
# the run with a message naming the file, the row or column and what to do, and nothing is written.
# Jobs spawned on a cluster re-read the Snakefile and skip this.
if workflow.is_main_process:
    try:
        _validated = load_validated(config)
    except InputError as err:
        raise WorkflowError(f"batchmix input validation failed:\n{err}") from None
    # The design check's warnings (confounding, few batches, counts given as log) are said before
    # the run too; they are in results/design/design.json and the report.
    for _finding in design_report(config, _validated).findings:
        if _finding.severity == "warning":
            print(f"batchmix design check: warning [{_finding.code}]: {_finding.message}", file=sys.stderr)


# The command that started the run, for the run record (results/run.json): set in the main process,
# inherited by the jobs it starts.
if workflow.is_main_process:
    os.environ.setdefault("BATCHMIX_COMMAND", shlex.join(sys.argv))


scattergather:
    lmm=paths.chunk_count(config, "lmm"),


# Whether the model has the batch as a random grouping factor; only then is there a
# batch-corrected expression (expression minus the batch BLUPs).
BATCH_IS_RANDOM = paths.batch_is_random(config)


def final_outputs():
    """Every file the run produces, for rule all."""
    return paths.final_outputs(config)


def stage_inputs(stage):
    """The named inputs of a rule (not for gather_lmm, whose chunk lists come from gather.lmm)."""
    return paths.stage_inputs(stage, config)


def stage_outputs(stage, *leave_out):
    """The named outputs of a rule, without those in `leave_out` (which the rule declares itself)."""
    return {k: v for k, v in paths.stage_outputs(stage, config).items() if k not in leave_out}


def stage_log(stage):
    """A rule's log file and its JSON run record (warnings, counts, time)."""
    return {"log": paths.log_path(stage), "record": paths.warnings_path(stage)}


def gathered_chunks(key):
    """The chunk files `key` of every LMM chunk, in order (none for `corrected` without a random batch)."""
    if key == "corrected" and not BATCH_IS_RANDOM:
        return []
    return gather.lmm(paths.chunk_path(key))


def report_inputs(wildcards):
    """Everything the report summarises."""
    return paths.report_inputs(config)
