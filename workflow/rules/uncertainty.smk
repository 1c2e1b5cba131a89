# Stage 5 (optional): uncertainty for every gene: parametric bootstrap (lme4's bootMer) and the
# exact grid posterior for one-variance-component models (batchmix.uncertainty).


rule uncertainty:
    input:
        expression="results/vst/expression.tsv.gz",
        gene_status="results/vst/gene_status.tsv",
        gene_fits="results/lmm/gene_fits.tsv",
        samples=config["samples"],
    output:
        bootstrap="results/uncertainty/bootstrap.tsv",
        posterior="results/uncertainty/posterior.tsv",
        summary="results/uncertainty/summary.json",
        figures=directory("results/uncertainty/figures"),
    log:
        "results/logs/uncertainty.log",
    conda:
        "../../envs/batchmix.yaml"
    threads: 4
    resources:
        mem_mb=mem_mb_for("uncertainty"),
        runtime=runtime_for("uncertainty"),
    script:
        "../scripts/uncertainty.py"
