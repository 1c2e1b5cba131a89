# Stage 4: the self-contained HTML report, and the figures for snakemake --report.


rule report:
    input:
        unpack(report_inputs),
    output:
        html="results/report.html",
        figures=report(
            directory("results/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
    log:
        "results/logs/report.log",
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_for("report"),
        runtime=runtime_for("report"),
    script:
        "../scripts/report.py"
