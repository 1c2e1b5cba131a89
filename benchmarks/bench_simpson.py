"""Benchmark: batchmix.simpson.scan over all gene pairs against naive peers.

    .venv/bin/python benchmarks/bench_simpson.py            # 20,000 genes x 500 samples
    .venv/bin/python benchmarks/bench_simpson.py --genes 5000 --samples 200

Each contender runs in its own subprocess on the same generated data (seeded),
so that its peak resident memory (ru_maxrss of that process, data included) is
its own.  Peers do the same statistical work (pooled and within-batch
correlations of every pair, then the reversal bound) on a subset of genes:

- scipy:    scipy.stats.pearsonr, one call per pair and scale (pooled, within);
- corrcoef: numpy.corrcoef of the full G x G matrices (pooled, batch-centred),
            which needs O(G^2) memory: 2 x 8 G^2 bytes = 6.4 GB at G = 20,000.

Throughput is pairs per second; ratios are batchmix / peer.  Target for the
full run: under 60 s and under 2 GB peak memory on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd


def make_data(n_genes: int, n_samples: int, n_batches: int, seed: int = 0):
    """Genes with random batch means (pooled correlations driven by batch) and
    independent within-batch noise, plus 100 planted reversal pairs."""
    rng = np.random.default_rng(seed)
    codes = np.arange(n_samples) % n_batches
    values = rng.standard_normal((n_genes, n_samples))
    values += 1.5 * rng.standard_normal((n_genes, n_batches))[:, codes]
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


def run_batchmix(args) -> dict:
    from batchmix import simpson

    frame, batch = make_data(args.genes, args.samples, args.batches)
    data_mb = peak_rss_mb()
    start = time.perf_counter()
    result = simpson.scan(frame, batch, fdr=args.fdr, block_size=args.block_size)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "pairs": result.n_pairs,
        "candidates": result.n_candidates,
        "reversals": len(result.reversals),
        "peak_mb": peak_rss_mb(),
        "data_mb": data_mb,
    }


def _reversal_mask(r_pooled, r_within, n, n_batches, fdr):
    # the same bound batchmix uses, written out: p <= fdr <=> both one-sided
    # Fisher-z tests at fdr/2 in opposite directions
    from scipy import stats

    z = stats.norm.isf(fdr / 2)
    c_t, c_w = np.tanh(z / np.sqrt(n - 3)), np.tanh(z / np.sqrt(n - n_batches - 2))
    return ((r_pooled >= c_t) & (r_within <= -c_w)) | ((r_pooled <= -c_t) & (r_within >= c_w))


def _centred_within(frame, batch):
    labels = batch.reindex(frame.columns).to_numpy()
    return (frame.T - frame.T.groupby(labels).transform("mean")).T.to_numpy()


def run_scipy(args) -> dict:
    from scipy import stats

    frame, batch = make_data(args.genes, args.samples, args.batches)
    frame = frame.iloc[: args.scipy_genes]
    pooled, within = frame.to_numpy(), _centred_within(frame, batch)
    start = time.perf_counter()
    hits = 0
    g = pooled.shape[0]
    for i in range(g):
        for j in range(i + 1, g):
            r_t = stats.pearsonr(pooled[i], pooled[j]).statistic
            r_w = stats.pearsonr(within[i], within[j]).statistic
            hits += bool(_reversal_mask(r_t, r_w, args.samples, args.batches, args.fdr))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "pairs": g * (g - 1) // 2, "candidates": hits, "peak_mb": peak_rss_mb()}


def run_corrcoef(args) -> dict:
    frame, batch = make_data(args.genes, args.samples, args.batches)
    frame = frame.iloc[: args.corrcoef_genes]
    pooled, within = frame.to_numpy(), _centred_within(frame, batch)
    start = time.perf_counter()
    r_pooled = np.corrcoef(pooled)
    r_within = np.corrcoef(within)
    mask = np.triu(_reversal_mask(r_pooled, r_within, args.samples, args.batches, args.fdr), k=1)
    hits = int(mask.sum())
    seconds = time.perf_counter() - start
    g = pooled.shape[0]
    return {"seconds": seconds, "pairs": g * (g - 1) // 2, "candidates": hits, "peak_mb": peak_rss_mb()}


RUNNERS = {"batchmix": run_batchmix, "scipy": run_scipy, "corrcoef": run_corrcoef}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--fdr", type=float, default=0.05)
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--scipy-genes", type=int, default=120)
    parser.add_argument("--corrcoef-genes", type=int, default=5000)
    parser.add_argument("--child", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(RUNNERS[args.child](args)))
        return

    passthrough = [a for a in sys.argv[1:]]
    results = {}
    for name in ("batchmix", "scipy", "corrcoef"):
        out = subprocess.run(
            [sys.executable, __file__, *passthrough, "--child", name],
            check=True, capture_output=True, text=True,
        )
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])

    ours = results["batchmix"]
    ours_rate = ours["pairs"] / ours["seconds"]
    print(f"data: {args.genes} genes x {args.samples} samples, {args.batches} batches, fdr {args.fdr}")
    print(
        f"batchmix.simpson.scan  all {ours['pairs']:,} pairs: {ours['seconds']:.1f} s, "
        f"{ours_rate:,.0f} pairs/s, peak RSS {ours['peak_mb']:.0f} MB (data alone {ours['data_mb']:.0f} MB), "
        f"{ours['candidates']:,} candidates, {ours['reversals']:,} reversals"
    )
    for name, label, genes in (
        ("scipy", "scipy pearsonr loop", min(args.scipy_genes, args.genes)),
        ("corrcoef", "numpy corrcoef full", min(args.corrcoef_genes, args.genes)),
    ):
        peer = results[name]
        rate = peer["pairs"] / peer["seconds"]
        print(
            f"{label:<22} {genes} genes, {peer['pairs']:,} pairs: {peer['seconds']:.2f} s, {rate:,.0f} pairs/s, "
            f"peak RSS {peer['peak_mb']:.0f} MB; batchmix/peer throughput = {ours_rate / rate:.1f}x"
        )
    full_matrix_gb = 2 * 8 * args.genes**2 / 1e9
    print(f"corrcoef at {args.genes} genes would hold two {args.genes}x{args.genes} float64 matrices: {full_matrix_gb:.1f} GB")
    verdict = "MET" if ours["seconds"] < 60 and ours["peak_mb"] < 2048 else "NOT MET"
    print(f"target (< 60 s and < 2 GB peak for the scan): {verdict}")


if __name__ == "__main__":
    main()
