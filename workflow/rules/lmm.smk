# Stage 2: per-gene linear mixed models, in gene chunks that a cluster can spread.


rule split_genes:
    input:
        expression="results/vst/expression.tsv.gz",
        # The gene count, so that the split streams the table in one pass.
        gene_status="results/vst/gene_status.tsv",
    output:
        scatter.lmm("results/lmm/chunks/{scatteritem}.expression.tsv.gz"),
    log:
        "results/logs/split_genes.log",
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_for("split_genes"),
        runtime=runtime_for("split_genes"),
    script:
        "../scripts/split_genes.py"


rule lmm_chunk:
    input:
        expression="results/lmm/chunks/{scatteritem}.expression.tsv.gz",
        gene_status="results/vst/gene_status.tsv",
        samples=config["samples"],
    output:
        **lmm_chunk_outputs(),
    log:
        "results/logs/lmm_chunk/{scatteritem}.log",
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_for("lmm_chunk"),
        runtime=runtime_for("lmm_chunk"),
    script:
        "../scripts/lmm_chunk.py"


rule gather_lmm:
    input:
        fits=gather.lmm("results/lmm/chunks/{scatteritem}.fits.tsv"),
        blups=gather.lmm("results/lmm/chunks/{scatteritem}.blups.tsv"),
        corrected=gathered_corrected,
        gene_status="results/vst/gene_status.tsv",
    output:
        **gather_lmm_outputs(),
    log:
        "results/logs/gather_lmm.log",
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_for("gather_lmm"),
        runtime=runtime_for("gather_lmm"),
    script:
        "../scripts/gather_lmm.py"
