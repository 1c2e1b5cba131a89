# Stage 1: validate the inputs, filter low counts and stabilise the variance (DESeq2-compatible VST).


rule stabilise:
    input:
        **stage_inputs("stabilise"),
    output:
        **stage_outputs("stabilise"),
    log:
        **stage_log("stabilise"),
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_for("stabilise"),
        runtime=runtime_for("stabilise"),
    script:
        "../scripts/stabilise.py"
