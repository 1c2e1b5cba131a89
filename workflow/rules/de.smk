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
        # the LMM side first: its jobs run one after another up to the report, while the Simpson
        # block-pair jobs, which only the report waits for, fill the other cores
        priority: 1
        threads: 1
        resources:
            mem_mb=mem_mb_for("de", _analysis.config),
            runtime=runtime_for("de", _analysis.config),
        script:
            "../scripts/de.py"
