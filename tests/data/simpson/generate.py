"""Planted Simpson reversals with realistic decoys, on a given batch design.

Used by tests/unit/test_simpson_random_effects.py (imported by path; nothing is written to disk).
Values are on a VST-like log2 scale; a zero count stabilises to ``ZERO_VALUE``.

Gene kinds (each gene belongs to one; pair truth is known):

- ``null``: gene mean, a batch effect of gene-specific size (most small, some large) and, where the
  design has it, an effect of the cell type nested in the batch; independent within batches.  Pooled
  correlations between null genes come from batch and cell-type means only.
- ``planted``: pairs (2k, 2k+1) whose batch means move together (or opposite) and whose within-batch
  correlation has the opposite sign, -rho in every batch: true reversals.
- ``zero_inflated``: pairs of genes at ``ZERO_VALUE`` outside a few batches: gene a is expressed
  throughout a third of the batches, gene b throughout another third (a strongly negative pooled r);
  in the remaining batches both are zero except one or two shared samples (r_b near +1 inside those
  batches, made of single samples): a reversal that only the count rule (>= 3 expressed samples)
  stops.
- ``one_batch``: pairs with shared batch means and a strong opposite within-batch correlation in ONE
  batch where both genes vary a lot; independent and quiet elsewhere.  The pooled r_W is dominated by
  that batch.
- ``mixed_sign``: pairs with shared batch means, a strong opposite within-batch correlation in a third
  of the batches (with large within-batch variance) and an equally strong same-sign correlation in the
  others: no consistent direction.

Only ``planted`` pairs are true reversals; every decoy is a false discovery.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ZERO_VALUE = 4.0
DESIGN = Path(__file__).resolve().parent / "gse147507_design.tsv"


def gse147507_design() -> pd.DataFrame:
    """Sample sheet of the embedded GSE147507 example: sample_id -> Celltype, Batch (10 series)."""
    return pd.read_csv(DESIGN, sep="\t", index_col=0, dtype=str)


def balanced_design(n_batches: int, per_batch: int) -> pd.DataFrame:
    """n_batches batches of per_batch samples, no nested cell type."""
    batch = np.repeat([f"batch{b}" for b in range(n_batches)], per_batch)
    samples = [f"s{i:04d}" for i in range(batch.size)]
    return pd.DataFrame({"Celltype": "one", "Batch": batch}, index=pd.Index(samples, name="sample_id"))


def _spread(rng, n):
    means = rng.standard_normal(n)
    return (means - means.mean()) / means.std()


def make_planted(
    design: pd.DataFrame,
    *,
    n_null: int = 300,
    n_planted: int = 20,
    n_zero_inflated: int = 10,
    n_one_batch: int = 10,
    n_mixed: int = 10,
    rho: float = 0.6,
    seed: int = 0,
):
    """Genes x samples with planted reversals and decoys on ``design`` (columns Batch, Celltype).

    Returns
    -------
    frame : pandas.DataFrame
        Genes x samples.
    batch : pandas.Series
        Sample -> batch.
    truth : set of tuple
        The planted pairs (gene_a, gene_b), gene_a first in the frame's order.
    kinds : pandas.Series
        Gene -> kind.
    """
    rng = np.random.default_rng(seed)
    labels = design["Batch"].to_numpy()
    batch_names, codes = np.unique(labels, return_inverse=True)
    n_batches, n = batch_names.size, labels.size
    cell_names, cell_codes = np.unique(design["Celltype"].to_numpy(), return_inverse=True)
    rows, kinds = [], []

    def add(values, kind):
        rows.append(values)
        kinds.append(kind)

    for _ in range(n_null):
        mean = rng.normal(8.0, 1.5)
        batch_sd = rng.choice([0.1, 0.3, 1.0], p=[0.4, 0.4, 0.2])
        cell_sd = rng.choice([0.0, 1.5], p=[0.5, 0.5]) if cell_names.size > 1 else 0.0
        sd = rng.uniform(0.4, 1.0)
        add(
            mean
            + batch_sd * rng.standard_normal(n_batches)[codes]
            + cell_sd * rng.standard_normal(cell_names.size)[cell_codes]
            + sd * rng.standard_normal(n),
            "null",
        )

    truth = set()
    for k in range(n_planted):
        sign = 1.0 if k % 2 == 0 else -1.0
        means = 1.5 * _spread(rng, n_batches)[codes]
        shared, own = rng.standard_normal((2, n))
        a = 8.0 + means + 0.7 * shared
        b = 8.0 + sign * means - sign * 0.7 * (rho * shared + np.sqrt(1 - rho**2) * own)
        truth.add((len(rows), len(rows) + 1))
        add(a, "planted")
        add(b, "planted")

    for _ in range(n_zero_inflated):
        a = np.full(n, ZERO_VALUE)
        b = np.full(n, ZERO_VALUE)
        order = rng.permutation(n_batches)
        third = max(1, n_batches // 3)
        # a is expressed throughout some batches, b throughout others: a strongly negative pooled r
        for batch_code in order[:third]:
            members = codes == batch_code
            a[members] = rng.normal(8.0, 0.5, size=members.sum())
        for batch_code in order[third : 2 * third]:
            members = codes == batch_code
            b[members] = rng.normal(8.0, 0.5, size=members.sum())
        # elsewhere both are zero except one or two shared samples: r_b near +1 made of single samples
        for batch_code in order[2 * third :]:
            members = np.flatnonzero(codes == batch_code)
            spikes = rng.choice(members, size=min(2, members.size - 1), replace=False)
            height = rng.uniform(2.0, 4.0, size=spikes.size)
            a[spikes] += height
            b[spikes] += height + 0.2 * rng.standard_normal(spikes.size)
        add(a, "zero_inflated")
        add(b, "zero_inflated")

    for _ in range(n_one_batch):
        means = 2.0 * _spread(rng, n_batches)[codes]
        a = 8.0 + means + 0.3 * rng.standard_normal(n)
        b = 8.0 + means + 0.3 * rng.standard_normal(n)
        loud = rng.integers(n_batches)
        members = np.flatnonzero(codes == loud)
        shared = rng.standard_normal(members.size)
        a[members] += 3.0 * shared
        b[members] += -3.0 * (0.9 * shared + np.sqrt(1 - 0.81) * rng.standard_normal(members.size))
        add(a, "one_batch")
        add(b, "one_batch")

    for _ in range(n_mixed):
        means = 2.0 * _spread(rng, n_batches)[codes]
        a = 8.0 + means.copy()
        b = 8.0 + means.copy()
        opposite = rng.permutation(n_batches)[: max(1, n_batches // 3)]
        for batch_code in range(n_batches):
            members = np.flatnonzero(codes == batch_code)
            scale = 2.0 if batch_code in opposite else 0.7
            sign = -1.0 if batch_code in opposite else 1.0
            shared = rng.standard_normal(members.size)
            a[members] += scale * shared
            b[members] += scale * sign * (0.8 * shared + 0.6 * rng.standard_normal(members.size))
        add(a, "mixed_sign")
        add(b, "mixed_sign")

    genes = [f"g{i:04d}" for i in range(len(rows))]
    frame = pd.DataFrame(np.vstack(rows), index=genes, columns=design.index)
    batch = pd.Series(labels, index=design.index, name="Batch")
    truth_named = {(genes[a], genes[b]) for a, b in truth}
    return frame, batch, truth_named, pd.Series(kinds, index=genes, name="kind")
