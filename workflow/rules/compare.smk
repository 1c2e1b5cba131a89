# With `analyses:` only: the comparison of the analyses (results/compare/: every model refitted by ML
# on the genes of the analyses that share data, per-gene AIC/BIC, DE agreement) and the page that
# shows it, results/index.html, linking each analysis's report.


if MULTI:

    rule compare:
        input:
            **paths.compare_inputs(config),
        output:
            **paths.compare_outputs(stage="compare"),
        log:
            log=paths.log_path("compare"),
            record=paths.warnings_path("compare"),
        params:
            # the models and settings of every analysis (a changed model also changes its gene_fits)
            settings=stage_settings(config, "compare"),
        conda:
            "../../envs/batchmix.yaml"
        threads: 1
        resources:
            # refits every gene once per analysis of a shared data set, one table at a time: the LMM's cost
            mem_mb=mem_mb_for("gather_lmm", ANALYSES[0].config),
            runtime=runtime_for("report", ANALYSES[0].config),
        script:
            "../scripts/compare.py"

    rule index:
        input:
            **paths.index_inputs(config=config),
        output:
            **paths.compare_outputs(stage="index"),
        log:
            log=paths.log_path("index"),
            record=paths.warnings_path("index"),
        conda:
            "../../envs/batchmix.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb_for("gather_lmm", ANALYSES[0].config),
            runtime=runtime_for("gather_lmm", ANALYSES[0].config),
        script:
            "../scripts/index.py"
