# Batch diagnostics of the samples (PCA, batch R² before and after correction) and the verdict
# (summary.json), which the report shows first.


for _analysis in ANALYSES:

    rule:
        name:
            _analysis.rule("diagnostics")
        input:
            **stage_inputs("diagnostics", _analysis),
        output:
            **stage_outputs("diagnostics", _analysis),
        log:
            **stage_log("diagnostics", _analysis),
        params:
            **stage_params("diagnostics", _analysis),
        conda:
            "../../envs/batchmix.yaml"
        # the LMM side first: its jobs run one after another up to the report, while the Simpson
        # block-pair jobs, which only the report waits for, fill the other cores
        priority: 1
        threads: 1
        resources:
            mem_mb=mem_mb_for("diagnostics", _analysis.config),
            runtime=runtime_for("diagnostics", _analysis.config),
        script:
            "../scripts/diagnostics.py"

    rule:
        name:
            _analysis.rule("summary")
        input:
            **stage_inputs("summary", _analysis),
        output:
            **stage_outputs("summary", _analysis),
        log:
            **stage_log("summary", _analysis),
        params:
            **stage_params("summary", _analysis),
        conda:
            "../../envs/batchmix.yaml"
        # the LMM side first: its jobs run one after another up to the report, while the Simpson
        # block-pair jobs, which only the report waits for, fill the other cores
        priority: 1
        threads: 1
        resources:
            mem_mb=mem_mb_for("gather_lmm", _analysis.config),
            runtime=runtime_for("gather_lmm", _analysis.config),
        script:
            "../scripts/summary.py"
