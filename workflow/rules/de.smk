# Differential expression with and without the batch: results/de/<coefficient>.tsv (the file names
# come from the design, known before any job) and results/de/summary.json.


rule de:
    input:
        **stage_inputs("de"),
    output:
        **stage_outputs("de"),
    log:
        **stage_log("de"),
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        # no cost model of its own yet: it holds gene_fits whole, as gather_lmm does, plus the table
        mem_mb=mem_mb_for("stabilise"),
        runtime=runtime_for("gather_lmm"),
    script:
        "../scripts/de.py"
