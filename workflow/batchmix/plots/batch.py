"""Figures of the report's batch section: PCA of the samples and the batch R² of the top components."""

from __future__ import annotations

import numpy as np
import pandas as pd

from batchmix.plots.style import GRID_COLOUR, markers, natural_key, palette

__all__ = ["plot_pca", "plot_batch_share"]


def plot_pca(
    panels: dict, batch: pd.Series, condition: pd.Series | None = None,
    condition_name: str | None = None,
):
    """PC1 against PC2 for each panel (e.g. before and after correction).

    Parameters
    ----------
    panels : dict of str to PCAResult
        Title → principal components (:class:`batchmix.report.summaries.PCAResult`: ``scores``,
        ``variance_ratio``), drawn left to right.
    batch : pandas.Series
        Sample id → batch label (colour).
    condition : pandas.Series, optional
        Sample id → condition label (marker shape).
    condition_name : str, optional
        Legend title of the condition.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    batch_levels = sorted(batch.astype(str).unique(), key=natural_key)
    colours = dict(zip(batch_levels, palette(len(batch_levels))))
    cond_levels = sorted(condition.astype(str).unique(), key=natural_key) if condition is not None else []
    shapes = dict(zip(cond_levels, markers(len(cond_levels))))
    fig = Figure(figsize=(5.2 * len(panels) + 2.2, 4.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, result) in zip(axes, panels.items()):
        scores = result.scores
        labels = batch.reindex(scores.index).astype(str)
        conds = condition.reindex(scores.index).astype(str) if condition is not None else None
        for sample in scores.index:
            pc2 = scores.loc[sample, "PC2"] if "PC2" in scores.columns else 0.0
            ax.scatter(
                scores.loc[sample, "PC1"], pc2, s=42, color=colours[labels[sample]],
                marker=shapes[conds[sample]] if conds is not None else "o", edgecolors="white", linewidths=0.5,
            )
        ratio = result.variance_ratio
        ax.set_xlabel(f"PC1 ({100 * ratio.iloc[0]:.1f}% of variance)" if len(ratio) else "PC1")
        ax.set_ylabel(f"PC2 ({100 * ratio.iloc[1]:.1f}% of variance)" if len(ratio) > 1 else "PC2")
        ax.set_title(title)
        ax.grid(True, color=GRID_COLOUR, linewidth=0.6)
        ax.set_axisbelow(True)
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[b], label=b) for b in batch_levels]
    legend = axes[-1].legend(handles=handles, title="batch", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                             frameon=False, fontsize=8, title_fontsize=9)
    if cond_levels:
        axes[-1].add_artist(legend)
        cond_handles = [Line2D([], [], marker=shapes[c], linestyle="", color="0.3", label=c) for c in cond_levels]
        axes[-1].legend(handles=cond_handles, title=condition_name or "condition", loc="lower left",
                        bbox_to_anchor=(1.02, 0.0), frameon=False, fontsize=8, title_fontsize=9)
    return fig


def plot_batch_share(diagnostics: dict[str, dict]):
    """Batch R² of each top principal component, one bar per panel (before/after).

    Parameters
    ----------
    diagnostics : dict of str to dict
        Title → the output of :func:`batchmix.report.summaries.batch_diagnostics`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    n_panels = len(diagnostics)
    width = 0.8 / n_panels
    colours = ["#4c72b0", "#dd8452", "#55a868"]
    k_max = max(d["n_components"] for d in diagnostics.values())
    for i, (title, d) in enumerate(diagnostics.items()):
        share = d["share"].to_numpy()
        ratio = d["pca"].variance_ratio.iloc[: len(share)].to_numpy()
        positions = np.arange(len(share)) + (i - (n_panels - 1) / 2) * width
        bars = ax.bar(positions, share, width=width * 0.95, color=colours[i % len(colours)],
                      label=f"{title}: silhouette {d['silhouette']:+.2f}, batch share {100 * d['weighted_share']:.0f}%")
        for bar, r in zip(bars, ratio):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, f"{100 * r:.0f}%",
                    ha="center", va="bottom", fontsize=6.5, color="0.3")
    ax.set_xticks(np.arange(k_max), [f"PC{k + 1}" for k in range(k_max)])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("variance explained by batch (R²)")
    ax.legend(frameon=False, fontsize=8, loc="upper right")
    ax.grid(True, axis="y", color=GRID_COLOUR, linewidth=0.6)
    ax.set_axisbelow(True)
    return fig

