"""Benchmark: batchmix.uncertainty (bootstrap and grid posterior) on 20,000 genes x 500 samples.

    .venv/bin/python benchmarks/bench_uncertainty.py                 # the issue's sizes
    .venv/bin/python benchmarks/bench_uncertainty.py --genes 2000 --nsim 200 --skip-r

Model ``~ condition + (1 | batch)``: 20 batches of 25 samples, two conditions, genes with batch
shares of variance (ICC) drawn uniformly on [0, 0.8], 30% of them with no batch effect.

Contenders, all on the same generated data (seeded), in this one run:

- batchmix bootstrap: ``uncertainty.bootstrap(nsim=1000)`` over all genes (target < 120 s);
- engine loop (peer): the same bootstrap done the straightforward vectorised way, simulating full
  n-vectors and refitting them with ``batchmix.lmm.fit_arrays``, on a subset, extrapolated;
- lme4 ``bootMer`` (peer): a few parametric refits of one gene in R (``Rscript``, lme4), timed in
  this run, extrapolated to genes x nsim refits (skip with --skip-r);
- batchmix posterior: ``uncertainty.posterior_arrays`` over all genes (target < 5 s);
- dense grid (peer): the same posterior per gene with n x n algebra on a 200-point grid (what a
  direct implementation does), on 2 genes, extrapolated; Stan/brms is not installed here, and
  its recorded time for one sleepstudy-sized gene (tests/data/sleepstudy_uncertainty) is printed
  for context only.

With ``--slopes`` (only this part runs): the posterior of the random-slopes model
``~ Days + (Days | Subject)`` with brms's default priors (importance sampling) for 2,000 genes x
180 samples (18 subjects x 10 days, the sleepstudy design; target < 60 s), next to brms's recorded
per-model compile and sampling times (tests/data/brms_slopes/timings_brms.tsv):

    .venv/bin/python benchmarks/bench_uncertainty.py --slopes

Ratios are peer time / batchmix time (how many times faster batchmix is). The refits are many
small matrix products: BLAS threads compete with batchmix's own threads, so this script sets
OPENBLAS_NUM_THREADS=1 (unless already set) before importing numpy.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_data(n_genes: int, n_samples: int, n_batches: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    batch = np.arange(n_samples) % n_batches
    cond = (np.arange(n_samples) // n_batches) % 2
    icc = rng.uniform(0.0, 0.8, n_genes)
    icc[rng.random(n_genes) < 0.3] = 0.0
    sb = np.sqrt(icc / (1.0 - icc))
    values = (
        8.0
        + 0.5 * rng.standard_normal(n_genes)[:, None] * cond[None, :]
        + (rng.standard_normal((n_genes, n_batches)) * sb[:, None])[:, batch]
        + rng.standard_normal((n_genes, n_samples))
    )
    samples = pd.DataFrame(
        {"batch": [f"b{b:02d}" for b in batch], "condition": np.where(cond, "treated", "control")},
        index=[f"s{i}" for i in range(n_samples)],
    )
    expr = pd.DataFrame(values, index=[f"g{i}" for i in range(n_genes)], columns=samples.index)
    return expr, samples


def make_slopes_data(n_genes: int, n_subjects: int = 18, n_days: int = 10, seed: int = 0):
    """Sleepstudy-like genes: subject intercepts and slopes with SDs and correlations drawn per gene."""
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_subjects), n_days)
    days = np.tile(np.arange(n_days, dtype=float), n_subjects)
    sd0 = rng.uniform(0.0, 2.0, n_genes)
    sd1 = rng.uniform(0.0, 0.3, n_genes)
    rho = rng.uniform(-0.8, 0.8, n_genes)
    b0 = rng.standard_normal((n_genes, n_subjects))
    b1 = rho[:, None] * b0 + np.sqrt(1 - rho[:, None] ** 2) * rng.standard_normal((n_genes, n_subjects))
    values = (
        8.0
        + 0.1 * days[None, :]
        + sd0[:, None] * b0[:, subject]
        + sd1[:, None] * b1[:, subject] * days[None, :]
        + rng.standard_normal((n_genes, subject.size))
    )
    samples = pd.DataFrame(
        {"Subject": [f"S{s:02d}" for s in subject], "Days": days}, index=[f"s{i}" for i in range(subject.size)]
    )
    return pd.DataFrame(values, index=[f"g{i}" for i in range(n_genes)], columns=samples.index), samples


def slopes_benchmark(n_genes: int) -> None:
    """The importance-sampling posterior of the random-slopes model with brms's default priors."""
    from batchmix import uncertainty as unc

    formula = "~ Days + (Days | Subject)"
    expr, samples = make_slopes_data(n_genes)
    G, n = expr.shape
    print(f"data: {G} genes x {n} samples (18 subjects x 10 days), model {formula}, prior brms_default")
    t0 = time.perf_counter()
    post = unc.posterior(expr, samples, formula, prior="brms_default")
    t_post = time.perf_counter() - t0
    d = post.diagnostics
    counts = d["status"].value_counts().to_dict()
    print(
        f"posterior  batchmix (importance sampling, {int(d['n_draws'].max())} draws/gene): {t_post:8.2f} s "
        f"({1e3 * t_post / G:.1f} ms/gene); statuses {counts}; Pareto k-hat median {d['khat'].median():.2f}, "
        f"99% {d['khat'].quantile(0.99):.2f}; min ESS {d['ess'].min():.0f}; "
        f"target < 60 s: {'PASS' if t_post < 60 else 'MISS'}"
    )
    timings = ROOT / "tests" / "data" / "brms_slopes" / "timings_brms.tsv"
    tt = pd.read_csv(timings, sep="\t")
    rows = tt[tt.model == "slopes_default"]
    c = rows[rows.step == "compile"]["seconds"].min()
    smp = rows[rows.step == "sample"]["seconds"].min()
    print(
        f"posterior  brms 2.18 (recorded, not run here): {c:.1f} s compile + {smp:.1f} s sampling per model "
        f"(4 chains x 2000 iterations) -> {smp * G / 3600:.1f} h for {G} genes even with one compilation "
        f"-> ratio {smp * G / t_post:,.0f}x"
    )
    print(f"peak RSS {peak_rss_mb():.0f} MB")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def engine_loop_bootstrap(expr, samples, formula, nsim, seed=1) -> float:
    """Full-vector simulation + lmm.fit_arrays refits of every replicate (seconds)."""
    from batchmix import lmm

    prep = lmm.prepare(formula, samples)
    Y = expr.to_numpy()
    t0 = time.perf_counter()
    fit = lmm.fit_arrays(Y, prep)
    rng = np.random.default_rng(seed)
    for g in range(Y.shape[0]):
        lam = fit.theta[g, 0] ** 2
        sigma = np.sqrt(fit.sigma2[g])
        u = rng.standard_normal((nsim, prep.q)) * np.sqrt(lam) * sigma
        ystar = prep.X @ fit.beta[g] + u @ prep.Z.T + sigma * rng.standard_normal((nsim, prep.n))
        lmm.fit_arrays(ystar, prep)
    return time.perf_counter() - t0


def dense_grid_posterior(y, X, Z, m=200) -> float:
    """Per-gene grid posterior with n x n solves (seconds for this gene)."""
    t0 = time.perf_counter()
    n, p = X.shape
    K = Z @ Z.T
    out = []
    for t in np.linspace(-15, 8, m):
        V = np.eye(n) + np.exp(t) * K
        L = np.linalg.cholesky(V)
        Xs = np.linalg.solve(L, X)
        ys = np.linalg.solve(L, y)
        A = Xs.T @ Xs
        b = np.linalg.solve(A, Xs.T @ ys)
        r = ys - Xs @ b
        out.append(-np.log(np.diag(L)).sum() - 0.5 * np.linalg.slogdet(A)[1] - (n - p) / 2 * np.log(r @ r))
    return time.perf_counter() - t0


R_SCRIPT = r"""
suppressMessages(library(lme4))
d <- read.delim("{data}")
d$batch <- factor(d$batch); d$condition <- factor(d$condition)
f <- lmer(y ~ condition + (1 | batch), d, REML = TRUE)
invisible(bootMer(f, fixef, nsim = 2, type = "parametric", use.u = FALSE, seed = 1))  # warm-up
t <- system.time(b <- bootMer(f, function(x) c(fixef(x), sigma(x)), nsim = {nsim},
                              type = "parametric", use.u = FALSE, seed = 1))[["elapsed"]]
cat(sprintf("%.6f\n", t))
cat(as.character(packageVersion("lme4")), "\n")
"""


def r_bootmer_seconds_per_refit(expr, samples, nsim: int) -> tuple[float, str] | None:
    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "gene.tsv"
        frame = samples.copy()
        frame["y"] = expr.iloc[0].to_numpy()
        frame.to_csv(data, sep="\t", index=False)
        script = Path(tmp) / "boot.R"
        script.write_text(R_SCRIPT.replace("{data}", str(data)).replace("{nsim}", str(nsim)))
        res = subprocess.run(["Rscript", str(script)], capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            print("Rscript failed:", res.stderr[-500:])
            return None
        lines = res.stdout.split()
        return float(lines[0]) / nsim, lines[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--nsim", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--r-nsim", type=int, default=50, help="bootMer refits timed in R")
    parser.add_argument("--skip-r", action="store_true")
    parser.add_argument("--slopes", action="store_true", help="only the random-slopes posterior benchmark")
    parser.add_argument("--slopes-genes", type=int, default=2000)
    args = parser.parse_args()
    if args.slopes:
        slopes_benchmark(args.slopes_genes)
        return

    from batchmix import uncertainty as unc
    from batchmix.defaults import DEFAULT_SEED

    formula = "~ condition + (1 | batch)"
    expr, samples = make_data(args.genes, args.samples, args.batches)
    G, n = expr.shape
    print(
        f"data: {G} genes x {n} samples, {args.batches} batches, model {formula}; "
        f"threads={args.threads}, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}"
    )

    # grid posterior ---------------------------------------------------------------------------
    from batchmix.design import fixed_design, random_design

    X, _ = fixed_design(formula, samples)
    Z = random_design(formula, samples).Z
    Y = expr.to_numpy().T
    t0 = time.perf_counter()
    post = unc.posterior_arrays(Y, X, Z=Z, n_threads=args.threads)
    t_post = time.perf_counter() - t0
    t_dense = np.mean([dense_grid_posterior(Y[:, g], X, Z) for g in range(2)]) * G
    print(
        f"posterior  batchmix: {t_post:8.2f} s for {G} genes ({1e6 * t_post / G:.0f} us/gene), "
        f"ok {post['ok'].mean():.3f}; target < 5 s: {'PASS' if t_post < 5 else 'MISS'}"
    )
    print(
        f"posterior  dense grid per gene (200 points, n x n), extrapolated: {t_dense:10.0f} s "
        f"-> ratio {t_dense / t_post:,.0f}x"
    )
    timings = ROOT / "tests" / "data" / "sleepstudy_uncertainty" / "timings.tsv"
    if timings.exists():
        tt = pd.read_csv(timings, sep="\t")
        s = tt[(tt.model == "intercept_flat_unifICC") & (tt.step == "sample")]["seconds"].min()
        c = tt[(tt.model == "intercept_flat_unifICC") & (tt.step == "compile")]["seconds"].min()
        print(
            f"posterior  Stan/brms (recorded, not run here): {s:.1f} s sampling per sleepstudy-sized gene "
            f"+ {c:.0f} s compile -> ~{s * G / 3600:.0f} h for {G} genes"
        )

    # bootstrap --------------------------------------------------------------------------------
    t0 = time.perf_counter()
    boot = unc.bootstrap(expr, samples, formula, nsim=args.nsim, seed=DEFAULT_SEED, n_threads=args.threads)
    t_boot = time.perf_counter() - t0
    refits = G * args.nsim
    n_fail = int(boot.summary.groupby("gene_id")["n_fail"].first().sum())
    print(
        f"bootstrap  batchmix: {t_boot:8.2f} s for {G} genes x {args.nsim} = {refits:,} refits "
        f"({1e6 * t_boot / refits:.2f} us/refit), failed refits {n_fail}; "
        f"target < 120 s: {'PASS' if t_boot < 120 else 'MISS'}"
    )
    sub = min(G, 20)
    sub_nsim = min(args.nsim, 200)
    t_loop = engine_loop_bootstrap(expr.iloc[:sub], samples, formula, sub_nsim) / (sub * sub_nsim) * refits
    print(
        f"bootstrap  engine loop (full n-vectors + lmm.fit_arrays), extrapolated from {sub}x{sub_nsim}: "
        f"{t_loop:10.0f} s -> ratio {t_loop / t_boot:,.1f}x"
    )
    if not args.skip_r:
        r = r_bootmer_seconds_per_refit(expr, samples, args.r_nsim)
        if r is None:
            print("bootstrap  lme4 bootMer: Rscript/lme4 not available, skipped")
        else:
            per, version = r
            total = per * refits
            print(
                f"bootstrap  lme4 {version} bootMer: {1e3 * per:.1f} ms/refit (timed {args.r_nsim} refits of one gene "
                f"here) -> {total:,.0f} s = {total / 86400:.1f} days for {refits:,} refits -> ratio "
                f"{total / t_boot:,.0f}x"
            )
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
