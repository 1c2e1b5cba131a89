# The run record (run.json of each analysis): the resolved config, the inputs' sizes and MD5s, the
# versions of batchmix and its dependencies, the command line. `batchmix replay results/run.json
# --outdir DIR` reruns the analysis from it. The command line is not a parameter: the job reads
# BATCHMIX_COMMAND (set by common.smk in the main process) itself, or Snakemake's params trigger would
# rerun it whenever the command line differs, a dry run included.


for _analysis in ANALYSES:

    rule:
        name:
            _analysis.rule("run_record")
        input:
            **stage_inputs("run_record", _analysis),
        output:
            **stage_outputs("run_record", _analysis),
        log:
            **stage_log("run_record", _analysis),
        params:
            # the whole analysis's settings: a changed setting rewrites its record
            **stage_params("run_record", _analysis),
        conda:
            "../../envs/batchmix.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb_for("gather_lmm", _analysis.config),
            runtime=runtime_for("gather_lmm", _analysis.config),
        script:
            "../scripts/run_record.py"
