"""The report's figures (batchmix.plots.*) with long level names: nothing clipped, nothing covering the data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from batchmix.plots.batch import FAINT_VARIANCE, plot_batch_share, plot_pca
from batchmix.plots.lmm import plot_top_batch_genes, plot_variance_fractions
from batchmix.plots.shrinkage import plot_shrinkage
from batchmix.plots.style import legend_columns, png_bytes
from batchmix.plots.vst import plot_mean_sd
from batchmix.report import summaries
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

# Level names of 12 characters and more, as in real sample sheets (issue 13).
BATCHES = ["Sequencing_run_2019_A", "Sequencing_run_2019_B", "Sequencing_run_2020_A", "Sequencing_run_2021_C"]
CONDITIONS = ["untreated_control", "dexamethasone_100nM"]


def _drawn(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _outside(fig) -> list[str]:
    """Texts and legends drawn beyond the figure's edges (clipped in the PNG)."""
    renderer = _drawn(fig)
    width, height = fig.bbox.width, fig.bbox.height
    clipped = []
    # Tick labels outside the view limits are not drawn; Axes.get_tightbbox knows which are.
    drawn = [a for ax in fig.axes for a in ax.get_default_bbox_extra_artists()]
    drawn += list(fig.legends) + list(fig.texts) + [ax.xaxis for ax in fig.axes] + [ax.yaxis for ax in fig.axes]
    for artist in drawn:
        if not artist.get_visible() or (isinstance(artist, Text) and not artist.get_text()):
            continue
        box = artist.get_tightbbox(renderer) if not isinstance(artist, Text) else artist.get_window_extent(renderer)
        if box is None:
            continue
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            clipped.append(artist.get_text() if isinstance(artist, Text) else type(artist).__name__)
    return clipped


def _labels_collide(ax, renderer) -> bool:
    """Whether two neighbouring x tick labels of ``ax`` overlap as drawn.

    Horizontal labels collide when their boxes overlap. Labels slanted by θ are parallel strips of
    height h (the text's height) whose anchors are d apart: they stay apart when d sin θ ≥ h.
    """
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    if len(labels) < 2:
        return False
    angle = np.deg2rad(labels[0].get_rotation())
    if angle == 0:
        boxes = [t.get_window_extent(renderer) for t in labels]
        return any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
    anchors = [ax.transData.transform((x, 0))[0] for x in ax.get_xticks()[: len(labels)]]
    _, height, _ = renderer.get_text_width_height_descent("Xg", labels[0].get_fontproperties(), ismath=False)
    return min(np.diff(anchors)) * np.sin(angle) < height


def _samples() -> pd.DataFrame:
    rows = [
        {"sample_id": f"s{b}{c}{r}", "batch": batch, "condition": condition}
        for b, batch in enumerate(BATCHES)
        for c, condition in enumerate(CONDITIONS)
        for r in range(3)
    ]
    return pd.DataFrame(rows).set_index("sample_id")


def _expression(samples: pd.DataFrame, batch_strength: float) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    codes = samples["batch"].map({b: i for i, b in enumerate(BATCHES)}).to_numpy()
    genes = [f"ENSG{i:011d}" for i in range(60)]
    batch_effect = rng.normal(0, batch_strength, (len(genes), len(BATCHES)))[:, codes]
    condition = (samples["condition"] == CONDITIONS[1]).to_numpy() * rng.normal(0, 1, (len(genes), 1))
    values = 5 + batch_effect + condition + rng.normal(0, 0.3, (len(genes), len(samples)))
    return pd.DataFrame(values, index=genes, columns=samples.index)


@pytest.fixture(scope="module")
def diagnostics():
    samples = _samples()
    before = _expression(samples, 2.0)
    after = _expression(samples, 0.0)
    genes = summaries.pca(before).genes
    return samples, {
        "before correction": summaries.batch_diagnostics(before, samples["batch"], genes=genes),
        "after correction": summaries.batch_diagnostics(after, samples["batch"], genes=genes),
    }


def test_pca_has_one_legend_for_both_panels_and_nothing_clipped(diagnostics):
    samples, diag = diagnostics
    fig = plot_pca({k: d["pca"] for k, d in diag.items()}, samples["batch"], samples["condition"], "condition")
    assert _outside(fig) == []
    # One figure legend serves both panels: every batch and condition named once, none on an axes.
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert set(BATCHES) | set(CONDITIONS) <= set(texts)
    # The legend lies right of both panels, not over the right one.
    renderer = _drawn(fig)
    legend_box = fig.legends[0].get_window_extent(renderer)
    assert all(ax.get_window_extent(renderer).x1 <= legend_box.x0 for ax in fig.axes)


def test_batch_share_legend_covers_no_bar_and_faint_components_are_faded(diagnostics):
    _, diag = diagnostics
    fig = plot_batch_share(diag)
    assert _outside(fig) == []
    renderer = _drawn(fig)
    (ax,) = fig.axes
    legend_box = fig.legends[0].get_window_extent(renderer)
    bars = [p for p in ax.patches if p.get_height() > 0]
    assert bars
    assert not any(legend_box.overlaps(bar.get_window_extent(renderer)) for bar in bars)
    # One bar per component and panel, in panel order; faded exactly where the component carries < 1%.
    ratios = np.concatenate([d["pca"].variance_ratio.iloc[: d["n_components"]].to_numpy() for d in diag.values()])
    assert len(ax.patches) == len(ratios)
    faded = np.array([patch.get_alpha() is not None and patch.get_alpha() < 1 for patch in ax.patches])
    assert (ratios < FAINT_VARIANCE).any(), "the fixture should have a component below 1% of the variance"
    np.testing.assert_array_equal(faded, ratios < FAINT_VARIANCE)


def test_variance_fractions_and_top_genes_with_long_component_names():
    rng = np.random.default_rng(5)
    shares = rng.dirichlet([2, 1, 1], size=40)
    fractions = pd.DataFrame(
        shares,
        columns=["Sequencing_run_batch", "treatment_with_dexamethasone", "Residuals"],
        index=[f"ENSG{i:011d}" for i in range(40)],
    )
    fig = plot_variance_fractions(fractions, residual="Residuals")
    assert _outside(fig) == []
    assert not _labels_collide(fig.axes[0], _drawn(fig))
    # Many long names: slanted, still apart.
    many = pd.DataFrame(rng.dirichlet(np.ones(12), size=40), columns=[f"covariate_number_{i:02d}" for i in range(12)])
    fig = plot_variance_fractions(many)
    assert _outside(fig) == [] and not _labels_collide(fig.axes[0], _drawn(fig))
    fig = plot_top_batch_genes(fractions.head(20), residual="Residuals")
    assert _outside(fig) == []


def _categorical_estimates() -> summaries.ShrinkageEstimates:
    rows = []
    for b, batch in enumerate(BATCHES):
        for c, condition in enumerate(CONDITIONS):
            for r in range(3):
                rows.append(
                    {
                        "sample": f"s{b}{c}{r}",
                        "group": batch,
                        "x": condition,
                        "y": 5.0 + b + c + 0.1 * r,
                        "population": 6.5 + c,
                        "population_se": 0.4,
                        "lmm": 6.0 + 0.6 * b + c,
                    }
                )
    observations = pd.DataFrame(rows)
    cells = (
        observations.groupby(["group", "x"], sort=True)
        .agg(
            n=("y", "size"),
            ols=("y", "mean"),
            lmm=("lmm", "mean"),
            population=("population", "mean"),
            population_se=("population_se", "mean"),
        )
        .reset_index()
    )
    return summaries.ShrinkageEstimates(
        gene="ENSG00000123456", kind="categorical", x="condition", group="batch", observations=observations, cells=cells
    )


def test_shrinkage_figure_with_long_level_names_is_not_clipped():
    fig = plot_shrinkage(_categorical_estimates())
    assert _outside(fig) == []
    renderer = _drawn(fig)
    assert fig.axes and not any(_labels_collide(ax, renderer) for ax in fig.axes)


def test_numeric_shrinkage_figure_with_two_groups_is_not_clipped():
    rows = [
        {
            "sample": f"{g}{d}",
            "group": g,
            "x": float(d),
            "y": 250.0 + 10 * d + 5 * i,
            "population": 250 + 10 * d,
            "population_se": 5.0,
            "lmm": 252 + 10 * d,
        }
        for i, g in enumerate(BATCHES[:2])
        for d in range(5)
    ]
    estimates = summaries.ShrinkageEstimates(
        gene="Reaction",
        kind="numeric",
        x="Days",
        group="Subject",
        observations=pd.DataFrame(rows),
        cells=pd.DataFrame(),
    )
    assert _outside(plot_shrinkage(estimates)) == []


def test_mean_sd_draws_one_panel_for_input_used_as_given():
    ranks = np.arange(30, dtype=float)
    part = pd.DataFrame({"rank_of_mean": ranks, "mean": ranks, "sd": 1 + ranks / 30, "running_median_sd": 1.5})
    mean_sd = pd.concat([part.assign(scale="before"), part.assign(scale="after")])
    assert len(plot_mean_sd(mean_sd, "before: counts", "after: VST").axes) == 2
    single = plot_mean_sd(mean_sd, None, "input used as given")
    assert len(single.axes) == 1 and single.axes[0].get_title() == "input used as given"
    assert png_bytes(single).startswith(b"\x89PNG")


def test_legend_columns_fit_the_width():
    labels = ["x" * 40] * 4
    # About 40 * 0.6 * 8 / 72 + 0.5 = 3.2 inches per entry.
    assert legend_columns(labels, 7.0) == 2
    assert legend_columns(labels, 20.0) == 4
    assert legend_columns(labels, 2.0) == 1
    assert legend_columns([], 5.0) == 1


def test_palettes_are_seaborns_without_importing_it():
    sns = pytest.importorskip("seaborn")
    from batchmix.plots.style import desaturate, husl_palette, palette

    for n in range(1, 41):
        assert palette(n) == [tuple(c) for c in sns.color_palette("tab10" if n <= 10 else "husl", n)]
        assert husl_palette(n) == [tuple(c) for c in sns.color_palette("husl", n)]
    assert [desaturate(c, 0.75) for c in husl_palette(7)] == [tuple(c) for c in sns.color_palette("husl", 7, 0.75)]


def test_violins_are_seaborns_violinplot():
    # The variance-fraction violins, drawn without seaborn: the same outlines, colours and axis.
    sns = pytest.importorskip("seaborn")
    from batchmix.plots.lmm import component_colours, draw_violins
    from matplotlib.figure import Figure

    rng = np.random.default_rng(11)
    labels = ["Batch", "Infection", "constant", "one gene", "Residuals"]
    data = [
        100 * rng.beta(2, 3, 500),
        100 * rng.beta(0.3, 5, 500),
        np.full(50, 20.0),
        np.array([35.0]),
        100 * rng.beta(3, 2, 500),
    ]
    colours = component_colours(labels, "Residuals")
    long = pd.DataFrame({"component": np.repeat(labels, [len(d) for d in data]), "percent": np.concatenate(data)})
    ours, theirs = Figure().add_subplot(), Figure().add_subplot()
    draw_violins(ours, data, colours, labels)
    sns.violinplot(
        data=long,
        x="component",
        y="percent",
        hue="component",
        order=labels,
        hue_order=labels,
        palette=colours,
        density_norm="width",
        cut=0,
        inner=None,
        linewidth=0.8,
        legend=False,
        ax=theirs,
    )
    assert len(ours.collections) == len(theirs.collections) == 4
    for a, b in zip(ours.collections, theirs.collections):
        np.testing.assert_allclose(a.get_paths()[0].vertices, b.get_paths()[0].vertices, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(a.get_facecolor(), b.get_facecolor(), atol=1e-12)
        np.testing.assert_allclose(a.get_edgecolor(), b.get_edgecolor(), atol=1e-12)
        np.testing.assert_allclose(a.get_linewidth(), b.get_linewidth())
    # A single value: a line at it, in the outline colour.
    (line,) = ours.lines
    (their_line,) = theirs.lines
    np.testing.assert_allclose(line.get_xydata(), their_line.get_xydata())
    assert line.get_color() == their_line.get_color()
    assert ours.get_xlim() == theirs.get_xlim()
    assert [t.get_text() for t in ours.get_xticklabels()] == [t.get_text() for t in theirs.get_xticklabels()]
