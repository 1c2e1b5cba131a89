"""PNG encoding of the figures (batchmix.plots.style): the pixels matplotlib's savefig draws, in one pass."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from batchmix import simpson
from batchmix.plots.de import plot_volcano
from batchmix.plots.shrinkage import plot_shrinkage
from batchmix.plots.simpson import plot_reversals
from batchmix.plots.style import FIGURE_DPI, png_bytes, render_rgba, save_png
from batchmix.plots.vst import plot_mean_sd
from batchmix.report import summaries
from matplotlib.figure import Figure
from PIL import Image


def _savefig_pixels(fig) -> np.ndarray:
    """What matplotlib's own savefig draws at the report's resolution, as RGBA."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, metadata={"Software": None})
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGBA"))


def _decoded(data: bytes) -> tuple[np.ndarray, Image.Image]:
    image = Image.open(io.BytesIO(data))
    return np.asarray(image.convert("RGBA")), image


def _reversals() -> Figure:
    rng = np.random.default_rng(7)
    codes = np.repeat(np.arange(5), 16)
    values = rng.standard_normal((12, codes.size)) + 1.5 * rng.standard_normal((12, 5))[:, codes]
    means = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    noise = rng.standard_normal((2, codes.size))
    values[0] = means[codes] + noise[0]
    values[1] = means[codes] - 0.7 * noise[0] - 0.7 * noise[1]
    samples = [f"s{i:03d}" for i in range(codes.size)]
    frame = pd.DataFrame(values, index=[f"g{i:02d}" for i in range(12)], columns=samples)
    batch = pd.Series([f"batch{c}" for c in codes], index=samples)
    return plot_reversals(frame, batch, simpson.scan(frame, batch).reversals, top=2)


def _volcano() -> Figure:
    rng = np.random.default_rng(3)
    n = 300
    table = pd.DataFrame(
        {
            "gene_id": [f"g{i}" for i in range(n)],
            "logfc": rng.normal(size=n),
            "p": rng.random(n) ** 3,
            "ols_logfc": rng.normal(size=n),
            "ols_p": rng.random(n) ** 3,
            "change": rng.choice(["both", "lmm_only", "ols_only", "neither"], n).astype(object),
        }
    )
    return plot_volcano(table, "treatment", fdr=0.1)


def _shrinkage() -> Figure:
    rows = [
        {
            "sample": f"s{b}{c}{r}",
            "group": f"run_{b:02d}",
            "x": condition,
            "y": 5.0 + 0.3 * b + c + 0.1 * r,
            "population": 6.0 + c,
            "population_se": 0.3,
            "lmm": 5.8 + 0.2 * b + c,
        }
        for b in range(8)
        for c, condition in enumerate(["control", "treated"])
        for r in range(3)
    ]
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
    estimates = summaries.ShrinkageEstimates(
        gene="ENSG00000123456", kind="categorical", x="condition", group="run", observations=observations, cells=cells
    )
    return plot_shrinkage(estimates)


def _no_layout_engine() -> Figure:
    fig = Figure(figsize=(4.0, 3.0))
    ax = fig.add_subplot()
    ax.plot([0, 1, 2], [2, 0, 1], label="a line")
    ax.legend(loc="best")
    ax.set_title("no layout engine")
    return fig


def _tight() -> Figure:
    fig = Figure(figsize=(5.0, 2.5), layout="tight")
    left, right = fig.subplots(1, 2)
    left.bar(["one", "two"], [3, 1])
    right.scatter([1, 2, 3], [3, 1, 2])
    right.set_ylabel("a label that takes room")
    return fig


FIGURES = {
    "reversals": _reversals,
    "volcano": _volcano,
    "shrinkage": _shrinkage,
    "no_layout_engine": _no_layout_engine,
    "tight": _tight,
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_png_has_the_pixels_savefig_draws(name):
    expected = _savefig_pixels(FIGURES[name]())
    pixels, image = _decoded(png_bytes(FIGURES[name]()))
    assert pixels.shape == expected.shape
    np.testing.assert_array_equal(pixels, expected)
    # An opaque figure is stored without its alpha channel, at the report's resolution.
    assert image.mode == "RGB"
    assert image.info["dpi"] == pytest.approx((FIGURE_DPI, FIGURE_DPI), abs=0.01)


def test_a_transparent_figure_keeps_its_alpha_channel():
    def transparent() -> Figure:
        fig = Figure(figsize=(2.0, 2.0), facecolor="none", layout="constrained")
        fig.add_subplot(facecolor="none").plot([0, 1], [1, 0])
        return fig

    expected = _savefig_pixels(transparent())
    assert expected[..., 3].min() == 0
    pixels, image = _decoded(png_bytes(transparent()))
    assert image.mode == "RGBA"
    np.testing.assert_array_equal(pixels, expected)


def _mean_sd_as_given() -> Figure:
    ranks = np.arange(30, dtype=float)
    part = pd.DataFrame({"rank_of_mean": ranks, "mean": ranks, "sd": 1 + ranks / 30, "running_median_sd": 1.5})
    return plot_mean_sd(pd.concat([part.assign(scale="before"), part.assign(scale="after")]), None, "as given")


def test_the_figure_keeps_its_dpi_and_layout_engine_and_a_second_encoding_is_savefigs_second():
    fig = _shrinkage()
    dpi, engine = fig.dpi, type(fig.get_layout_engine())
    first = png_bytes(fig)
    assert fig.dpi == dpi and type(fig.get_layout_engine()) is engine
    # A second figure with the same content: the same bytes (no time stamp, no software tag).
    assert png_bytes(_shrinkage()) == first
    assert b"Software" not in first and b"tIME" not in first
    # Constrained layout starts from where the last one left the axes, so a figure drawn a second time
    # can move by a pixel (this one does, with savefig too): the second encoding is savefig's second.
    drawn_twice = _mean_sd_as_given()
    drawn_twice.savefig(io.BytesIO(), format="png", dpi=FIGURE_DPI)
    second = _savefig_pixels(drawn_twice)
    assert not np.array_equal(second, _savefig_pixels(_mean_sd_as_given()))
    encoded_twice = _mean_sd_as_given()
    png_bytes(encoded_twice)
    np.testing.assert_array_equal(_decoded(png_bytes(encoded_twice))[0], second)


def test_render_rgba_is_a_copy_of_the_drawn_pixels():
    fig = _no_layout_engine()
    pixels = render_rgba(fig)
    assert pixels.dtype == np.uint8 and pixels.shape == (3 * FIGURE_DPI, 4 * FIGURE_DPI, 4)
    pixels[:] = 0
    np.testing.assert_array_equal(render_rgba(fig), _savefig_pixels(_no_layout_engine()))


def test_save_png_writes_the_bytes_of_png_bytes(tmp_path):
    save_png(_volcano(), tmp_path / "volcano.png")
    assert (tmp_path / "volcano.png").read_bytes() == png_bytes(_volcano())
