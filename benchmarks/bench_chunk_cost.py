"""Benchmark: measured cost of each workflow stage, for the cluster plan and the resource model.

    .venv/bin/python benchmarks/bench_chunk_cost.py              # default grid, about 10 min on 2 cores
    .venv/bin/python benchmarks/bench_chunk_cost.py --quick      # small grid, about 1 min
    .venv/bin/python benchmarks/bench_chunk_cost.py --target-genes 60000 --target-samples 20000

For each shape (genes x samples) it generates a count table (negative binomial, seeded) with a
batch effect, then runs the workflow's stages in order -- stabilise, split_genes (one chunk, so
that the LMM chunk is the whole table), lmm_chunk, gather_lmm, simpson, report -- each in a fresh
Python process calling the stage through batchmix.pipeline.registry.run_stage with the paths of
batchmix.pipeline.paths, as the Snakemake rules do. Per stage it
records wall time and peak resident memory (ru_maxrss of that process, imports and data
included) and fits

    peak MB = base_mb + bytes_per_value * values / 1e6 + bytes_per_sample_pair * samples^2 / 1e6
    wall s  = base_s  + us_per_value   * work   / 1e6 + us_per_sample_pair   * samples^2 / 1e6

(values = genes x samples; work = values, or gene pairs x samples for the Simpson scan; the
samples^2 terms catch samples x samples matrices) by non-negative least squares over the shapes,
which therefore need to vary both genes and samples (three shapes at least). The fitted constants are what
workflow/rules/resources.smk uses
(STAGE_COSTS), and the script ends with the plan for the target size: chunk count, memory and
time per job, job count and expected wall time.

A job on a cluster also holds the Snakemake process that runs the stage (it parses the workflow
and imports the package); --snakemake-job-mb (default 150, the peak RSS of `snakemake -n` on the
fixture: 131 MB) adds it to every stage's base.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from batchmix.defaults import DEFAULT_SEED  # noqa: E402  (after the path set-up above)

STAGES = ["stabilise", "split_genes", "lmm_chunk", "gather_lmm", "simpson", "report"]
DEFAULT_SHAPES = [(1000, 500), (1000, 2000), (2000, 2000), (500, 8000)]
QUICK_SHAPES = [(300, 100), (600, 200), (300, 400)]
MODEL = "~ Infection + (1|Batch)"
TIME_GROWS_WITH_SAMPLE_PAIRS = {"report"}
# The stages each one reads from (they run first, in STAGES order).
NEEDS = {
    "stabilise": set(),
    "split_genes": {"stabilise"},
    "lmm_chunk": {"stabilise", "split_genes"},
    "gather_lmm": {"stabilise", "split_genes", "lmm_chunk"},
    "simpson": {"stabilise"},
    "report": set(STAGES) - {"report"},
}


# ----------------------------------------------------------------------------- data
def make_dataset(directory: Path, n_genes: int, n_samples: int, n_batches: int, seed: int) -> None:
    """counts.tsv.gz and samples.tsv: NB counts, Infection (Mock/Infected) crossed with Batch."""
    import pandas as pd
    from batchmix.io import write_table

    rng = np.random.default_rng(seed)
    batch = np.arange(n_samples) % n_batches
    infected = (np.arange(n_samples) // n_batches) % 2
    base_mean = np.exp(rng.normal(4.0, 1.8, n_genes))[:, None]
    batch_effect = np.exp(rng.normal(0.0, 0.4, (n_genes, n_batches)))[:, batch]
    infection_effect = np.exp(rng.normal(0.0, 0.3, n_genes)[:, None] * infected)
    size_factor = np.exp(rng.normal(0.0, 0.2, n_samples))
    mu = base_mean * batch_effect * infection_effect * size_factor
    dispersion = 0.05 + 1.0 / np.sqrt(base_mean)
    counts = rng.negative_binomial(1.0 / dispersion, 1.0 / (1.0 + mu * dispersion))
    sample_ids = [f"S{i:05d}" for i in range(n_samples)]
    genes = [f"G{i:05d}" for i in range(n_genes)]
    write_table(
        pd.DataFrame(counts, index=pd.Index(genes, name="gene_id"), columns=sample_ids),
        directory / "counts.tsv.gz",
        index=True,
    )
    samples = pd.DataFrame(
        {
            "sample_id": sample_ids,
            "Infection": np.where(infected == 1, "Infected", "Mock"),
            "Batch": [f"B{b:03d}" for b in batch],
        }
    )
    write_table(samples, directory / "samples.tsv")


def stage_config(directory: Path) -> dict:
    from batchmix.config import fill_defaults

    return fill_defaults(
        {
            "expression": str(directory / "counts.tsv.gz"),
            "samples": str(directory / "samples.tsv"),
            "input_type": "counts",
            "model": MODEL,
            "batch": "Batch",
            "chunks": 1,
        }
    )


# ----------------------------------------------------------------------------- one stage (child process)
def run_stage(stage: str, directory: Path) -> None:
    """Run one stage on the files in ``directory`` as its rule would: the registry's
    :func:`batchmix.pipeline.registry.run_stage` with the paths of :mod:`batchmix.pipeline.paths`
    (outdir ``directory/results``, one LMM chunk ``1-of-1``)."""
    from batchmix.pipeline import paths
    from batchmix.pipeline.registry import run_stage as run_registered

    config = stage_config(directory)
    outdir = str(directory / "results")
    where = {"outdir": outdir, "scatteritem": "1-of-1", "n_chunks": 1}
    inputs = paths.stage_inputs(stage, config, **where)
    outputs = paths.stage_outputs(stage, config, **where)
    started = time.perf_counter()
    run_registered(stage, config, inputs, outputs, {"threads": 1}, console=False)
    wall = time.perf_counter() - started
    print(json.dumps({"stage": stage, "wall_s": wall, "peak_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started (VmHWM).

    Not getrusage's ru_maxrss: on Linux that survives fork and exec, so a child would report at
    least the RSS its parent had when it forked.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux: an upper bound


def measure(stage: str, directory: Path) -> dict:
    # One core per stage, as the rules declare (threads: 1; the Simpson scan's 2 threads are
    # left to BLAS, which its rule allows).
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if stage == "simpson":
        env.update(OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2", MKL_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", stage, "--dir", str(directory)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- fit and plan
def work_units(stage: str, genes: int, samples: int) -> float:
    if stage == "simpson":
        return genes * (genes - 1) / 2 * samples
    return genes * samples


def fit_nonnegative(features: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0 (a negative base or slope is noise)."""
    from scipy.optimize import nnls

    # Scale the columns so that the solver sees numbers of similar size.
    scale = np.where(features.max(axis=0) > 0, features.max(axis=0), 1.0)
    coefficients, _ = nnls(features / scale, target)
    return coefficients / scale


def fit_costs(rows: list[dict], snakemake_job_mb: float) -> dict[str, dict]:
    """Per stage: peak MB and wall s as base + per-value (or per pair-sample) + per sample-pair terms."""
    costs = {}
    for stage in STAGES:
        mine = [r for r in rows if r["stage"] == stage]
        if len(mine) < 3:
            continue  # three coefficients need three shapes
        values = np.array([r["genes"] * r["samples"] for r in mine], float) / 1e6
        units = np.array([work_units(stage, r["genes"], r["samples"]) for r in mine], float) / 1e6
        sample_pairs = np.array([r["samples"] ** 2 for r in mine], float) / 1e6
        ones = np.ones(len(mine))
        mem = fit_nonnegative(np.column_stack([ones, values, sample_pairs]), np.array([r["peak_mb"] for r in mine]))
        # Time gets a samples^2 term only where a samples x samples computation is known to
        # dominate (the report's sample distances); elsewhere timing noise would be fitted to it
        # and extrapolate to nonsense.
        if stage in TIME_GROWS_WITH_SAMPLE_PAIRS:
            sec = fit_nonnegative(np.column_stack([ones, units, sample_pairs]), np.array([r["wall_s"] for r in mine]))
        else:
            sec = np.append(fit_nonnegative(np.column_stack([ones, units]), np.array([r["wall_s"] for r in mine])), 0.0)
        costs[stage] = {
            "base_mb": float(mem[0]) + snakemake_job_mb,
            "bytes_per_value": float(mem[1]),
            "bytes_per_sample_pair": float(mem[2]),
            "base_s": float(sec[0]),
            "us_per_value": float(sec[1]),
            "us_per_sample_pair": float(sec[2]),
        }
    return costs


def plan(
    costs: dict[str, dict], genes: int, samples: int, concurrent_jobs: int, chunk_minutes: float, chunk_max_mb: float
) -> str:
    """The cluster plan for genes x samples, from the fitted costs (measured cost, no headroom)."""
    if "lmm_chunk" not in costs:
        return "No plan: lmm_chunk was not measured at two shapes or more."
    lmm = costs["lmm_chunk"]
    per_gene_s = lmm["us_per_value"] * samples / 1e6
    per_gene_mb = lmm["bytes_per_value"] * samples / 1e6
    fixed_s = lmm["base_s"] + lmm["us_per_sample_pair"] * samples**2 / 1e6
    fixed_mb = lmm["base_mb"] + lmm["bytes_per_sample_pair"] * samples**2 / 1e6
    genes_by_time = (chunk_minutes * 60 - fixed_s) / per_gene_s if per_gene_s > 0 else genes
    genes_by_memory = (chunk_max_mb - fixed_mb) / per_gene_mb if per_gene_mb > 0 else genes
    genes_per_chunk = max(1, int(min(genes, genes_by_time, genes_by_memory)))
    chunks = math.ceil(genes / genes_per_chunk)
    genes_per_chunk = math.ceil(genes / chunks)
    waves = math.ceil(chunks / concurrent_jobs)

    def cost(stage: str) -> tuple[float, float]:
        c = costs[stage]
        genes_in_job = genes_per_chunk if stage == "lmm_chunk" else genes
        mb = (
            c["base_mb"]
            + c["bytes_per_value"] * genes_in_job * samples / 1e6
            + c["bytes_per_sample_pair"] * samples**2 / 1e6
        )
        s = (
            c["base_s"]
            + c["us_per_value"] * work_units(stage, genes_in_job, samples) / 1e6
            + c["us_per_sample_pair"] * samples**2 / 1e6
        )
        return mb, s

    lines = [
        f"Plan for {genes:,} genes x {samples:,} samples ({genes * samples / 1e9:.2f}e9 values; "
        f"LMM chunks of at most {chunk_minutes:g} min and {chunk_max_mb:,.0f} MB; {concurrent_jobs} jobs at once):",
        f"  {'stage':<12} {'jobs':>6} {'memory/job':>12} {'time/job':>10}",
    ]
    for stage in STAGES:
        if stage in costs:
            mb, s = cost(stage)
            lines.append(
                f"  {stage:<12} {chunks if stage == 'lmm_chunk' else 1:>6} {mb / 1024:>9.1f} GB {s / 60:>7.1f} min"
            )
        else:
            lines.append(f"  {stage:<12} {'':>6} {'not measured':>12}")
    lines.append(
        f"  LMM chunks: {chunks} jobs of {genes_per_chunk} genes, in {waves} wave(s) of up to {concurrent_jobs}"
    )
    # Critical path: stabilise -> split -> chunk waves -> gather -> report, with the Simpson scan
    # running next to split/chunks/gather.
    if all(stage in costs for stage in STAGES):
        seconds = {stage: cost(stage)[1] for stage in STAGES}
        lmm_path = seconds["split_genes"] + waves * seconds["lmm_chunk"] + seconds["gather_lmm"]
        critical = seconds["stabilise"] + max(lmm_path, seconds["simpson"]) + seconds["report"]
        lines.append(
            f"  Expected wall time (critical path, no queue wait): {critical / 3600:.1f} h "
            f"(LMM part: {lmm_path / 3600:.2f} h)"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small grid (checks the script, not for planning)")
    parser.add_argument("--shapes", help="genes x samples list, e.g. 1000x500,2000x2000")
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="stages to measure, comma-separated (the ones they read from still run first)",
    )
    parser.add_argument("--batches", type=int, default=40, help="batches (levels of the random effect), default 40")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--snakemake-job-mb",
        type=float,
        default=150.0,
        help="RSS of the Snakemake process of a cluster job, added to every base (MB)",
    )
    parser.add_argument("--target-genes", type=int, default=60_000)
    parser.add_argument("--target-samples", type=int, default=20_000)
    parser.add_argument("--concurrent-jobs", type=int, default=100, help="jobs running at once (profile: jobs)")
    parser.add_argument(
        "--from-json",
        type=Path,
        action="append",
        default=[],
        help="reuse measurements written by --json (repeatable) instead of measuring",
    )
    parser.add_argument("--chunk-minutes", type=float, default=15.0, help="target time of one LMM chunk")
    parser.add_argument("--chunk-max-mb", type=float, default=4000.0, help="largest memory of one LMM chunk")
    parser.add_argument("--json", type=Path, help="also write the measurements and fitted costs here")
    args = parser.parse_args()

    if args.worker:
        run_stage(args.worker, args.dir)
        return

    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    else:
        shapes = QUICK_SHAPES if args.quick else DEFAULT_SHAPES
    wanted = args.stages.split(",")
    unknown = set(wanted) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages: {sorted(unknown)}; choose from {STAGES}")
    rows = [row for path in args.from_json for row in json.loads(path.read_text())["measurements"]]
    if args.from_json:
        shapes = []
    print(f"{'genes':>6} {'samples':>7} {'stage':<12} {'wall_s':>8} {'peak_mb':>8}", flush=True)
    for genes, samples in shapes:
        with tempfile.TemporaryDirectory(prefix="bench_chunk_cost_") as tmp:
            directory = Path(tmp)
            make_dataset(directory, genes, samples, min(args.batches, samples // 4), args.seed)
            needed = set(wanted).union(*(NEEDS[s] for s in wanted))
            for stage in [s for s in STAGES if s in needed]:
                result = measure(stage, directory)
                row = {"genes": genes, "samples": samples, **result}
                rows.append(row)
                print(f"{genes:>6} {samples:>7} {stage:<12} {row['wall_s']:>8.2f} {row['peak_mb']:>8.0f}", flush=True)

    costs = fit_costs(rows, args.snakemake_job_mb)
    print("\nFitted costs (resources.smk STAGE_COSTS):")
    for stage, c in costs.items():
        print(
            f'    "{stage}": StageCost(base_mb={c["base_mb"]:.0f}, bytes_per_value={c["bytes_per_value"]:.1f}, '
            f"bytes_per_sample_pair={c['bytes_per_sample_pair']:.2f}, base_s={c['base_s']:.1f}, "
            f"us_per_value={c['us_per_value']:.4g}, us_per_sample_pair={c['us_per_sample_pair']:.4g}),"
        )
    print()
    print(
        plan(costs, args.target_genes, args.target_samples, args.concurrent_jobs, args.chunk_minutes, args.chunk_max_mb)
    )
    if args.json:
        args.json.write_text(json.dumps({"measurements": rows, "costs": costs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
