# The run record (results/run.json): the resolved config, the inputs' sizes and MD5s, the versions of
# batchmix and its dependencies, the command line. `batchmix replay results/run.json --outdir DIR`
# reruns the analysis from it.


rule run_record:
    input:
        **stage_inputs("run_record"),
    output:
        **stage_outputs("run_record"),
    log:
        **stage_log("run_record"),
    params:
        analysis=None,
        # The command line is not a parameter: the job reads BATCHMIX_COMMAND (set by common.smk in
        # the main process) itself, or Snakemake's params trigger would rerun it whenever the command
        # line differs, a dry run included.
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_for("gather_lmm"),
        runtime=runtime_for("gather_lmm"),
    script:
        "../scripts/run_record.py"
