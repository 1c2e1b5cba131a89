"""Write the input of make_reference.R: the stabilised expression of 200 genes of the embedded example.

Run from the repository root, after ``batchmix stabilise`` on the embedded example::

    .venv/bin/batchmix stabilise --config config/config.yaml --outdir /tmp/example
    .venv/bin/python tests/data/compare/make_input.py /tmp/example/vst

Writes ``tests/data/compare/vst_200.tsv.gz`` (genes × samples, full double precision: R and the tests
read the same numbers) and ``samples.tsv`` (the example's sheet, the columns the models use). The
genes: 190 evenly spaced over the fitted (status ``ok``) genes, plus the 10 others with the smallest
ML likelihood-ratio statistic of ``(1|Batch)`` (fits on or near the boundary, which lme4 reports as
singular), so that the reference covers both.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from batchmix import lmm
from batchmix.io import read_matrix, read_result_table, read_samples

OUT = Path(__file__).resolve().parent
REPO = OUT.parents[2]


def main(vst_dir: str) -> None:
    expression = read_matrix(f"{vst_dir}/expression.parquet")
    status = read_result_table(f"{vst_dir}/gene_status.tsv").set_index("gene_id")["status"]
    ok = [g for g in expression.index if status.get(g) == "ok"]
    spaced = [ok[i] for i in np.linspace(0, len(ok) - 1, 190).round().astype(int)]
    samples = read_samples(REPO / "resources/example/samples.tsv")[["Infection", "Batch"]]
    rest = expression.loc[[g for g in ok if g not in set(spaced)]]
    fits = lmm.fit(rest, samples, "~ Infection + (1|Batch)", reml=False).gene_fits
    boundary = fits.sort_values(["lrt_stat", "gene_id"]).head(10)["gene_id"].tolist()
    chosen = [g for g in expression.index if g in set(spaced) | set(boundary)]
    table = expression.loc[chosen]
    table.index.name = "gene_id"
    table.to_csv(
        OUT / "vst_200.tsv.gz",
        sep="\t",
        float_format="%.17g",
        lineterminator="\n",
        compression={"method": "gzip", "mtime": 0},
    )
    samples.loc[table.columns].to_csv(OUT / "samples.tsv", sep="\t", lineterminator="\n")
    print(f"wrote {len(table)} genes x {table.shape[1]} samples to {OUT / 'vst_200.tsv.gz'}")


if __name__ == "__main__":
    main(sys.argv[1])
