"""Figures of the report's batch section: PCA of the samples and the batch R² of the top components."""

from __future__ import annotations

import numpy as np
import pandas as pd

from batchmix.plots.style import GRID_COLOUR, markers, natural_key, palette

__all__ = ["plot_pca", "plot_batch_share", "FAINT_VARIANCE"]

# Legend entries in one column before the PCA legend takes two.
LEGEND_ROWS = 24
# A component carrying less than this share of the variance gets a faded bar: its batch R² is
# about noise, however high.
FAINT_VARIANCE = 0.01


def plot_pca(
    panels: dict,
    batch: pd.Series,
    condition: pd.Series | None = None,
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
    from matplotlib.markers import MarkerStyle

    batch_levels = sorted(batch.astype(str).unique(), key=natural_key)
    colours = dict(zip(batch_levels, palette(len(batch_levels))))
    cond_levels = sorted(condition.astype(str).unique(), key=natural_key) if condition is not None else []
    shapes = dict(zip(cond_levels, markers(len(cond_levels))))
    # Each marker's outline in points, as Axes.scatter makes it from a marker code.
    outlines = {c: _marker_path(MarkerStyle(m)) for c, m in shapes.items()}
    fig = Figure(figsize=(5.2 * len(panels) + 2.2, 4.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, result) in zip(axes, panels.items()):
        scores = result.scores
        labels = batch.reindex(scores.index).astype(str)
        pc1 = scores["PC1"].to_numpy(dtype=float)
        pc2 = scores["PC2"].to_numpy(dtype=float) if "PC2" in scores.columns else np.zeros(len(scores))
        # A sample without a score is not drawn (as scatter leaves out NaN).
        drawn = np.isfinite(pc1) & np.isfinite(pc2)
        # One collection for all the samples of a panel, drawn in sample order (so the same points
        # lie on top as with a scatter per sample, which cost a collection, its layout and its
        # drawing per point); each sample its batch's colour and its condition's marker outline.
        points = ax.scatter(
            pc1[drawn],
            pc2[drawn],
            s=42,
            color=[colours[label] for label in labels.to_numpy()[drawn]],
            marker="o",
            edgecolors="white",
            linewidths=0.5,
        )
        if condition is not None:
            conds = condition.reindex(scores.index).astype(str).to_numpy()[drawn]
            points.set_paths([outlines[c] for c in conds])
        # The points are clipped to the axes, so they cannot widen the layout's bounding box: left
        # out of the constrained layout (the figure is the same).
        points.set_in_layout(False)
        ratio = result.variance_ratio
        ax.set_xlabel(f"PC1 ({100 * ratio.iloc[0]:.1f}% of variance)" if len(ratio) else "PC1")
        ax.set_ylabel(f"PC2 ({100 * ratio.iloc[1]:.1f}% of variance)" if len(ratio) > 1 else "PC2")
        ax.set_title(title)
        ax.grid(True, color=GRID_COLOUR, linewidth=0.6)
        ax.set_axisbelow(True)
    # One legend for every panel, right of the figure: the colours and shapes mean the same in each.
    handles = [Line2D([], [], linestyle="", label="batch")]
    handles += [Line2D([], [], marker="o", linestyle="", color=colours[b], label=b) for b in batch_levels]
    if cond_levels:
        handles.append(Line2D([], [], linestyle="", label=""))
        handles.append(Line2D([], [], linestyle="", label=condition_name or "condition"))
        handles += [Line2D([], [], marker=shapes[c], linestyle="", color="0.3", label=c) for c in cond_levels]
    legend = fig.legend(
        handles=handles,
        loc="outside right upper",
        frameon=False,
        fontsize=8,
        ncols=1 if len(handles) <= LEGEND_ROWS else 2,
    )
    headings = {"batch", condition_name or "condition"} if cond_levels else {"batch"}
    for text, handle in zip(legend.get_texts(), handles):
        if handle.get_marker() in ("None", None, "") and text.get_text() in headings:
            text.set_fontweight("bold")
    return fig


def _marker_path(marker):
    """The outline of a marker in points, as :meth:`matplotlib.axes.Axes.scatter` draws it."""
    return marker.get_path().transformed(marker.get_transform())


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
    from matplotlib.patches import Patch

    fig = Figure(figsize=(8.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    n_panels = len(diagnostics)
    width = 0.8 / n_panels
    colours = ["#4c72b0", "#dd8452", "#55a868"]
    k_max = max(d["n_components"] for d in diagnostics.values())
    handles = []
    any_faint = False
    for i, (title, d) in enumerate(diagnostics.items()):
        share = d["share"].to_numpy()
        ratio = d["pca"].variance_ratio.iloc[: len(share)].to_numpy()
        positions = np.arange(len(share)) + (i - (n_panels - 1) / 2) * width
        colour = colours[i % len(colours)]
        faint = ratio < FAINT_VARIANCE
        any_faint |= bool(faint.any())
        bars = ax.bar(positions, share, width=width * 0.95, color=colour)
        for bar, r, is_faint in zip(bars, ratio, faint):
            if is_faint:
                bar.set_alpha(0.25)
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                bar.get_height() + 0.01,
                # One decimal below 1%, so that a faded bar never reads "1%".
                f"{100 * r:.1f}%" if is_faint else f"{100 * r:.0f}%",
                ha="center",
                va="bottom",
                fontsize=6.5,
                color="0.3",
            )
        handles.append(
            Patch(
                color=colour,
                label=f"{title}: silhouette {d['silhouette']:+.2f}, batch share {100 * d['weighted_share']:.0f}%",
            )
        )
    if any_faint:
        handles.append(
            Patch(color="0.6", alpha=0.25, label=f"faded: component with < {100 * FAINT_VARIANCE:.0f}% of the variance")
        )
    ax.set_xticks(np.arange(k_max), [f"PC{k + 1}" for k in range(k_max)])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("variance explained by batch (R²)")
    # Above the axes, not inside: inside it covered the bars of the first components.
    fig.legend(handles=handles, loc="outside upper center", frameon=False, fontsize=8, ncols=min(len(handles), 2))
    ax.grid(True, axis="y", color=GRID_COLOUR, linewidth=0.6)
    ax.set_axisbelow(True)
    return fig
