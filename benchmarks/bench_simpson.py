"""Benchmark: batchmix.simpson over all gene pairs, the random-effects test next to the pooled test,
and the cost of one sign-flip calibration replicate.

    .venv/bin/python benchmarks/bench_simpson.py                 # 20,000 genes x 500 samples, B = 20
    .venv/bin/python benchmarks/bench_simpson.py --genes 5000 --batch-effects strong

Each contender runs in its own subprocess on the same generated data (seeded), so that its peak
resident memory (ru_maxrss of that process, data included) is its own:

- random_effects: ``simpson.scan(within_test="random_effects")`` (prepare + all block pairs + step-up);
- pooled:         ``simpson.scan(within_test="pooled")``, the earlier test;
- replicate:      ``simpson.sign_flip_replicate`` on prepared data (one calibration job).

Data.  ``realistic`` (default): every gene has a batch effect of its own size, SD 0.1, 0.3 or 1.0
(probabilities 0.4, 0.4, 0.2) against a within-batch SD of 1, plus 100 planted reversal pairs.
``strong``: every gene has a batch effect of SD 1.5 (ICC 0.69 for all genes), the worst case for the
pooled bound, since most pairs then pass it.  Target: under 20 s and under 2 GB for the scan.

The per-batch correlations of the pairs past the pooled bound come from a numba kernel (pair by pair)
when they are under a tenth of a block pair, else from one matrix product per batch; a numba screen
(batchmix.simpson.screen) then bounds z_RE cheaply and sends only the pairs it cannot drop to float64.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd


def make_data(n_genes: int, n_samples: int, n_batches: int, batch_effects: str, seed: int = 0):
    """Genes x samples with batch effects and 100 planted reversal pairs (see the module docstring)."""
    rng = np.random.default_rng(seed)
    codes = np.arange(n_samples) % n_batches
    values = rng.standard_normal((n_genes, n_samples))
    if batch_effects == "strong":
        sizes = np.full(n_genes, 1.5)
    else:
        sizes = rng.choice([0.1, 0.3, 1.0], p=[0.4, 0.4, 0.2], size=n_genes)
    values += sizes[:, None] * rng.standard_normal((n_genes, n_batches))[:, codes]
    for k in range(min(100, n_genes // 2)):
        means = rng.standard_normal(n_batches)
        means = 2.0 * (means - means.mean()) / means.std()
        noise = rng.standard_normal((2, n_samples))
        values[2 * k] = means[codes] + noise[0]
        values[2 * k + 1] = means[codes] - 0.7 * noise[0] - 0.7 * noise[1]
    samples = [f"s{i}" for i in range(n_samples)]
    frame = pd.DataFrame(values, index=[f"g{i}" for i in range(n_genes)], columns=samples)
    batch = pd.Series([f"b{c}" for c in codes], index=samples)
    return frame, batch


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_scan(args, within_test: str) -> dict:
    from batchmix import simpson

    frame, batch = make_data(args.genes, args.samples, args.batches, args.batch_effects)
    data_mb = peak_rss_mb()
    start = time.perf_counter()
    result = simpson.scan(frame, batch, fdr=args.fdr, block_size=args.block_size, within_test=within_test)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "pairs": result.n_pairs,
        "candidates": result.n_candidates,
        "reversals": len(result.reversals),
        "peak_mb": peak_rss_mb(),
        "data_mb": data_mb,
    }


def run_replicate(args) -> dict:
    from batchmix import simpson

    frame, batch = make_data(args.genes, args.samples, args.batches, args.batch_effects)
    start = time.perf_counter()
    data = simpson.prepare(frame, batch)
    prepare_seconds = time.perf_counter() - start
    start = time.perf_counter()
    flagged = simpson.sign_flip_replicate(data, 0, fdr=args.fdr, block_size=args.block_size)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "prepare_seconds": prepare_seconds, "flagged_null": flagged, "peak_mb": peak_rss_mb()}


RUNNERS = {
    "random_effects": lambda args: run_scan(args, "random_effects"),
    "pooled": lambda args: run_scan(args, "pooled"),
    "replicate": run_replicate,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--fdr", type=float, default=0.05)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--batch-effects", choices=["realistic", "strong"], default="realistic")
    parser.add_argument("--only", choices=sorted(RUNNERS), action="append", help="run only these contenders")
    parser.add_argument("--child", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(RUNNERS[args.child](args)))
        return

    passthrough = [a for a in sys.argv[1:]]
    names = args.only or ["random_effects", "pooled", "replicate"]
    load = os.getloadavg()
    results = {}
    for name in names:
        out = subprocess.run(
            [sys.executable, __file__, *passthrough, "--child", name], check=True, capture_output=True, text=True
        )
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    load_after = os.getloadavg()
    print(
        f"data: {args.genes} genes x {args.samples} samples, {args.batches} batches, "
        f"batch effects {args.batch_effects}, fdr {args.fdr}, block size {args.block_size}"
    )
    print(f"load average (1 min) before {load[0]:.2f}, after {load_after[0]:.2f}; cores {os.cpu_count()}")
    import numba

    print(f"screen: numba {numba.__version__} (kernels compiled once and cached on disk)")
    for name in ("random_effects", "pooled"):
        if name in results:
            r = results[name]
            print(
                f"scan within_test={name:<15} {r['pairs']:,} pairs: {r['seconds']:.1f} s, "
                f"{r['pairs'] / r['seconds']:,.0f} pairs/s, peak RSS {r['peak_mb']:.0f} MB "
                f"(data alone {r['data_mb']:.0f} MB), {r['candidates']:,} candidates, {r['reversals']:,} reversals"
            )
    if "replicate" in results:
        r = results["replicate"]
        print(
            f"one sign-flip replicate (random_effects): {r['seconds']:.1f} s after prepare "
            f"({r['prepare_seconds']:.1f} s), peak RSS {r['peak_mb']:.0f} MB, {r['flagged_null']} pairs flagged"
        )
    if "random_effects" in results:
        r = results["random_effects"]
        verdict = "MET" if r["seconds"] < 20 and r["peak_mb"] < 2048 else "NOT MET"
        print(f"target (random_effects scan < 20 s and < 2 GB peak): {verdict}")


if __name__ == "__main__":
    main()
