# Stage 3: Simpson's-paradox co-expression reversals over all gene pairs.


rule simpson:
    input:
        expression="results/vst/expression.tsv.gz",
        gene_status="results/vst/gene_status.tsv",
        samples=config["samples"],
    output:
        reversals="results/simpson/reversals.tsv",
        excluded="results/simpson/excluded_genes.tsv",
        summary="results/simpson/summary.json",
        figure=report(
            "results/simpson/top_pairs.png",
            caption="../report/simpson.rst",
            category="Simpson reversals",
        ),
    log:
        "results/logs/simpson.log",
    conda:
        "../../envs/batchmix.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb_for("simpson"),
        runtime=runtime_for("simpson"),
    script:
        "../scripts/simpson.py"
