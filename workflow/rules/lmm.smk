# Stage 2: per-gene linear mixed models, in gene chunks that a cluster can spread.


for _analysis in ANALYSES:

    rule:
        name:
            _analysis.rule("split_genes")
        input:
            # Only the gene list: the split writes each chunk's gene range, and the chunk jobs read
            # their genes' row groups of the stabilised matrix.
            gene_status=stage_inputs("split_genes", _analysis)["gene_status"],
        output:
            chunks=scatter.lmm(paths.chunk_path("genes", outdir=_analysis.outdir)),
        log:
            **stage_log("split_genes", _analysis),
        params:
            **stage_params("split_genes", _analysis),
        conda:
            "../../envs/batchmix.yaml"
        # the LMM side first: its jobs run one after another up to the report, while the Simpson
        # block-pair jobs, which only the report waits for, fill the other cores
        priority: 1
        threads: 1
        resources:
            mem_mb=mem_mb_for("split_genes", _analysis.config),
            runtime=runtime_for("split_genes", _analysis.config),
        script:
            "../scripts/split_genes.py"

    rule:
        name:
            _analysis.rule("lmm_chunk")
        input:
            **stage_inputs("lmm_chunk", _analysis),
        output:
            **stage_outputs("lmm_chunk", _analysis),
        log:
            **stage_log("lmm_chunk", _analysis),
        params:
            **stage_params("lmm_chunk", _analysis),
        conda:
            "../../envs/batchmix.yaml"
        # the LMM side first: its jobs run one after another up to the report, while the Simpson
        # block-pair jobs, which only the report waits for, fill the other cores
        priority: 1
        threads: 1
        resources:
            mem_mb=mem_mb_for("lmm_chunk", _analysis.config),
            runtime=runtime_for("lmm_chunk", _analysis.config),
        script:
            "../scripts/lmm_chunk.py"

    rule:
        name:
            _analysis.rule("gather_lmm")
        input:
            fits=gathered_chunks("fits", _analysis),
            blups=gathered_chunks("blups", _analysis),
            fixed_vcov=gathered_chunks("fixed_vcov", _analysis),
            corrected=gathered_chunks("corrected", _analysis),
            gene_status=stage_inputs("split_genes", _analysis)["gene_status"],
            samples=_analysis.config["samples"],
            # the kinship matrix (covariance: kinship) goes into model.json's design: a change reruns the job
            **paths.kinship_input(_analysis.config),
        output:
            **stage_outputs("gather_lmm", _analysis),
        log:
            **stage_log("gather_lmm", _analysis),
        params:
            **stage_params("gather_lmm", _analysis),
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
            "../scripts/gather_lmm.py"
