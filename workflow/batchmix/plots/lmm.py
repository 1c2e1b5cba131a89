"""Figures of the report's mixed-model section: variance fractions across genes and of the top batch genes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from batchmix.plots.style import GRID_COLOUR, desaturate, husl_palette

__all__ = ["plot_variance_fractions", "plot_top_batch_genes", "component_colours", "draw_violins"]

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
    others = [c for c in components if c != residual]
    colours = dict(zip(others, husl_palette(max(len(others), 1))))
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
    boxes = [long.loc[long["component"] == label, "percent"].to_numpy() for label in labels]
    draw_violins(ax, boxes, palette, labels)
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


# seaborn.violinplot's defaults that the variance-fraction figure used: violin width, the points of
# the density grid, and the saturation of the fill colours.
VIOLIN_WIDTH = 0.8
VIOLIN_GRIDSIZE = 100
VIOLIN_SATURATION = 0.75


def _gaussian_density(values: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    """Gaussian kernel density of ``values`` on ``grid``, Scott's bandwidth (scipy's gaussian_kde); None if singular."""
    n = values.size
    variance = float(np.var(values, ddof=1)) if n >= 2 else 0.0
    if not variance > 0:
        return None
    bandwidth = np.sqrt(variance) * n ** (-1.0 / 5)
    density = np.zeros(grid.size)
    # A block of values at a time: a genes × grid matrix of a whole component would take 100 × n doubles.
    for start in range(0, n, 4096):
        z = (grid[None, :] - values[start : start + 4096, None]) / bandwidth
        density += np.exp(-0.5 * z * z).sum(axis=0)
    return density / (n * bandwidth * np.sqrt(2 * np.pi))


def draw_violins(ax, data: list[np.ndarray], colours: dict, labels: list[str]) -> None:
    """Violins as ``seaborn.violinplot(density_norm="width", cut=0, inner=None, linewidth=0.8)`` drew them.

    One violin per column at x = 0, 1, …: the kernel density on a grid from the smallest to the
    largest value, scaled so that every violin is :data:`VIOLIN_WIDTH` wide at its peak, filled
    with the component's colour desaturated to :data:`VIOLIN_SATURATION` and outlined in a grey
    60% as light as the darkest fill; a column without spread is a horizontal line at its value.
    The x axis is categorical as seaborn makes it: the names as tick labels, limits ±0.5 around
    the violins, no vertical grid lines. seaborn is not imported for it (it imports scipy.stats,
    most of a second of every report).
    """
    import colorsys

    fills = {label: desaturate(colours[label], VIOLIN_SATURATION) for label in labels}
    # seaborn's "auto" line colour: 60% of the lowest HLS lightness among the fills.
    lum = min(colorsys.rgb_to_hls(*fills[label])[1] for label in labels) * 0.6
    edge = (lum, lum, lum)
    half = VIOLIN_WIDTH / 2
    for position, (label, values) in enumerate(zip(labels, data)):
        values = np.asarray(values, dtype=float)
        if values.size == 0:
            continue
        grid = np.linspace(values.min(), values.max(), VIOLIN_GRIDSIZE)
        if values.size < 2:
            # seaborn's singular violin: a line at the value.
            ax.plot([position - half, position + half], [values.mean()] * 2, color=edge, linewidth=0.8)
            continue
        density = _gaussian_density(values, grid)
        # Without spread seaborn's density is flat: a violin of no height, full width (its outline a line).
        span = np.full(grid.size, half) if density is None else density / density.max() * half
        ax.fill_betweenx(grid, position - span, position + span, facecolor=fills[label], edgecolor=edge, linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels)
    ax.xaxis.grid(False)
    # auto=None, as seaborn: autoscaling stays on, so the boxes drawn next widen the limits by the margins.
    ax.set_xlim(-0.5, len(labels) - 0.5, auto=None)


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
