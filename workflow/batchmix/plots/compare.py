"""Figures of the index page's model comparison: genes won per model, and by how much."""

from __future__ import annotations

import numpy as np

from batchmix.plots.style import GRID_COLOUR, palette

__all__ = ["CRITERION_COLOURS", "DELTA_TICKS", "plot_model_wins", "plot_delta_distribution"]

#: Bar colours of the criteria (AIC, BIC) in :func:`plot_model_wins`.
CRITERION_COLOURS = ("#274c77", "#8fb8de")

#: Differences of the criterion marked on the margin axis (it is drawn as log10(1 + Δ)).
DELTA_TICKS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def plot_model_wins(labels: dict[str, str], wins: dict[str, dict[str, int]], ties: dict[str, int]):
    """Bars of the genes each model wins under AIC and under BIC.

    Parameters
    ----------
    labels : dict of str to str
        Analysis name to its label (e.g. ``"random_batch: ~ condition + (1|batch)"``), in the order
        to draw them.
    wins : dict of str to dict of str to int
        Per criterion (``AIC``, ``BIC``): genes won by each analysis, by name.
    ties : dict of str to int
        Per criterion: genes where several models share the lowest value.

    Returns
    -------
    matplotlib.figure.Figure
        Horizontal bars, one group per model (and one for ties), one bar per criterion.
    """
    from matplotlib.figure import Figure

    criteria = list(wins)
    rows = [*labels.values(), "tie"]
    values = {c: [*(wins[c].get(name, 0) for name in labels), ties.get(c, 0)] for c in criteria}
    fig = Figure(figsize=(8.0, 0.9 + 0.55 * len(rows)), layout="constrained")
    ax = fig.subplots()
    height = 0.8 / max(len(criteria), 1)
    # shades of one colour: the criteria are not models (the ΔAIC figure colours the models)
    colours = [CRITERION_COLOURS[i % len(CRITERION_COLOURS)] for i in range(len(criteria))]
    y = np.arange(len(rows))
    for i, criterion in enumerate(criteria):
        pos = y + (i - (len(criteria) - 1) / 2) * height
        bars = ax.barh(pos, values[criterion], height=height, color=colours[i], label=criterion)
        ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_yticks(y, rows, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("genes for which the model has the lowest criterion")
    ax.grid(True, axis="x", color=GRID_COLOUR, linewidth=0.6)
    ax.set_axisbelow(True)
    ax.margins(x=0.12)
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    return fig


def plot_delta_distribution(delta: np.ndarray, winners: list[str], labels: dict[str, str], *, criterion: str = "AIC"):
    """Histogram of the margin of each gene's best model over the runner-up, stacked by the winner.

    Parameters
    ----------
    delta : array of float
        Per gene: the runner-up's criterion minus the lowest (≥ 0); ties (0) included.
    winners : list of str
        Per gene: the winning analysis (``a|b`` for a tie: drawn as ``tie``).
    labels : dict of str to str
        Analysis name to its label in the legend, in the order to draw them.
    criterion : str
        ``AIC`` or ``BIC``, for the axis.

    Returns
    -------
    matplotlib.figure.Figure
        The margin on a log10(1 + Δ) axis labelled in Δ, a dashed line at Δ = 2 (below it the
        preference is weak).
    """
    from matplotlib.figure import Figure

    delta = np.asarray(delta, dtype=float)
    winners = np.array(["tie" if "|" in str(w) else str(w) for w in winners], dtype=object)
    keep = np.isfinite(delta)
    x = np.log10(1.0 + np.maximum(delta[keep], 0.0))
    winners = winners[keep]
    top = max(float(x.max()) if x.size else 1.0, np.log10(3.0))
    bins = np.linspace(0.0, top * 1.0001, 41)
    order = [name for name in labels if (winners == name).any()] + (["tie"] if (winners == "tie").any() else [])
    colours = dict(zip(labels, palette(max(len(labels), 2))))
    colours["tie"] = "0.6"
    fig = Figure(figsize=(8.0, 3.6), layout="constrained")
    ax = fig.subplots()
    if order:
        ax.hist(
            [x[winners == name] for name in order],
            bins=bins,
            stacked=True,
            color=[colours[name] for name in order],
            label=[labels.get(name, name) for name in order],
        )
        ax.legend(frameon=False, fontsize=8, title="lowest " + criterion, title_fontsize=8)
    ticks = [t for t in DELTA_TICKS if np.log10(1.0 + t) <= top * 1.05]
    ax.set_xticks([np.log10(1.0 + t) for t in ticks], [f"{t:,}" for t in ticks])
    ax.axvline(np.log10(3.0), color="0.3", linestyle="--", linewidth=1)
    ax.set_xlabel(f"Δ{criterion}: the runner-up's {criterion} minus the lowest (log scale)")
    ax.set_ylabel("genes")
    ax.grid(True, axis="y", color=GRID_COLOUR, linewidth=0.6)
    ax.set_axisbelow(True)
    return fig
