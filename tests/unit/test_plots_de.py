"""The volcano plots of the DE section: both panels, legend inside the figure, long names not clipped."""

from __future__ import annotations

import numpy as np
import pandas as pd
from batchmix.plots.de import CHANGE_LABELS, plot_volcano
from matplotlib.backends.backend_agg import FigureCanvasAgg


def _table(n=200, seed=3):
    rng = np.random.default_rng(seed)
    change = rng.choice(["both", "lmm_only", "ols_only", "neither"], n).astype(object)
    change[:5] = None  # not fitted
    return pd.DataFrame(
        {
            "gene_id": [f"g{i}" for i in range(n)],
            "logfc": rng.normal(size=n),
            "p": rng.random(n),
            "ols_logfc": rng.normal(size=n),
            "ols_p": rng.random(n),
            "change": change,
        }
    )


def test_volcano_draws_every_called_gene_in_both_panels_with_a_legend_of_the_classes_present():
    table = _table()
    table.loc[table["change"] == "ols_only", "change"] = "neither"
    fig = plot_volcano(table, "conditionVeryLongTreatmentName_vs_reference", fdr=0.1)
    left, right = fig.axes
    called = int(table["change"].notna().sum())
    for ax in (left, right):
        assert sum(len(c.get_offsets()) for c in ax.collections) == called
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(CHANGE_LABELS["lmm_only"] in t for t in legend)
    assert not any(CHANGE_LABELS["ols_only"] in t for t in legend)
    assert fig.legends[0].get_title().get_text() == "significant: Benjamini–Hochberg q ≤ 0.1"


def test_volcano_titles_and_legend_fit_in_the_figure_with_long_names():
    fig = plot_volcano(_table(), "InfectionSARS_CoV_2_longer_than_twelve_characters")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    bounds = fig.bbox
    for artist in [ax.title for ax in fig.axes] + list(fig.legends):
        box = artist.get_window_extent(renderer)
        assert box.x0 >= bounds.x0 - 1 and box.x1 <= bounds.x1 + 1, artist
        assert box.y0 >= bounds.y0 - 1 and box.y1 <= bounds.y1 + 1, artist
