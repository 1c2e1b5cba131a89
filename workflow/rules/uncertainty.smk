# Stage 5 (optional): uncertainty for every gene: parametric bootstrap (lme4's bootMer) and the
# posterior (exact grid for one variance component, importance sampling otherwise, with its per-gene
# k-hat and ESS in posterior_diagnostics.tsv); batchmix.pipeline.uncertainty runs batchmix.uncertainty.
# Its inputs include the kinship matrix when covariance: kinship is set (paths.stage_inputs).


for _analysis in ANALYSES:

    rule:
        name:
            _analysis.rule("uncertainty")
        input:
            **stage_inputs("uncertainty", _analysis),
        output:
            **stage_outputs("uncertainty", _analysis, "figures"),
            figures=directory(stage_outputs("uncertainty", _analysis)["figures"]),
        log:
            **stage_log("uncertainty", _analysis),
        params:
            **stage_params("uncertainty", _analysis),
        conda:
            "../../envs/batchmix.yaml"
        threads: 4
        resources:
            mem_mb=mem_mb_for("uncertainty", _analysis.config),
            runtime=runtime_for("uncertainty", _analysis.config),
        script:
            "../scripts/uncertainty.py"
