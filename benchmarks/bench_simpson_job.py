"""Benchmark: one Simpson block-pair job at scale, measured on part of its block pairs.

    .venv/bin/python benchmarks/bench_simpson_job.py RUN_DIR [--block-pairs 6] [--jobs 4]

RUN_DIR is a finished workflow run (``benchmarks/bench_pipeline.py --keep``, for instance at 60,000
genes x 2,000 samples with ``--set 'simpson={enabled: false}'``): its ``bench.yaml`` and
``results/vst/``. In a fresh process this script does what a ``simpson_block`` job does
(:func:`batchmix.pipeline.simpson._prepare`: read the stabilised matrix, residualise every gene) and
then scans ``--block-pairs`` of the job's block pairs, spread over the job's share (the first, the
last and evenly between), instead of all of them. It prints the time of the preparation, the time
(and the CPU time) per block pair, the peak RSS of the process (``ru_maxrss``, everything included) and, from those,
the time of a whole job when the scan is spread over ``--jobs`` jobs (``simpson.jobs``).

The per-block-pair time depends on the data (how many pairs pass the pooled bound), so the
extrapolation is only as good as the sample of block pairs.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--block-pairs", type=int, default=6, help="block pairs scanned (of the job's share)")
    parser.add_argument("--jobs", type=int, default=4, help="simpson.jobs the whole scan is spread over")
    args = parser.parse_args(argv)

    os.chdir(args.run_dir)
    from batchmix import simpson
    from batchmix.config import fill_defaults, validate_config
    from batchmix.pipeline import paths
    from batchmix.pipeline.simpson import _prepare, _scan_options

    load = os.getloadavg()
    config = yaml.safe_load(Path("config/config.yaml").read_text())
    config.update(yaml.safe_load(Path("bench.yaml").read_text()))
    config["simpson"] = {**(config.get("simpson") or {}), "enabled": True}
    config = validate_config(config, "bench.yaml")
    config.update(fill_defaults(config))
    started = time.perf_counter()
    scan = _prepare(config, paths.stage_inputs("simpson_block", config))
    prepare_s = time.perf_counter() - started
    block_size = int(config["simpson"]["block_size"])
    every = simpson.block_pairs(scan.data.n_genes, block_size)
    mine = every[0 :: args.jobs]
    chosen = sorted(set(np.linspace(0, len(mine) - 1, min(args.block_pairs, len(mine))).round().astype(int)))
    options = _scan_options(config)
    started, started_cpu = time.perf_counter(), time.process_time()
    candidates = sum(len(simpson.scan_block_pair(scan.data, *mine[i], **options)) for i in chosen)
    per_pair = (time.perf_counter() - started) / len(chosen)
    # CPU time is the steadier number on a shared machine (the first block pair includes numba's
    # compilation or the load of its cache)
    per_pair_cpu = (time.process_time() - started_cpu) / len(chosen)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    genes, samples = scan.data.n_genes, scan.data.values.shape[1]
    job_s = prepare_s + per_pair * len(mine)
    print(f"simpson_block at {genes} genes x {samples} samples (block_size {block_size}; load average at start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")  # fmt: skip
    print(f"read and prepare: {prepare_s:.1f} s; {len(chosen)} of the job's {len(mine)} block pairs scanned: "
          f"{per_pair:.2f} s per block pair, {per_pair_cpu:.2f} s CPU ({candidates} candidates)")  # fmt: skip
    print(f"peak RSS of this process: {peak_mb:.0f} MB")
    print(f"one job of {args.jobs} ({len(mine)} of {len(every)} block pairs): about {job_s / 60:.1f} min; "
          f"all {args.jobs} jobs: {args.jobs * job_s / 3600:.2f} CPU hours")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
