# Differential expression with and without the batch: de/<coefficient>.tsv (the file names
# come from the design, known before any job) and de/summary.json.


for _analysis in ANALYSES:

    rule:
        name:
            _analysis.rule("de")
        input:
            **stage_inputs("de", _analysis),
        output:
            **stage_outputs("de", _analysis),
        log:
            **stage_log("de", _analysis),
        params:
            **stage_params("de", _analysis),
        conda:
            "../../envs/batchmix.yaml"
        threads: 1
        resources:
            # no cost model of its own yet: it holds gene_fits whole, as gather_lmm does, plus the table
            mem_mb=mem_mb_for("stabilise", _analysis.config),
            runtime=runtime_for("gather_lmm", _analysis.config),
        script:
            "../scripts/de.py"
