# Stage 5 (optional): uncertainty for every gene: parametric bootstrap (lme4's bootMer) and the
# exact grid posterior for one-variance-component models (batchmix.uncertainty).


def uncertainty_threads():
    """The bootstrap's batches run in threads (numpy and BLAS release the GIL)."""
    return max(1, min(4, workflow.cores or 1))


def uncertainty_mem_mb(wildcards, input, attempt):
    """The expression table, plus the bootstrap's refit batches (200,000 responses at a time,
    ~2 kB each with the per-replicate statistics), doubled on every retry."""
    values = _n_genes(input) * n_samples()
    boot = 400 * min(1, int(config["uncertainty"]["bootstrap"]))
    return int((800 + 100 * values / 1e6 + boot) * 1.5) * 2 ** (attempt - 1)


def uncertainty_runtime(wildcards, input, attempt):
    """Minutes: about 5 µs per bootstrap refit (bench_uncertainty.py), 0.5 ms per gene for the
    posterior, with 3x headroom, doubled on every retry."""
    genes = _n_genes(input)
    seconds = 30 + 5e-6 * genes * int(config["uncertainty"]["bootstrap"]) * 3
    seconds += 5e-4 * genes * 3 * bool(config["uncertainty"]["bayes"])
    return max(10, int(seconds / 60) + 1) * 2 ** (attempt - 1)


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
    threads: uncertainty_threads()
    resources:
        mem_mb=uncertainty_mem_mb,
        runtime=uncertainty_runtime,
    script:
        "../scripts/uncertainty.py"
