"""Figure of the Simpson section: pooled versus per-batch view of the top reversal pairs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from batchmix.plots.style import palette
from batchmix.simpson import align_batch

__all__ = ["plot_reversals"]


def plot_reversals(expression: pd.DataFrame, batch: pd.Series, reversals: pd.DataFrame, top: int = 4):
    """Pooled versus per-batch view of the top reversals.

    One row per pair (the first ``top`` rows of ``reversals``): left, the pooled
    scatter with its OLS line; right, the same points coloured by batch with one
    OLS line per batch.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes x samples, the scale the scan used.
    batch : pandas.Series
        Sample id -> batch label.
    reversals : pandas.DataFrame
        ``SimpsonResult.reversals`` (gene_a, gene_b, r_pooled, r_within, q, ...).
    top : int
        Number of pairs to draw.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    if reversals.empty or top < 1:
        fig = Figure(figsize=(5.0, 1.6))
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "No Simpson's-paradox reversals found", ha="center", va="center")
        return fig
    codes, labels = align_batch(expression.columns, batch)
    colours = palette(len(labels))  # seaborn's tab10 / husl, without importing seaborn
    rows = reversals.head(top)
    fig = Figure(figsize=(10.0, 3.6 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 2, squeeze=False)

    def ols_line(ax, x, y, **style):
        if x.size >= 2 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            grid = np.array([x.min(), x.max()])
            ax.plot(grid, intercept + slope * grid, **style)

    for row, pair in enumerate(rows.itertuples(index=False)):
        x = expression.loc[pair.gene_a].to_numpy(dtype=float)
        y = expression.loc[pair.gene_b].to_numpy(dtype=float)
        left, right = axes[row]
        left.scatter(x, y, s=14, color="0.35", alpha=0.8, linewidths=0)
        ols_line(left, x, y, color="black", linewidth=2)
        left.set_title(f"pooled: r = {pair.r_pooled:+.2f}", fontsize=10)
        for k, label in enumerate(labels):
            in_batch = codes == k
            right.scatter(x[in_batch], y[in_batch], s=14, color=colours[k], label=label, linewidths=0)
            ols_line(right, x[in_batch], y[in_batch], color=colours[k], linewidth=1.6)
        # the random-effects mean of the per-batch r when the table has it, else the pooled within r
        within = getattr(pair, "mu_r", pair.r_within)
        symbol = "mean r_b" if hasattr(pair, "mu_r") else "r"
        right.set_title(f"within batches: {symbol} = {within:+.2f}, q = {pair.q:.2g}", fontsize=10)
        for ax in (left, right):
            ax.set_xlabel(str(pair.gene_a))
            ax.set_ylabel(str(pair.gene_b))
        if row == 0:
            right.legend(
                title="batch",
                fontsize=7,
                title_fontsize=8,
                loc="center left",
                bbox_to_anchor=(1.02, 0.5),
                frameon=False,
            )
    fig.suptitle("Simpson's-paradox reversals: pooled (left) vs within batch (right)")
    return fig
