# Stage 1: validate the inputs, filter low counts and stabilise the variance (DESeq2-compatible VST).
# One job per distinct stabilise setting: analyses on the same data and settings share it
# (batchmix.analyses; under results/shared/stabilise-<key>/ when the config has `analyses:`).


for _analysis in STABILISE_JOBS:

    rule:
        name:
            shared_rule("stabilise", _analysis)
        input:
            **stage_inputs("stabilise", _analysis),
        output:
            **stage_outputs("stabilise", _analysis),
        log:
            **stage_log("stabilise", _analysis),
        params:
            **stage_params("stabilise", _analysis),
        conda:
            "../../envs/batchmix.yaml"
        # two: pandas parses the table in parallel, and a block is written while the next is computed
        threads: 2
        resources:
            mem_mb=mem_mb_for("stabilise", _analysis.config),
            runtime=runtime_for("stabilise", _analysis.config),
        script:
            "../scripts/stabilise.py"
