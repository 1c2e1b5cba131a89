"""Figures of the report's mixed-model section: variance fractions across genes and of the top batch genes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from batchmix.plots.style import GRID_COLOUR

__all__ = ["plot_variance_fractions", "plot_top_batch_genes", "component_colours"]

RESIDUAL_COLOUR = "#d9d9d9"  # variancePartition draws the residuals grey85
# Widest variance-fraction figure, in inches (about the report's page width at FIGURE_DPI).
MAX_WIDTH = 14.0


def component_colours(components: list[str], residual: str | None = None) -> dict[str, object]:
    """One colour per variance component, the residual grey as in variancePartition.

    Parameters
    ----------
    components : list of str
        Component names in the order drawn.
    residual : str, optional
        The residual's name among ``components``.

    Returns
    -------
    dict of str to colour
    """
    import seaborn as sns

    others = [c for c in components if c != residual]
    colours = dict(zip(others, sns.color_palette("husl", max(len(others), 1))))
    if residual is not None:
        colours[residual] = RESIDUAL_COLOUR
    return colours


def plot_variance_fractions(fractions: pd.DataFrame, *, residual: str | None = None):
    """Violin plot of the variance fractions per component across fitted genes (variancePartition's plotVarPart).

    Parameters
    ----------
    fractions : pandas.DataFrame
        Genes × components, fractions in [0, 1] (NaN left out), columns in the order drawn.
    residual : str, optional
        The residual's column, drawn grey.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import seaborn as sns
    from matplotlib.figure import Figure

    labels = list(fractions.columns)
    long = fractions.melt(var_name="component", value_name="fraction").dropna()
    long["percent"] = 100 * long["fraction"]
    palette = component_colours(labels, residual)
    # Each violin as wide as its longest name needs (at 10 pt), up to a page width; beyond that the
    # names are slanted.
    per_component = max(1.3, 0.075 * max(len(label) for label in labels) + 0.4)
    width = per_component * len(labels) + 2.5
    slanted = width > MAX_WIDTH
    fig = Figure(figsize=(min(width, MAX_WIDTH), 4.2), layout="constrained")
    ax = fig.add_subplot()
    sns.violinplot(
        data=long,
        x="component",
        y="percent",
        hue="component",
        order=labels,
        hue_order=labels,
        palette=palette,
        density_norm="width",
        cut=0,
        inner=None,
        linewidth=0.8,
        legend=False,
        ax=ax,
    )
    boxes = [long.loc[long["component"] == label, "percent"].to_numpy() for label in labels]
    ax.boxplot(
        boxes,
        positions=range(len(labels)),
        widths=0.07,
        patch_artist=True,
        manage_ticks=False,
        boxprops={"facecolor": "0.55", "linewidth": 0.8},
        medianprops={"color": "white", "linewidth": 1.0},
        whiskerprops={"linewidth": 0.8},
        capprops={"linewidth": 0},
        flierprops={"markersize": 1.5},
    )
    ax.set_ylim(-2, 102)
    ax.set_xlabel("")
    if slanted:
        ax.tick_params(axis="x", labelrotation=30)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
            tick.set_rotation_mode("anchor")
    ax.set_ylabel("Variance explained (%)")
    ax.grid(True, axis="y", color=GRID_COLOUR, linewidth=0.6)
    ax.set_axisbelow(True)
    return fig


def plot_top_batch_genes(fractions: pd.DataFrame, *, residual: str | None = None):
    """Stacked bars of every component's share for the most batch-driven genes (plotPercentBars).

    Parameters
    ----------
    fractions : pandas.DataFrame
        Genes (index, the first drawn at the top) × components (fractions in [0, 1], in the order stacked).
    residual : str, optional
        The residual's column, drawn grey.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    colours = component_colours(list(fractions.columns), residual)
    fig = Figure(figsize=(8.0, 0.26 * len(fractions) + 1.3), layout="constrained")
    ax = fig.add_subplot()
    genes = fractions.index.astype(str).tolist()[::-1]
    left = np.zeros(len(genes))
    for column in fractions.columns:
        values = 100 * fractions[column].to_numpy(dtype=float)[::-1]
        values = np.nan_to_num(values)
        ax.barh(genes, values, left=left, color=colours[column], label=column, height=0.8)
        left += values
    ax.set_xlim(0, 100)
    ax.set_xlabel("Variance explained (%)")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    return fig
