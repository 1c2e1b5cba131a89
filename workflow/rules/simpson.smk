# Stage 3: Simpson's-paradox co-expression reversals over all gene pairs.
# `simpson_prepare` residualises the genes once; the scan is scattered over simpson.jobs block-pair
# jobs (each takes every jobs-th block pair: the gene count is only known after stabilise, the job
# count is fixed by the config), each sign-flip calibration replicate is its own job, and the rule
# `simpson` gathers them (BH/BY over all pairs). The jobs after the preparation memory-map it.
from batchmix.io import read_samples
from batchmix.pipeline.simpson import check_simpson_settings

# Impossible simpson settings for this sample sheet (min_batches above the number of batches) stop
# the run before any job, like the input validation in common.smk.
if workflow.is_main_process:
    for _analysis in ANALYSES:
        if paths.simpson_runs(_analysis.config):
            try:
                check_simpson_settings(_analysis.config, read_samples(_analysis.config["samples"]))
            except InputError as err:
                where = "" if _analysis.name is None else f" ({_analysis.label})"
                raise WorkflowError(f"batchmix config check failed{where}:\n{err}") from None


# One scan per distinct scan (SIMPSON_JOBS): analyses that differ only in their model share it.
for _analysis in SIMPSON_JOBS:
    _gather = paths.simpson_gather_inputs(_analysis.config, outdir=_analysis.simpson_outdir)
    _n_jobs = paths.chunk_count(_analysis.config, "simpson")

    rule:
        name:
            shared_rule("simpson_prepare", _analysis)
        input:
            **stage_inputs("simpson_prepare", _analysis),
        output:
            # temporary: the residuals of every scanned gene (several times the stabilised matrix)
            prepared=temp(directory(stage_outputs("simpson_prepare", _analysis)["prepared"])),
        log:
            **stage_log("simpson_prepare", _analysis),
        params:
            **stage_params("simpson_prepare", _analysis),
        conda:
            "../../envs/batchmix.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb_for("simpson_prepare", _analysis.config),
            runtime=runtime_for("simpson_prepare", _analysis.config),
        script:
            "../scripts/simpson_prepare.py"

    rule:
        name:
            shared_rule("simpson_block", _analysis)
        input:
            **stage_inputs("simpson_block", _analysis),
        output:
            # temporary: the gather's reversals and summary hold everything the jobs found
            candidates=temp(paths.simpson_job_path("candidates", outdir=_analysis.simpson_outdir)),
        log:
            **stage_log("simpson_block", _analysis),
        params:
            **stage_params("simpson_block", _analysis),
        conda:
            "../../envs/batchmix.yaml"
        threads: 1
        resources:
            # the prepared data is memory-mapped: a job holds the rows of its block pairs
            mem_mb=mem_mb_for("simpson_block", _analysis.config),
            runtime=simpson_job_runtime(1.0 / _n_jobs, _analysis.config),
        script:
            "../scripts/simpson_block.py"

    rule:
        name:
            shared_rule("simpson_null", _analysis)
        input:
            **stage_inputs("simpson_null", _analysis),
        output:
            null=temp(paths.simpson_job_path("null", outdir=_analysis.simpson_outdir)),
        log:
            **stage_log("simpson_null", _analysis),
        params:
            **stage_params("simpson_null", _analysis),
        conda:
            "../../envs/batchmix.yaml"
        threads: 1
        resources:
            # the sign-flipped data is a new copy of the residuals
            mem_mb=mem_mb_for("simpson_null", _analysis.config),
            # one replicate is one whole scan of the sign-flipped data
            runtime=simpson_job_runtime(1.0, _analysis.config, stage="simpson_null"),
        script:
            "../scripts/simpson_null.py"

    rule:
        name:
            shared_rule("simpson", _analysis)
        input:
            **stage_inputs("simpson", _analysis),
            candidates=_gather["candidates"],
            null=_gather["null"],
            prepared=_gather["prepared"],
        output:
            **stage_outputs("simpson", _analysis, "figure"),
            figure=report(
                stage_outputs("simpson", _analysis)["figure"],
                caption="../report/simpson.rst",
                category="Simpson reversals",
            ),
        log:
            **stage_log("simpson", _analysis),
        params:
            **stage_params("simpson", _analysis),
        conda:
            "../../envs/batchmix.yaml"
        threads: 1
        resources:
            # the gather: the step-up, the lurking factor and the figure (a permutation check runs here)
            mem_mb=mem_mb_for("simpson", _analysis.config),
            runtime=runtime_for("simpson", _analysis.config),
        script:
            "../scripts/simpson.py"
