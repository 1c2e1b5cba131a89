"""Figure of the report's variance-stabilisation section: vsn's meanSdPlot before and after."""

from __future__ import annotations

import pandas as pd

__all__ = ["plot_mean_sd"]

# The mean-sd plot bins the genes (as vsn's meanSdPlot) from this many on, below it draws points.
HEXBIN_MIN_GENES = 2000


def plot_mean_sd(mean_sd: pd.DataFrame, before_label: str | None = "before", after_label: str = "after"):
    """Standard deviation against the rank of the mean, before and after stabilisation (vsn's meanSdPlot).

    Parameters
    ----------
    mean_sd : pandas.DataFrame
        ``rank_of_mean``, ``sd``, ``running_median_sd`` and ``scale`` (``before``/``after``).
    before_label : str or None
        Title of the left panel; None draws the ``after`` panel alone (input used as given,
        where before and after are the same values).
    after_label : str
        Title of the right (or only) panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    panels = [("after", after_label)]
    if before_label is not None:
        panels.insert(0, ("before", before_label))
    fig = Figure(figsize=(5.0 * len(panels), 3.9), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (scale, title) in zip(axes, panels):
        part = mean_sd[mean_sd["scale"] == scale].sort_values("rank_of_mean", kind="mergesort")
        if part.empty:
            ax.axis("off")
            ax.text(0.5, 0.5, f"no {scale} values", ha="center", va="center")
            continue
        if len(part) >= HEXBIN_MIN_GENES:
            ax.hexbin(part["rank_of_mean"], part["sd"], gridsize=60, cmap="Blues", mincnt=1, linewidths=0.2)
        else:
            ax.scatter(part["rank_of_mean"], part["sd"], s=7, color="#4c72b0", alpha=0.7, linewidths=0)
        ax.plot(part["rank_of_mean"], part["running_median_sd"], color="#c44e52", linewidth=1.6)
        ax.set_xlabel("rank of mean")
        ax.set_ylabel("standard deviation")
        ax.set_title(title, fontsize=10)
    return fig
