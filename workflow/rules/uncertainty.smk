# Stage 5 (optional): uncertainty for every gene: parametric bootstrap (lme4's bootMer) and the
# posterior (exact grid for one variance component, importance sampling otherwise, with its per-gene
# k-hat and ESS in posterior_diagnostics.tsv); batchmix.pipeline.uncertainty runs batchmix.uncertainty.
# Its inputs include the kinship matrix when covariance: kinship is set (paths.stage_inputs).


rule uncertainty:
    input:
        **stage_inputs("uncertainty"),
    output:
        **stage_outputs("uncertainty", "figures"),
        figures=directory(paths.stage_outputs("uncertainty", config)["figures"]),
    log:
        **stage_log("uncertainty"),
    conda:
        "../../envs/batchmix.yaml"
    threads: 4
    resources:
        mem_mb=mem_mb_for("uncertainty"),
        runtime=runtime_for("uncertainty"),
    script:
        "../scripts/uncertainty.py"
