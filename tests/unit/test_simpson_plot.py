"""The Simpson figure (batchmix.plots.simpson): drawn from a reversal table, never computing a statistic."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from batchmix import simpson
from batchmix.plots.simpson import plot_reversals
from matplotlib.figure import Figure


def planted_data(seed: int, n_genes: int = 40, n_planted: int = 4, n_batches: int = 6, per_batch: int = 20):
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(n_batches), per_batch)
    n = codes.size
    values = rng.standard_normal((n_genes, n)) + 1.5 * rng.standard_normal((n_genes, n_batches))[:, codes]
    for k in range(n_planted):
        means = rng.standard_normal(n_batches)
        means = 2.0 * (means - means.mean()) / means.std()
        noise = rng.standard_normal((2, n))
        values[2 * k] = means[codes] + noise[0]
        values[2 * k + 1] = means[codes] - 0.7 * noise[0] - 0.7 * noise[1]
    samples = [f"s{i:03d}" for i in range(n)]
    frame = pd.DataFrame(values, index=[f"g{i:03d}" for i in range(n_genes)], columns=samples)
    return frame, pd.Series([f"batch{c}" for c in codes], index=samples, name="batch")


def test_plot_reversals_draws_pooled_and_per_batch_panels():
    frame, batch = planted_data(seed=2)
    table = simpson.scan(frame, batch).reversals
    assert len(table) >= 3
    fig = plot_reversals(frame, batch, table, top=3)
    assert isinstance(fig, Figure)
    axes = fig.get_axes()
    assert len(axes) == 6
    pooled, per_batch = axes[0], axes[1]
    assert len(pooled.lines) == 1  # one pooled regression line
    assert len(per_batch.lines) == batch.nunique()  # one line per batch
    assert len(per_batch.collections) == batch.nunique()
    assert f"{table.mu_r.iloc[0]:+.2f}" in per_batch.get_title()
    fig.savefig(io.BytesIO(), format="png")  # renders without pyplot
    empty = plot_reversals(frame, batch, table.iloc[:0])
    assert isinstance(empty, Figure)
    assert "No Simpson" in empty.get_axes()[0].texts[0].get_text()


def test_integer_gene_labels_are_drawn():
    frame, batch = planted_data(seed=2)
    frame.index = range(1000, 1040)
    table = simpson.scan(frame, batch).reversals
    assert isinstance(plot_reversals(frame, batch, table, top=1), Figure)


def test_statistics_do_not_draw():
    # the figure lives in batchmix.plots.simpson only: the statistics package has no plotting name
    assert not hasattr(simpson, "plot_reversals")
