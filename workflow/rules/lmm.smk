# Stage 2: per-gene linear mixed models, in gene chunks that a cluster can spread.


rule split_genes:
    input:
        # Only the gene list: the split writes each chunk's gene range, and the chunk jobs read
        # their genes' row groups of the stabilised matrix.
        gene_status=stage_inputs("split_genes")["gene_status"],
    output:
        chunks=scatter.lmm(paths.chunk_path("genes")),
    log:
        **stage_log("split_genes"),
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
        **stage_inputs("lmm_chunk"),
    output:
        **stage_outputs("lmm_chunk"),
    log:
        **stage_log("lmm_chunk"),
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
        fits=gathered_chunks("fits"),
        blups=gathered_chunks("blups"),
        fixed_vcov=gathered_chunks("fixed_vcov"),
        corrected=gathered_chunks("corrected"),
        gene_status=paths.stage_inputs("split_genes", config)["gene_status"],
        samples=config["samples"],
        # the kinship matrix (covariance: kinship) goes into model.json's design: a change reruns the job
        **paths.kinship_input(config),
    output:
        **stage_outputs("gather_lmm"),
    log:
        **stage_log("gather_lmm"),
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_for("gather_lmm"),
        runtime=runtime_for("gather_lmm"),
    script:
        "../scripts/gather_lmm.py"
