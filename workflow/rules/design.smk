# The design check (results/design/design.json). Its errors already stopped the run at validation
# (common.smk); this rule records the findings, crosstabs and random terms for the verdict and report.


rule design:
    input:
        **stage_inputs("design"),
    output:
        **stage_outputs("design"),
    log:
        **stage_log("design"),
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        # no cost model of its own yet: it reads the input table once, as the stabilise stage does
        mem_mb=mem_mb_for("stabilise"),
        runtime=runtime_for("stabilise"),
    script:
        "../scripts/design.py"
