# Stage 4: the self-contained HTML report, and the figures for snakemake --report.


rule report:
    input:
        unpack(report_inputs),
    output:
        html=paths.stage_outputs("report", config)["html"],
        figures=report(
            directory(paths.stage_outputs("report", config)["figures"]),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
    log:
        **stage_log("report"),
    conda:
        "../../envs/batchmix.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_for("report"),
        runtime=runtime_for("report"),
    script:
        "../scripts/report.py"
