"""Figure of the report's shrinkage section: per-group estimates against the LMM's predictions (lme4's sleepstudy)."""

from __future__ import annotations

import math

import numpy as np

from batchmix.plots.style import GRID_COLOUR, legend_columns, natural_key, palette

__all__ = ["plot_shrinkage", "BAND_Z"]

# Two-sided 95 % Wald band of the population fit, as lme4's confint(method = "Wald").
# scipy.stats.norm.ppf(0.975), written out: importing scipy.stats for it cost the report half a second.
BAND_Z = 1.959963984540054


def plot_shrinkage(estimates):
    """One gene's shrinkage figure (see :func:`batchmix.report.summaries.shrinkage_estimates`).

    Categorical: groups along the x axis, one colour per condition; open circles the
    per-group OLS estimates, filled circles the LMM predictions, an arrow from one to the
    other, horizontal lines and bands the population fit ± 95 % Wald interval, small grey
    dots the samples. Numeric: one panel per group, points, the group's OLS line (dashed),
    the LMM line (solid) and the population line with its band (grey).

    Parameters
    ----------
    estimates : batchmix.report.summaries.ShrinkageEstimates
        The gene, group, x column and the ``observations`` and ``cells`` tables to draw.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    obs = estimates.observations
    groups = sorted(obs["group"].unique(), key=natural_key)
    if estimates.kind == "numeric":
        n_cols = min(6, len(groups))
        n_rows = math.ceil(len(groups) / n_cols)
        fig = Figure(figsize=(2.1 * n_cols + 0.5, 2.0 * n_rows + 0.9), layout="constrained")
        axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True, sharey=True)
        order = np.argsort(obs["x"].to_numpy(dtype=float), kind="stable")
        ordered = obs.iloc[order]
        for ax, group in zip(axes.flat, groups):
            part = ordered[ordered["group"] == group]
            x = part["x"].to_numpy(dtype=float)
            pop = ordered.drop_duplicates("x")
            px = pop["x"].to_numpy(dtype=float)
            if np.isfinite(pop["population_se"]).all():
                ax.fill_between(
                    px,
                    pop["population"] - BAND_Z * pop["population_se"],
                    pop["population"] + BAND_Z * pop["population_se"],
                    color="0.85",
                    linewidth=0,
                )
            ax.plot(px, pop["population"], color="0.45", linewidth=1.2)
            ax.scatter(x, part["y"], s=10, color="#4c72b0", zorder=3)
            if x.size >= 2 and np.ptp(x) > 0:
                slope, intercept = np.polyfit(x, part["y"].to_numpy(dtype=float), 1)
                # Drawn over the LMM line: where the two coincide (little shrinkage) both stay visible.
                ax.plot(x, intercept + slope * x, color="#dd8452", linestyle="--", linewidth=1.4, zorder=5)
            ax.plot(x, part["lmm"], color="#c44e52", linewidth=1.6, zorder=4)
            ax.set_title(str(group), fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(groups) :]:
            ax.axis("off")
        handles = [
            Line2D([], [], color="#dd8452", linestyle="--", label=f"per-{estimates.group} OLS (no pooling)"),
            Line2D([], [], color="#c44e52", label="LMM prediction (partial pooling)"),
            Line2D([], [], color="0.45", label="population fit (complete pooling)"),
        ]
        ncols = legend_columns([h.get_label() for h in handles], fig.get_figwidth())
        fig.legend(handles=handles, loc="outside lower center", ncols=ncols, frameon=False, fontsize=8)
        for ax in axes[-1]:
            ax.set_xlabel(str(estimates.x), fontsize=8)
        fig.supylabel(f"{estimates.gene} (stabilised)", fontsize=9)
        fig.suptitle(f"{estimates.gene}: per-{estimates.group} OLS against LMM predictions", fontsize=10)
        return fig

    cells = estimates.cells
    levels = sorted(cells["x"].unique(), key=natural_key)
    colours = dict(zip(levels, palette(len(levels))))
    position = {g: i for i, g in enumerate(groups)}
    n_cols = min(3, len(levels))
    n_rows = math.ceil(len(levels) / n_cols)
    width = max(3.2, 0.42 * len(groups) + 1.2)
    fig = Figure(figsize=(width * n_cols + 0.3, 3.1 * n_rows + 0.9), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey=True)
    jitter = np.random.default_rng(0)
    for ax, level in zip(axes.flat, levels):
        colour = colours[level]
        in_level = obs[obs["x"] == level]
        xs = in_level["group"].map(position).to_numpy(dtype=float)
        ax.scatter(xs + jitter.uniform(-0.12, 0.12, len(xs)), in_level["y"], s=7, color="0.6", zorder=2, linewidths=0)
        level_cells = cells[cells["x"] == level]
        population = level_cells["population"].to_numpy(dtype=float)
        population_se = level_cells["population_se"].to_numpy(dtype=float)
        # One population line across the panel when the fit is the same in every group (the
        # condition is the only fixed effect); otherwise a segment per cell.
        constant = np.ptp(population) <= 1e-9 * max(1.0, np.abs(population).max()) and (
            np.all(np.isnan(population_se)) or np.ptp(population_se) <= 1e-9 * max(1.0, np.nanmax(population_se))
        )
        spans = (
            [(-0.6, len(groups) - 0.4, population[0], population_se[0])]
            if constant
            else [
                (position[g] - 0.5, position[g] + 0.5, p, se)
                for g, p, se in zip(level_cells["group"], population, population_se)
            ]
        )
        for left, right, value, se in spans:
            ax.hlines(value, left, right, color=colour, linewidth=1.1, zorder=1)
            if np.isfinite(se):
                ax.fill_between(
                    [left, right],
                    value - BAND_Z * se,
                    value + BAND_Z * se,
                    color=colour,
                    alpha=0.16,
                    linewidth=0,
                    zorder=0,
                )
        # One collection for the cells' own estimates and one for the predictions (a scatter per
        # cell cost a collection to lay out and draw per point).
        cell_x = level_cells["group"].map(position).to_numpy(dtype=float)
        ols = level_cells["ols"].to_numpy(dtype=float)
        lmm = level_cells["lmm"].to_numpy(dtype=float)
        ax.scatter(cell_x, ols, s=44, facecolors="white", edgecolors=[colour], linewidths=1.4, zorder=4)
        ax.scatter(cell_x, lmm, s=30, color=colour, zorder=5)
        for x, start, end in zip(cell_x, ols, lmm):
            if abs(end - start) > 1e-12:
                arrow = ax.annotate(
                    "",
                    xy=(x, end),
                    xytext=(x, start),
                    arrowprops={"arrowstyle": "->", "color": colour, "linewidth": 0.9, "shrinkA": 3, "shrinkB": 3},
                    zorder=4,
                )
                # Between two points of the axes, so it cannot widen the layout: left out of it.
                arrow.set_in_layout(False)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        # Slanted when many or long labels would run into each other.
        slanted = len(groups) > 4 or max(len(str(g)) for g in groups) > 8
        ax.set_xticks(
            range(len(groups)),
            [str(g) for g in groups],
            rotation=45 if slanted else 0,
            ha="right" if slanted else "center",
            rotation_mode="anchor" if slanted else "default",
            fontsize=7.5,
        )
        ax.set_title(f"{estimates.x} = {level}" if estimates.x is not None else "all samples", fontsize=9)
        ax.grid(True, axis="y", color=GRID_COLOUR, linewidth=0.6)
        ax.set_axisbelow(True)
    for ax in list(axes.flat)[len(levels) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{estimates.gene} (stabilised)", fontsize=9)
    handles = [
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            markerfacecolor="white",
            markeredgecolor="0.3",
            label=f"{estimates.group}'s own estimate (cell mean: no pooling)",
        ),
        Line2D([], [], marker="o", linestyle="", color="0.3", label="LMM prediction (partial pooling)"),
        # The band's entry only when a band is drawn.
        Patch(color="0.75", label="population fit ± 95% CI (complete pooling)")
        if np.isfinite(cells["population_se"].to_numpy(dtype=float)).any()
        else Line2D([], [], color="0.3", label="population fit (complete pooling)"),
        Line2D([], [], marker="o", linestyle="", color="0.6", markersize=3, label="samples"),
    ]
    ncols = legend_columns([h.get_label() for h in handles], fig.get_figwidth())
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, frameon=False, fontsize=8)
    fig.suptitle(f"{estimates.gene}: per-{estimates.group} estimates shrunk towards the population fit", fontsize=10)
    return fig
