# Stage 3: Simpson's-paradox co-expression reversals over all gene pairs.
# The scan is scattered over simpson.jobs block-pair jobs (each takes every jobs-th block pair: the
# gene count is only known after stabilise, the job count is fixed by the config), each sign-flip
# calibration replicate is its own job, and the rule `simpson` gathers them (BH/BY over all pairs).
from batchmix.io import read_samples
from batchmix.pipeline.simpson import check_simpson_settings

# Impossible simpson settings for this sample sheet (min_batches above the number of batches) stop
# the run before any job, like the input validation in common.smk.
if workflow.is_main_process and paths.simpson_runs(config):
    try:
        check_simpson_settings(config, read_samples(config["samples"]))
    except InputError as err:
        raise WorkflowError(f"batchmix config check failed:\n{err}") from None


SIMPSON_GATHER = paths.simpson_gather_inputs(config)


rule simpson_block:
    input:
        **stage_inputs("simpson_block"),
    output:
        # temporary: the gather's reversals and summary hold everything the jobs found
        candidates=temp(paths.simpson_job_path("candidates")),
    log:
        **stage_log("simpson_block"),
    wildcard_constraints:
        scatteritem=r"\d+-of-\d+",
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        # every job holds the whole prepared matrix, as the single scan does
        mem_mb=mem_mb_for("simpson"),
        runtime=simpson_job_runtime(1.0 / paths.chunk_count(config, "simpson")),
    script:
        "../scripts/simpson_block.py"


rule simpson_null:
    input:
        **stage_inputs("simpson_null"),
    output:
        null=temp(paths.simpson_job_path("null")),
    log:
        **stage_log("simpson_null"),
    wildcard_constraints:
        scatteritem=r"\d+-of-\d+",
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_for("simpson"),
        # one replicate is one whole scan of the sign-flipped data
        runtime=simpson_job_runtime(1.0),
    script:
        "../scripts/simpson_null.py"


rule simpson:
    input:
        **stage_inputs("simpson"),
        candidates=SIMPSON_GATHER["candidates"],
        null=SIMPSON_GATHER["null"],
    output:
        **stage_outputs("simpson", "figure"),
        figure=report(
            paths.stage_outputs("simpson", config)["figure"],
            caption="../report/simpson.rst",
            category="Simpson reversals",
        ),
    log:
        **stage_log("simpson"),
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_for("simpson"),
        # the gather: the step-up, the lurking factor and the figure (a permutation check runs here)
        runtime=runtime_for("simpson"),
    script:
        "../scripts/simpson.py"
