"""Benchmark: the whole workflow on synthetic counts, next to its kernels, DESeq2's vst() and an lme4 loop.

    .venv/bin/python benchmarks/bench_pipeline.py                       # 20,000 genes x 500 samples, 20 batches
    .venv/bin/python benchmarks/bench_pipeline.py --genes 60000 --samples 2000 --no-r --no-kernels
    .venv/bin/python benchmarks/bench_pipeline.py --genes 2000 --samples 100 --no-r   # a quick look

Generates negative-binomial counts with a batch effect (seeded, ``batchmix.defaults.DEFAULT_SEED``)
and a sample sheet (``Infection`` two levels, ``Batch``), writes them as TSV, and runs
``snakemake --cores N`` on the default config (config/config.yaml: Simpson on all genes, report
on) in a fresh directory. It reports:

- the whole workflow's wall time (target < 20 s at 20,000 x 500 on 2 cores);
- per job: its wall and CPU time (the run record, :mod:`batchmix.pipeline.logs`; on a shared
  machine the CPU time is the steadier number) and its peak RSS, sampled
  every 50 ms with psutil over the job's process tree (target < 2 GB);
- the kernels alone, in this process, on the same data: :func:`batchmix.vst.vst`,
  :func:`batchmix.lmm.fit` on every gene, :func:`batchmix.simpson.scan`;
- DESeq2's ``vst()`` on the same matrix in R (reading excluded; the fastest of three calls, the first
  paying R's first-use costs) against the stabilise job (target: the job at least 3x faster);
- the LMM's cost per gene through the workflow against an lme4 loop (``lmer`` per gene,
  ``--lme4-genes`` genes; target: at least 300x cheaper per gene). The LMM jobs' time is
  split_genes + every lmm_chunk + gather_lmm (their run records). Issue 12 defines the cost at the
  margin: a second workflow run in the same benchmark on the first ``--marginal-genes`` genes of the
  same counts (default 8,000; same samples and config) gives the slope
  (T(genes) - T(marginal genes)) / (genes - marginal genes). 8,000 genes are 4 fit blocks of 2,000, so
  each of the default 4 LMM chunks holds genes in both runs: with fewer, a chunk is empty and skips the
  fixed costs (imports, the design) that a chunk with genes pays, which would inflate the slope. The
  average, T(genes) / genes, is printed too (an upper bound: it carries each job's start-up). The jobs'
  times vary from run to run by more than the difference they measure (a tenth of a second in a chunk
  job's body), so the same stages are then run again ``--stage-repeats`` times in one process per run,
  alternating, on each run's stabilised matrix (one BLAS thread, as the jobs), and the slope of their
  best CPU times is printed as well: the stages' own cost per gene, without the jobs' start-up.

The machine is shared: the load average at the start and the end is printed with the results.
``--json`` writes everything as JSON too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]

from batchmix.defaults import DEFAULT_SEED  # noqa: E402

MODEL = "~ Infection + (1|Batch)"


def synthetic_counts(n_genes: int, n_samples: int, n_batches: int, seed: int = DEFAULT_SEED):
    """Negative-binomial counts with per-gene batch shifts and an infection effect on 10% of genes."""
    rng = np.random.default_rng(seed)
    batch = np.repeat(np.arange(n_batches), -(-n_samples // n_batches))[:n_samples]
    infection = np.tile([0, 1], -(-n_samples // 2))[:n_samples]
    log_mean = rng.normal(4.0, 1.8, n_genes)[:, None]
    batch_shift = rng.normal(0, 0.3, (n_genes, n_batches))[:, batch]
    effect = np.where(rng.random(n_genes) < 0.1, rng.normal(0, 1.0, n_genes), 0.0)[:, None] * infection
    size_factor = np.exp(rng.normal(0, 0.2, n_samples))
    mu = np.exp(log_mean + batch_shift + effect) * size_factor
    dispersion = 0.05 + 1.0 / (1.0 + np.exp(log_mean))
    counts = rng.negative_binomial(1.0 / dispersion, 1.0 / (1.0 + mu * dispersion))
    genes = [f"gene{i:05d}" for i in range(n_genes)]
    sample_ids = [f"s{j:04d}" for j in range(n_samples)]
    counts = pd.DataFrame(counts, index=pd.Index(genes, name="gene_id"), columns=sample_ids)
    sheet = pd.DataFrame(
        {
            "sample_id": sample_ids,
            "Infection": np.where(infection == 1, "infected", "mock"),
            "Batch": [f"b{b:02d}" for b in batch],
        }
    )
    return counts, sheet


class PeakMemory:
    """Peak RSS per Snakemake job, sampled from the process tree of the snakemake command."""

    def __init__(self, root_pid: int, interval: float = 0.05):
        self.root = psutil.Process(root_pid)
        self.interval = interval
        self.peaks: dict[str, float] = {}
        # per job process: (its start, the last time it was seen alive), seconds since the epoch
        self.spans: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _job(proc: psutil.Process) -> str | None:
        try:
            cmd = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        # Snakemake runs a rule's script as .snakemake/scripts/tmpXXXX.<script>.py
        for part in cmd.split():
            if "/.snakemake/scripts/" in part and part.endswith(".py"):
                return part.rsplit(".", 2)[-2]
        return None

    def _run(self) -> None:
        seen: dict[int, str] = {}
        while not self._stop.is_set():
            try:
                procs = self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for proc in procs:
                name = seen.get(proc.pid) or self._job(proc)
                if name is None:
                    continue
                seen[proc.pid] = name
                key = f"{name}[{proc.pid}]"
                try:
                    rss = proc.memory_info().rss / 1e6
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.peaks[key] = max(self.peaks.get(key, 0.0), rss)
                try:
                    begun = self.spans[key][0] if key in self.spans else proc.create_time()
                except psutil.NoSuchProcess:
                    continue
                self.spans[key] = (begun, time.time())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def lmm_seconds(job_seconds: dict) -> float:
    """Time of the LMM jobs of a run: split_genes, every lmm_chunk and gather_lmm."""
    lmm_jobs = ("split_genes", "lmm_chunk", "gather_lmm")
    return sum(s or 0.0 for name, s in job_seconds.items() if name.split("[")[0] in lmm_jobs)


def prepare_run(directory: Path, counts: pd.DataFrame, sheet: pd.DataFrame, overrides: list[str]) -> Path:
    """A run directory: the workflow, the counts and sheet as TSV, and bench.yaml (the default config
    with this benchmark's inputs, model and ``--set`` overrides). Returns the counts' path."""
    for item in ("Snakefile", "workflow", "config", "envs"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, directory / item)
    (directory / "data").mkdir()
    counts_path, sheet_path = directory / "data" / "counts.tsv", directory / "data" / "samples.tsv"
    counts.to_csv(counts_path, sep="\t")
    sheet.to_csv(sheet_path, sep="\t", index=False)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update({"expression": "data/counts.tsv", "samples": "data/samples.tsv", "model": MODEL, "batch": "Batch"})
    for item in overrides:
        key, _, value = item.partition("=")
        config[key] = yaml.safe_load(value)
    (directory / "bench.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return counts_path


def run_workflow(workdir: Path, cores: int) -> dict:
    """snakemake --cores N in ``workdir``: wall time, per-job peak RSS and the jobs' run records."""
    cmd = [str(REPO / ".venv" / "bin" / "snakemake"), "--cores", str(cores), "-q", "--configfile", "bench.yaml"]
    started, epoch = time.perf_counter(), time.time()
    with open(workdir / "snakemake.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        with PeakMemory(proc.pid) as memory:
            code = proc.wait()
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"the workflow failed; see {workdir / 'snakemake.log'}")
    records, cpu = {}, {}
    # the stabilise job logs how long reading and validating its input took (before the VST)
    match = re.search(r"stabilise: read .* \(([0-9.]+) s\)", (workdir / "results/logs/stabilise.log").read_text())
    read_s = float(match[1]) if match else float("nan")
    for path in sorted((workdir / "results" / "logs").rglob("*.warnings.json")):
        record = json.loads(path.read_text())
        name = record["stage"] + (f"[{record['job']}]" if record.get("job") else "")
        records[name] = record["seconds"]
        cpu[name] = record.get("cpu_seconds")
    return {
        "wall_s": wall,
        "job_seconds": records,
        "job_cpu_seconds": cpu,
        "job_peak_mb": memory.peaks,
        "stabilise_read_s": read_s,
        "job_spans": {key: (begun - epoch, seen - epoch) for key, (begun, seen) in memory.spans.items()},
    }


def print_timeline(workflow: dict) -> None:
    """Each job process's start and end (seconds after snakemake started) and its time outside the
    stage body (interpreter start, imports, Snakemake's script preamble), from the memory sampler."""
    spans = sorted(workflow["job_spans"].items(), key=lambda item: item[1][0])
    if not spans:
        return
    bodies = dict(workflow["job_seconds"])
    print(f"\ntimeline (s after snakemake started; process seen every 50 ms){'':<4}start     end   outside body")
    outside_total = 0.0
    counted: dict[str, int] = {}
    for key, (begun, seen) in spans:
        stage = key.partition("[")[0]
        # job names of per-chunk stages: the i-th process of a stage is matched to its i-th record
        names = sorted(n for n in bodies if n.partition("[")[0] == stage)
        index = counted.get(stage, 0)
        counted[stage] = index + 1
        body = bodies.get(names[index]) if index < len(names) else None
        outside = (seen - begun) - body if body is not None else float("nan")
        if body is not None:
            outside_total += outside
        print(f"  {key:<52}{begun:>7.2f}{seen:>8.2f}{outside:>10.2f}")
    print(
        f"first job process at {spans[0][1][0]:.2f} s; last seen at {max(s for _, (_, s) in spans):.2f} s; "
        f"workflow {workflow['wall_s']:.2f} s; time outside the stage bodies, all jobs: {outside_total:.1f} s"
    )


def kernel_times(counts: pd.DataFrame, sheet: pd.DataFrame) -> dict:
    """The kernels alone on the same data, in this process."""
    from batchmix import lmm, simpson, vst

    out = {}
    t = time.perf_counter()
    result = vst.vst(counts)
    out["vst_s"] = time.perf_counter() - t
    keep = vst.low_count_filter(counts, min_count=10, min_samples=3)
    values = result.values.loc[keep]
    samples = sheet.set_index("sample_id")
    t = time.perf_counter()
    lmm.fit(values, samples, MODEL)
    out["lmm_fit_s"] = time.perf_counter() - t
    out["lmm_genes"] = int(len(values))
    t = time.perf_counter()
    simpson.scan(values, samples["Batch"].astype(str), fdr=0.05, method="bh")
    out["simpson_scan_s"] = time.perf_counter() - t
    return out


def lmm_stage_cpu(workdir: str, repeats: int) -> list[float]:
    """CPU seconds of the LMM stages (split_genes, every lmm_chunk, gather_lmm) run ``repeats`` times in
    this process on a finished run's stabilised matrix, as the jobs run them (the registry's
    ``run_stage`` with the paths of :mod:`batchmix.pipeline.paths`), without the jobs' start-up.

    Meant for a child process with one BLAS thread (:func:`lmm_stage_cpu_child`), as the jobs have.
    The outputs go to ``workdir/stage_repeats/`` (the run's ``results/`` is left as it is).
    """
    import logging

    from batchmix.config import load_config
    from batchmix.pipeline import paths, run_stage, stage_inputs, stage_outputs

    logging.disable(logging.INFO)
    os.chdir(workdir)
    config = load_config("bench.yaml")
    outdir = Path("stage_repeats")
    (outdir / "vst").mkdir(parents=True, exist_ok=True)
    for name in ("expression.parquet", "gene_status.tsv"):
        target = outdir / "vst" / name
        if not target.exists():
            target.symlink_to(Path("results", "vst", name).resolve())
    n_chunks = paths.chunk_count(config, "lmm")
    jobs = [("split_genes", None)] + [("lmm_chunk", item) for item in paths.scatteritems(n_chunks)]
    jobs.append(("gather_lmm", None))
    totals = []
    for _ in range(repeats):
        total = 0.0
        for stage, item in jobs:
            where = {"outdir": str(outdir), "n_chunks": n_chunks, **({"scatteritem": item} if item else {})}
            inputs, outputs = stage_inputs(stage, config, **where), stage_outputs(stage, config, **where)
            for value in outputs.values():
                for path in [value] if isinstance(value, str) else value:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
            started = time.process_time()
            run_stage(stage, config, inputs, outputs, {"threads": 1}, console=False)
            total += time.process_time() - started
        totals.append(total)
    return totals


def lmm_stage_cpu_child(workdir: Path, repeats: int) -> list[float]:
    """:func:`lmm_stage_cpu` in a child process with one BLAS thread; its CPU seconds per repeat."""
    code = (
        f"import sys; sys.path[:0] = [{str(REPO / 'benchmarks')!r}, {str(REPO / 'workflow')!r}]; import json; "
        f"from bench_pipeline import lmm_stage_cpu; print(json.dumps(lmm_stage_cpu({str(workdir)!r}, {repeats})))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


R_VST = r"""
suppressMessages(library(DESeq2))
args <- commandArgs(TRUE)
counts <- as.matrix(read.delim(args[1], row.names = 1, check.names = FALSE))
storage.mode(counts) <- "integer"
dds <- DESeqDataSetFromMatrix(counts, data.frame(row.names = colnames(counts), x = rep(1, ncol(counts))), ~ 1)
# three calls: the first pays R's first-use costs, so the ratio is taken against the fastest
for (i in 1:3) {
  t <- system.time(v <- vst(dds, blind = TRUE))[["elapsed"]]
  cat(sprintf("%.3f\n", t))
}
"""

R_LME4 = r"""
suppressMessages(library(lme4))
args <- commandArgs(TRUE)
y <- as.matrix(read.delim(args[1], row.names = 1, check.names = FALSE))
sheet <- read.delim(args[2], row.names = 1)[colnames(y), ]
n <- as.integer(args[3])
t <- system.time(for (i in seq_len(n)) {
  d <- data.frame(y = y[i, ], Infection = sheet$Infection, Batch = sheet$Batch)
  fit <- lmer(y ~ Infection + (1 | Batch), data = d, REML = TRUE)
})[["elapsed"]]
cat(sprintf("%.3f\n", t / n))
"""


def r_times(workdir: Path, counts_path: Path, sheet_path: Path, stabilised: pd.DataFrame, lme4_genes: int) -> dict:
    """DESeq2's vst() (reading excluded) and lme4's lmer per gene, in Rscript."""
    (workdir / "vst.R").write_text(R_VST)
    (workdir / "lme4.R").write_text(R_LME4)
    sub = workdir / "lme4_genes.tsv"
    stabilised.iloc[:lme4_genes].to_csv(sub, sep="\t")
    vst_run = subprocess.run(
        ["Rscript", "vst.R", str(counts_path)], cwd=workdir, capture_output=True, text=True, check=True
    )
    vst_times = [float(t) for t in vst_run.stdout.split()]
    vst_s = min(vst_times)
    per_gene = float(
        subprocess.run(
            ["Rscript", "lme4.R", str(sub), str(sheet_path), str(lme4_genes)],
            cwd=workdir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[-1]
    )
    return {
        "deseq2_vst_s": vst_s,
        "deseq2_vst_calls_s": vst_times,
        "lme4_s_per_gene": per_gene,
        "lme4_genes": lme4_genes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--lme4-genes", type=int, default=100)
    parser.add_argument(
        "--marginal-genes",
        type=int,
        default=8000,
        help="genes of the second run that gives the LMM's marginal cost (0: no second run)",
    )
    parser.add_argument(
        "--stage-repeats",
        type=int,
        default=3,
        help="after the two runs, the LMM stages again in one process on each run's matrix, this many times "
        "each, for their marginal cost without the jobs' start-up (0: not)",
    )
    parser.add_argument("--no-r", action="store_true", help="skip DESeq2 and lme4")
    parser.add_argument("--no-kernels", action="store_true", help="skip the kernel-only times")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=YAML, e.g. chunks=8")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    parser.add_argument("--json", help="write the results here as JSON too")
    args = parser.parse_args(argv)

    load_start = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="bench_pipeline."))
    counts, sheet = synthetic_counts(args.genes, args.samples, args.batches)
    counts_path = prepare_run(workdir, counts, sheet, args.set)
    sheet_path = workdir / "data" / "samples.tsv"

    print(f"batchmix workflow benchmark: {args.genes} genes x {args.samples} samples, {args.batches} batches, "
          f"--cores {args.cores}, model {MODEL}; run in {workdir}")  # fmt: skip
    print(
        f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} ({os.cpu_count()} cores)"
    )
    workflow = run_workflow(workdir, args.cores)
    results: dict = {"shape": [args.genes, args.samples, args.batches], "cores": args.cores, "workflow": workflow}
    print(f"\nwhole workflow: {workflow['wall_s']:.1f} s wall")
    peaks = workflow["job_peak_mb"]
    print(f"{'job':<24}{'seconds':>10}{'CPU s':>8}{'peak RSS MB':>14}")
    for name, seconds in workflow["job_seconds"].items():
        stage = name.partition("[")[0]
        # per-job stages (lmm_chunk[1-of-4], …): the peaks are by process, so the stage's largest
        peak = max((mb for key, mb in peaks.items() if key.startswith(stage + "[")), default=float("nan"))
        cpu = workflow["job_cpu_seconds"].get(name)
        print(f"{name:<24}{seconds:>10.2f}{cpu if cpu is not None else float('nan'):>8.2f}{peak:>14.0f}")
    total_cpu = sum(c for c in workflow["job_cpu_seconds"].values() if c is not None)
    print(f"all jobs: {sum(workflow['job_seconds'].values()):.1f} s wall, {total_cpu:.1f} s CPU (job bodies; "
          "imports and Snakemake not included)")  # fmt: skip
    print(f"largest job peak RSS: {max(peaks.values(), default=float('nan')):.0f} MB")
    print_timeline(workflow)

    if not args.no_kernels:
        kernels = kernel_times(counts, sheet)
        results["kernels"] = kernels
        print(f"\nkernels alone (this process): vst {kernels['vst_s']:.2f} s, lmm.fit {kernels['lmm_fit_s']:.2f} s "
              f"({kernels['lmm_genes']} genes), simpson.scan {kernels['simpson_scan_s']:.2f} s")  # fmt: skip

    seconds = workflow["job_seconds"]
    lmm_s = lmm_seconds(seconds)
    results["lmm_workflow_s_per_gene"] = lmm_s / args.genes
    marginal = None
    if 0 < args.marginal_genes < args.genes:
        small_dir = Path(tempfile.mkdtemp(prefix="bench_pipeline_marginal."))
        prepare_run(small_dir, counts.iloc[: args.marginal_genes], sheet, args.set)
        load = os.getloadavg()
        small = run_workflow(small_dir, args.cores)
        small_lmm_s = lmm_seconds(small["job_seconds"])
        marginal = (lmm_s - small_lmm_s) / (args.genes - args.marginal_genes)
        # the same slope from the jobs' CPU time, which the load of a shared machine inflates less
        marginal_cpu = (lmm_seconds(workflow["job_cpu_seconds"]) - lmm_seconds(small["job_cpu_seconds"])) / (
            args.genes - args.marginal_genes
        )
        results["marginal_run"] = {"genes": args.marginal_genes, "workflow": small, "load_average_start": load}
        results["lmm_marginal_s_per_gene"] = marginal
        results["lmm_marginal_cpu_s_per_gene"] = marginal_cpu
        print(f"\nsecond run on the first {args.marginal_genes} genes (same samples and config; load average at "
              f"start {load[0]:.2f}): whole workflow {small['wall_s']:.1f} s wall, LMM jobs {small_lmm_s:.2f} s "
              f"against {lmm_s:.2f} s at {args.genes} genes")  # fmt: skip
        if args.stage_repeats > 0:
            # one process per run, the two alternating, so that both see the same machine
            big_cpu, small_cpu = [], []
            for _ in range(args.stage_repeats):
                # each child runs the stages twice and the second, warm run counts (imports and
                # first-use costs are paid in the first)
                big_cpu.append(lmm_stage_cpu_child(workdir, 2)[-1])
                small_cpu.append(lmm_stage_cpu_child(small_dir, 2)[-1])
            stage_marginal = (min(big_cpu) - min(small_cpu)) / (args.genes - args.marginal_genes)
            results["lmm_stages_in_process"] = {"cpu_s": big_cpu, "marginal_cpu_s": small_cpu}
            results["lmm_stage_marginal_cpu_s_per_gene"] = stage_marginal
            print(f"the LMM stages in one process (no job start-up; one BLAS thread; CPU of a warm run, best of "
                  f"{args.stage_repeats}): {min(big_cpu):.2f} s at {args.genes} genes, {min(small_cpu):.2f} s at "
                  f"{args.marginal_genes}: {1e6 * stage_marginal:.1f} us per gene at the margin")  # fmt: skip
        if not args.keep:
            shutil.rmtree(small_dir)
    if not args.no_r:
        stabilised = pd.read_parquet(workdir / "results" / "vst" / "expression.parquet")
        r = r_times(workdir, counts_path, sheet_path, stabilised, args.lme4_genes)
        results["r"] = r
        after_read = seconds["stabilise"] - workflow["stabilise_read_s"]
        calls = ", ".join(f"{t:.2f}" for t in r["deseq2_vst_calls_s"])
        print(f"\nDESeq2 vst(): {r['deseq2_vst_s']:.2f} s (the fastest of three calls: {calls} s); "
              f"stabilise job {seconds['stabilise']:.2f} s: "
              f"{r['deseq2_vst_s'] / seconds['stabilise']:.1f}x faster (target >= 3x); without reading and "
              f"validating the input ({workflow['stabilise_read_s']:.1f} s): {after_read:.2f} s, "
              f"{r['deseq2_vst_s'] / after_read:.1f}x")  # fmt: skip
        lme4 = r["lme4_s_per_gene"]
        print(f"lme4 loop: {1e3 * lme4:.1f} ms per gene ({r['lme4_genes']} genes)")
        if marginal is not None:
            between = args.genes - args.marginal_genes
            print(f"LMM through the workflow at the margin: {1e6 * marginal:.1f} us per gene (LMM jobs' time at "
                  f"{args.genes} genes minus at {args.marginal_genes} genes, over the {between} genes between): "
                  f"{lme4 / marginal:.0f}x below the lme4 loop (target >= 300x); from the jobs' CPU time: "
                  f"{1e6 * marginal_cpu:.1f} us per gene, {lme4 / marginal_cpu:.0f}x")  # fmt: skip
            if "lmm_stage_marginal_cpu_s_per_gene" in results:
                stage_marginal = results["lmm_stage_marginal_cpu_s_per_gene"]
                print(f"LMM stages in one process at the margin: {1e6 * stage_marginal:.1f} us per gene, "
                      f"{lme4 / stage_marginal:.0f}x below the lme4 loop")  # fmt: skip
        print(f"LMM through the workflow on average: {1e6 * lmm_s / args.genes:.1f} us per gene (all LMM jobs / "
              f"genes, start-up included): {lme4 / (lmm_s / args.genes):.0f}x below the lme4 loop")  # fmt: skip
    load_end = os.getloadavg()
    results["load_average"] = {"start": load_start, "end": load_end}
    print(f"\nload average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
