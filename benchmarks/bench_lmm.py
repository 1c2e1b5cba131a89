"""Throughput of batchmix's per-gene LMM against a statsmodels MixedLM loop and lme4 loops.

Simulates an expression table (genes × samples) with batch effects, fits every gene with
batchmix (``batchmix.lmm.fit`` on DataFrames, and ``fit_arrays`` on the raw array), a
subset of genes with a loop of ``statsmodels`` ``MixedLM`` and, when ``Rscript`` with
lme4 is available, a subset with two loops timed inside R (so R's start-up and data
loading are not counted):

* ``lme4::lmer`` alone (REML fit: θ, β, σ, conditional modes available);
* ``lmerTest::lmer`` + ``summary()`` — the like-for-like peer: batchmix's output includes
  Satterthwaite degrees of freedom and p-values for every coefficient, which is what
  lmerTest's summary computes (its lmer also does the Hessian/Jacobian work for them).

batchmix's ``fit`` computes, per gene: the REML fit, log-likelihood/AIC/BIC, the OLS fit
and the likelihood-ratio test against it, variance components and fractions, every
coefficient with SE, Satterthwaite df, t and p, and the conditional modes as a tidy
table. Prints genes per second for each engine and the ratios, all measured in one run,
with the CPU affinity, BLAS thread variables and load average at the start. For a fair
comparison pin both sides to the same cores with the same thread counts, e.g.::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_lmm.py ...

(R's reference BLAS is single-threaded; the taskset applies to the Rscript child too.)

Examples::

    python benchmarks/bench_lmm.py --model intercept --genes 20000 --samples 500 --batches 20
    python benchmarks/bench_lmm.py --model slopes --genes 2000 --subjects 18 --per-subject 10
    python benchmarks/bench_lmm.py --model two --genes 2000 --samples 100 --batches 10 --lanes 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from batchmix import lmm

FORMULAS = {
    "intercept": "~ condition + (1 | batch)",
    "slopes": "~ Days + (Days | Subject)",
    "two": "~ condition + (1 | batch) + (1 | lane)",
}


def simulate(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A reproducible genes × samples table and its sample sheet for the chosen model."""
    rng = np.random.default_rng(args.seed)
    G = args.genes
    if args.model == "slopes":
        S, D = args.subjects, args.per_subject
        subject = np.repeat(np.arange(S), D)
        days = np.tile(np.arange(D, dtype=float), S)
        samples = pd.DataFrame({"Subject": [f"subj{s:03d}" for s in subject], "Days": days})
        b0 = rng.normal(0, 1.0, (G, S))
        b1 = rng.normal(0, 0.3, (G, S)) * rng.uniform(0, 1, (G, 1))
        Y = 8 + 0.2 * days + b0[:, subject] + b1[:, subject] * days + rng.normal(0, 1, (G, S * D))
    else:
        n, J = args.samples, args.batches
        # balanced batches by default (repeated projected eigenvalues); --unbalanced draws them
        batch = rng.integers(0, J, n) if args.unbalanced else np.arange(n) % J
        condition = rng.integers(0, 2, n)
        samples = pd.DataFrame(
            {"batch": [f"batch{b:03d}" for b in batch], "condition": np.where(condition == 1, "treated", "control")}
        )
        sd_batch = rng.uniform(0, 1.0, (G, 1))
        Y = 8 + 0.5 * condition + sd_batch * rng.normal(size=(G, J))[:, batch] + rng.normal(0, 1, (G, n))
        if args.model == "two":
            lane = rng.integers(0, args.lanes, n)
            samples["lane"] = [f"lane{code:02d}" for code in lane]
            Y += rng.uniform(0, 0.5, (G, 1)) * rng.normal(size=(G, args.lanes))[:, lane]
    samples.index = [f"s{i:05d}" for i in range(len(samples))]
    expression = pd.DataFrame(Y, index=[f"gene{g:06d}" for g in range(G)], columns=samples.index)
    return expression, samples


def time_batchmix(expression: pd.DataFrame, samples: pd.DataFrame, formula: str) -> dict:
    start = time.perf_counter()
    prepared = lmm.prepare(formula, samples)
    arrays = lmm.fit_arrays(expression.to_numpy(), prepared)
    arrays_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = lmm.fit(expression, samples, formula)
    fit_seconds = time.perf_counter() - start
    return {
        "arrays_seconds": arrays_seconds,
        "fit_seconds": fit_seconds,
        "converged": float(arrays.converged.mean()),
        "result": result,
    }


def time_statsmodels(expression: pd.DataFrame, samples: pd.DataFrame, model: str, genes: int) -> float | None:
    if genes <= 0:
        return None
    import statsmodels.formula.api as smf

    data = samples.copy()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for gene in expression.index[:genes]:
            data["y"] = expression.loc[gene].to_numpy()
            if model == "intercept":
                fitted = smf.mixedlm("y ~ condition", data, groups=data["batch"])
            elif model == "slopes":
                fitted = smf.mixedlm("y ~ Days", data, groups=data["Subject"], re_formula="~Days")
            else:
                fitted = smf.mixedlm(
                    "y ~ condition",
                    data,
                    groups=np.ones(len(data)),
                    vc_formula={"batch": "0 + C(batch)", "lane": "0 + C(lane)"},
                    re_formula="0",
                )
            fitted.fit(reml=True)
    return (time.perf_counter() - start) / genes


R_LOOP = r"""
suppressPackageStartupMessages({library(lme4); library(lmerTest)})
args <- commandArgs(trailingOnly = TRUE)
y <- as.matrix(read.delim(args[1], row.names = 1, check.names = FALSE))
d <- read.delim(args[2], row.names = 1, check.names = FALSE)
for (col in intersect(c("batch", "condition", "Subject", "lane"), names(d))) d[[col]] <- factor(d[[col]])
f <- as.formula(paste("y_gene", args[3]))
plain <- system.time({
  for (g in seq_len(nrow(y))) {
    d$y_gene <- y[g, rownames(d)]
    suppressMessages(suppressWarnings(lme4::lmer(f, data = d, REML = TRUE)))
  }
})[["elapsed"]]
satt <- system.time({
  for (g in seq_len(nrow(y))) {
    d$y_gene <- y[g, rownames(d)]
    suppressMessages(suppressWarnings(summary(lmerTest::lmer(f, data = d, REML = TRUE))))
  }
})[["elapsed"]]
cat(plain / nrow(y), satt / nrow(y), "\n")
"""


def time_lme4(expression: pd.DataFrame, samples: pd.DataFrame, formula: str, genes: int) -> tuple[float, float] | None:
    """Seconds per gene of the lme4::lmer loop and of the lmerTest::lmer + summary() loop."""
    if genes <= 0 or shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        expression.iloc[:genes].to_csv(tmp / "y.tsv", sep="\t")
        samples.to_csv(tmp / "samples.tsv", sep="\t")
        (tmp / "loop.R").write_text(R_LOOP)
        out = subprocess.run(
            ["Rscript", str(tmp / "loop.R"), str(tmp / "y.tsv"), str(tmp / "samples.tsv"), formula],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print("lme4 loop failed:", out.stderr.strip()[-500:])
            return None
        plain, satt = out.stdout.split()[-2:]
        return float(plain), float(satt)


def conditions() -> str:
    """CPU affinity, BLAS thread variables and load: what the numbers were measured under."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    threads = {v: os.environ.get(v, "unset") for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"cpus {cpus} of {os.cpu_count()}; {threads}; load average {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(FORMULAS), default="intercept")
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--lanes", type=int, default=8)
    parser.add_argument("--subjects", type=int, default=18)
    parser.add_argument("--per-subject", type=int, default=10)
    parser.add_argument("--statsmodels-genes", type=int, default=20)
    parser.add_argument("--lme4-genes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1, help="batchmix timings are the best of this many runs")
    parser.add_argument(
        "--unbalanced", action="store_true", help="random batch sizes (intercept/two models) instead of equal ones"
    )
    parser.add_argument("--seed", type=int, default=20240501)
    args = parser.parse_args()
    formula = FORMULAS[args.model]
    expression, samples = simulate(args)
    print(f"model {formula}: {expression.shape[0]} genes x {expression.shape[1]} samples")
    print(f"conditions: {conditions()}")
    runs = [time_batchmix(expression, samples, formula) for _ in range(max(1, args.repeats))]
    bm = min(runs, key=lambda r: r["fit_seconds"])
    bm["arrays_seconds"] = min(r["arrays_seconds"] for r in runs)
    G = expression.shape[0]
    rows = [
        ("batchmix fit_arrays (numpy)", bm["arrays_seconds"] / G, G),
        ("batchmix fit (DataFrames, all outputs)", bm["fit_seconds"] / G, G),
    ]
    sm = time_statsmodels(expression, samples, args.model, args.statsmodels_genes)
    if sm is not None:
        rows.append(("statsmodels MixedLM loop (fit only)", sm, args.statsmodels_genes))
    r = time_lme4(expression, samples, formula, args.lme4_genes)
    if r is not None:
        rows.append(("lme4::lmer loop (fit only, in R)", r[0], args.lme4_genes))
        rows.append(("lmerTest::lmer + summary() (Satterthwaite)", r[1], args.lme4_genes))
    all_runs = ", ".join(f"{x['fit_seconds']:.3f}" for x in runs)
    print(
        f"batchmix: {bm['fit_seconds']:.3f} s for all {G} genes through lmm.fit "
        f"({bm['arrays_seconds']:.3f} s through fit_arrays; best of {len(runs)}: "
        f"{all_runs}); converged {bm['converged']:.4f}; "
        f"statuses {bm['result'].gene_fits['status'].value_counts().to_dict()}"
    )
    print(f"{'engine':44s} {'genes timed':>11s} {'ms/gene':>10s} {'genes/s':>12s}")
    for name, per_gene, n in rows:
        print(f"{name:44s} {n:11d} {per_gene * 1e3:10.4f} {1.0 / per_gene:12.1f}")
    fit_rate = 1.0 / (bm["fit_seconds"] / G)
    for name, per_gene, _ in rows[2:]:
        print(f"throughput ratio batchmix fit / {name}: {fit_rate * per_gene:.1f}x")
    print(f"conditions at end: {conditions()}")


if __name__ == "__main__":
    main()
