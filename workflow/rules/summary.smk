# Batch diagnostics of the samples (PCA, batch R² before and after correction) and the verdict
# (results/summary.json), which the report shows first.


rule diagnostics:
    input:
        **stage_inputs("diagnostics"),
    output:
        **stage_outputs("diagnostics"),
    log:
        **stage_log("diagnostics"),
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        # no cost model of its own yet: the PCA and silhouettes were the report's
        mem_mb=mem_mb_for("report"),
        runtime=runtime_for("report"),
    script:
        "../scripts/diagnostics.py"


rule summary:
    input:
        **stage_inputs("summary"),
    output:
        **stage_outputs("summary"),
    log:
        **stage_log("summary"),
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_for("gather_lmm"),
        runtime=runtime_for("gather_lmm"),
    script:
        "../scripts/summary.py"
