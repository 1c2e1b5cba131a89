# The design check (design/design.json). Its errors already stopped the run at validation
# (common.smk); this rule records the findings, crosstabs and random terms for the verdict and report.


for _analysis in ANALYSES:

    rule:
        name:
            _analysis.rule("design")
        input:
            **stage_inputs("design", _analysis),
        output:
            **stage_outputs("design", _analysis),
        log:
            **stage_log("design", _analysis),
        params:
            **stage_params("design", _analysis),
        conda:
            "../../envs/batchmix.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb_for("design", _analysis.config),
            runtime=runtime_for("design", _analysis.config),
        script:
            "../scripts/design.py"
