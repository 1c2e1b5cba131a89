# Stage 4: the self-contained HTML report, and the figures for snakemake --report.


for _analysis in ANALYSES:

    rule:
        name:
            _analysis.rule("report")
        input:
            **stage_inputs("report", _analysis),
        output:
            html=stage_outputs("report", _analysis)["html"],
            figures=report(
                directory(stage_outputs("report", _analysis)["figures"]),
                patterns=["{name}.png"],
                caption="../report/figures.rst",
                category="Figures" if _analysis.name is None else f"Figures: {_analysis.name}",
                labels={"figure": "{name}"},
            ),
        log:
            **stage_log("report", _analysis),
        params:
            **stage_params("report", _analysis),
        conda:
            "../../envs/batchmix.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb_for("report", _analysis.config),
            runtime=runtime_for("report", _analysis.config),
        script:
            "../scripts/report.py"
