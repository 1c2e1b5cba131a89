"""Benchmark: the cost of the Parquet matrices between stages, by row-group size and compression.

Every stage after ``stabilise`` reads the stabilised matrix, and ``gather_lmm`` writes the corrected
one; both are Parquet with row groups of genes (:mod:`batchmix.io.matrices`). This times writing and
reading a genes x samples float64 matrix (random values rounded to 12 significant digits, as the
stages write them) with pyarrow, per gene, for the row-group sizes and compressions compared when
they were chosen, and with :class:`batchmix.io.matrices.MatrixWriter` as the stages call it. Process
CPU time, best of ``--repeats``, one thread.

Usage::

    .venv/bin/python benchmarks/bench_matrix_io.py                  # 6,000 genes x 500 samples
    .venv/bin/python benchmarks/bench_matrix_io.py --genes 20000 --samples 2000
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402 (thread limits must be set before numpy loads)
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
from batchmix.io.matrices import MatrixWriter, genes_per_row_group, round_significant  # noqa: E402


def best_cpu(function, repeats: int) -> float:
    """The least process CPU time of ``repeats`` calls of ``function()``."""
    times = []
    for _ in range(repeats):
        started = time.process_time()
        function()
        times.append(time.process_time() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genes", type=int, default=6000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(20261208)
    values = np.asfortranarray(round_significant(rng.normal(8.0, 2.0, (args.genes, args.samples))))
    genes = [f"gene{i}" for i in range(args.genes)]
    samples = [f"S{j}" for j in range(args.samples)]
    schema = pa.schema([pa.field("gene_id", pa.string())] + [pa.field(s, pa.float64()) for s in samples])
    folder = Path(tempfile.mkdtemp(prefix="bench_matrix_io."))
    path = folder / "m.parquet"

    def write(rows: int, compression: str) -> None:
        with pq.ParquetWriter(path, schema, compression=compression, use_dictionary=["gene_id"],
                              write_statistics=False) as writer:  # fmt: skip
            for g0 in range(0, args.genes, rows):
                columns = [pa.array(genes[g0 : g0 + rows], type=pa.string())]
                columns += [pa.array(values[g0 : g0 + rows, j]) for j in range(args.samples)]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=rows)

    def read() -> None:
        parquet = pq.ParquetFile(path)
        for i in range(parquet.metadata.num_row_groups):
            table = parquet.read_row_group(i, use_threads=False)
            np.column_stack([column.to_numpy() for column in table.columns[1:]])

    print(f"{args.genes} genes x {args.samples} samples, float64; microseconds per gene (process CPU, best of "
          f"{args.repeats})")  # fmt: skip
    print(f"{'genes per row group':>20} {'compression':>12} {'write':>8} {'read':>8} {'MB':>8}")
    for rows in (1024, 2000, 5000):
        for compression in ("snappy", "none"):
            written = best_cpu(lambda: write(rows, compression), args.repeats)  # noqa: B023 (called at once)
            read_s = best_cpu(read, args.repeats)
            size = path.stat().st_size / 1e6
            print(f"{rows:>20} {compression:>12} {1e6 * written / args.genes:>8.1f} "
                  f"{1e6 * read_s / args.genes:>8.1f} {size:>8.1f}")  # fmt: skip

    def batchmix_write() -> None:
        with MatrixWriter(path, samples, n_genes=args.genes, significant_digits=None) as writer:
            writer.write_values(genes, values)

    written = best_cpu(batchmix_write, args.repeats)
    print(f"MatrixWriter (row groups of {genes_per_row_group(args.genes)} genes, as the stages write them): "
          f"write {1e6 * written / args.genes:.1f}, read {1e6 * best_cpu(read, args.repeats) / args.genes:.1f} "
          f"us per gene, {path.stat().st_size / 1e6:.1f} MB")  # fmt: skip
    path.unlink()
    folder.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
