"""Figures of the report's differential-expression section: volcano plots with and without the batch."""

from __future__ import annotations

import numpy as np
import pandas as pd

from batchmix.plots.style import GRID_COLOUR

__all__ = ["CHANGE_COLOURS", "CHANGE_LABELS", "plot_volcano"]

#: Colour of each call class of ``results/de/<coef>.tsv``'s ``change`` column.
CHANGE_COLOURS = {"neither": "0.75", "both": "#4c72b0", "lmm_only": "#2ca02c", "ols_only": "#d62728"}
#: Legend text of each class.
CHANGE_LABELS = {
    "neither": "significant in neither",
    "both": "significant in both",
    "lmm_only": "gained: significant only with the batch",
    "ols_only": "lost: significant only without the batch",
}


def plot_volcano(table: pd.DataFrame, coefficient: str, *, fdr: float = 0.05):
    """Two volcano plots of one coefficient: OLS ignoring the batch (left), the mixed model (right).

    Parameters
    ----------
    table : pandas.DataFrame
        A DE table (``logfc``, ``p``, ``ols_logfc``, ``ols_p``, ``change``); genes without a call
        (not fitted) are left out.
    coefficient : str
        Its name, for the titles.
    fdr : float
        The q-value threshold of the calls (for the legend).

    Returns
    -------
    matplotlib.figure.Figure
        Each point coloured by its call class, the same in both panels, so that a gene that changes
        call stands out in both.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    called = table[table["change"].notna()]
    fig = Figure(figsize=(10.5, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=False)
    panels = (
        ("ols_logfc", "ols_p", f"OLS ignoring the batch\n{coefficient}"),
        ("logfc", "p", f"Mixed model accounting for the batch\n{coefficient}"),
    )
    for ax, (x_col, p_col, title) in zip(axes, panels):
        for change in ("neither", "both", "ols_only", "lmm_only"):
            part = called[called["change"] == change]
            p = part[p_col].to_numpy(dtype=float)
            with np.errstate(divide="ignore"):
                y = -np.log10(np.clip(p, 1e-300, 1))
            ax.scatter(
                part[x_col].to_numpy(dtype=float),
                y,
                s=9 if change == "neither" else 14,
                color=CHANGE_COLOURS[change],
                alpha=0.6 if change == "neither" else 0.9,
                linewidths=0,
            )
        ax.set_xlabel("log fold change")
        ax.set_ylabel("−log10 p")
        ax.set_title(title, fontsize=10)
        ax.grid(True, color=GRID_COLOUR, linewidth=0.6)
        ax.set_axisbelow(True)
    present = [c for c in ("both", "ols_only", "lmm_only", "neither") if (called["change"] == c).any()]
    handles = [
        Line2D([], [], marker="o", linestyle="", color=CHANGE_COLOURS[c], label=CHANGE_LABELS[c]) for c in present
    ]
    fig.legend(
        handles=handles,
        title=f"significant: Benjamini–Hochberg q ≤ {fdr:g}",
        title_fontsize=8,
        loc="outside lower center",
        frameon=False,
        fontsize=8,
        ncols=2,
    )
    return fig
