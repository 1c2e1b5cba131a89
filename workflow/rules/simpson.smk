# Stage 3: Simpson's-paradox co-expression reversals over all gene pairs.


rule simpson:
    input:
        **stage_inputs("simpson"),
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
    threads: 2
    resources:
        mem_mb=mem_mb_for("simpson"),
        runtime=runtime_for("simpson"),
    script:
        "../scripts/simpson.py"
