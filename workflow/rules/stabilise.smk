# Stage 1: validate the inputs, filter low counts and stabilise the variance (DESeq2-compatible VST).


rule stabilise:
    input:
        expression=config["expression"],
        samples=config["samples"],
    output:
        expression="results/vst/expression.tsv.gz",
        size_factors="results/vst/size_factors.tsv",
        gene_status="results/vst/gene_status.tsv",
        mean_sd="results/vst/mean_sd.tsv",
        info="results/vst/info.json",
    log:
        "results/logs/stabilise.log",
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_for("stabilise"),
        runtime=runtime_for("stabilise"),
    script:
        "../scripts/stabilise.py"
