"""Shared figure style: resolution, PNG encoding, colours, markers and the order of labels."""

from __future__ import annotations

import io
import math
import re

# Dots per inch of every PNG figure (embedded in the report and written to results/figures/).
FIGURE_DPI = 110
# zlib level of the PNGs: on the report's figures level 3 takes two thirds of the time of zlib's
# default (6) for files 8% larger, still smaller than matplotlib's RGBA PNGs at level 6.
PNG_COMPRESS_LEVEL = 3
# Light grid lines behind the data.
GRID_COLOUR = "0.92"

_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*", "<", ">")


def render_rgba(fig):
    """Draw a matplotlib figure at :data:`FIGURE_DPI`: its pixels as ``savefig`` draws them.

    ``savefig`` draws a figure that has a layout engine (``layout="constrained"``) twice: once
    with the rendering switched off, for the engine to place the axes, then again for the pixels.
    Here the engine places the axes on its own and the figure is drawn once, with the engine off
    as ``savefig`` has it for its second draw: the same pixels (the tests compare them) for about
    a fifth less of the time. The figure keeps its dpi and its layout engine afterwards; drawn
    again, it gets what a second ``savefig`` would give (constrained layout starts from the last).

    Parameters
    ----------
    fig : matplotlib.figure.Figure

    Returns
    -------
    numpy.ndarray
        Height x width x 4, ``uint8`` RGBA, a copy.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    engine = fig.get_layout_engine()
    dpi = fig.dpi
    fig.set_dpi(FIGURE_DPI)
    try:
        if engine is not None:
            engine.execute(fig)
            fig.set_layout_engine("none")
        canvas.draw()
        return np.array(canvas.buffer_rgba())
    finally:
        if engine is not None:
            fig.set_layout_engine(engine)
        fig.set_dpi(dpi)


def png_bytes(fig) -> bytes:
    """Encode a matplotlib figure as PNG bytes (same bytes on every run: no software tag, no time).

    The pixels of :func:`render_rgba`; stored as RGB when every pixel is opaque (a figure on its
    white background always is: the same image, a quarter less to compress), at
    :data:`PNG_COMPRESS_LEVEL`, with the resolution (``pHYs``) of :data:`FIGURE_DPI` as
    matplotlib writes it.
    """
    from PIL import Image

    rgba = render_rgba(fig)
    image = Image.frombuffer("RGBA", (rgba.shape[1], rgba.shape[0]), rgba, "raw", "RGBA", 0, 1)
    if rgba[..., 3].min() == 255:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="png", dpi=(FIGURE_DPI, FIGURE_DPI), compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def save_png(fig, path) -> None:
    """Write a matplotlib figure as a PNG file: the bytes of :func:`png_bytes`."""
    with open(path, "wb") as handle:
        handle.write(png_bytes(fig))


def palette(n: int) -> list:
    """``n`` distinct colours: seaborn's tab10 up to ten, husl beyond.

    The same colours as ``seaborn.color_palette("tab10" if n <= 10 else "husl", n)``, made without
    importing seaborn (which imports scipy.stats: most of a second of every report).

    Parameters
    ----------
    n : int
        Number of colours.

    Returns
    -------
    list
        RGB tuples.
    """
    if n <= 10:
        import matplotlib
        import numpy as np

        # seaborn's mpl_palette for a qualitative colormap: its first n of 10 colours.
        colours = matplotlib.colormaps["tab10"](np.linspace(0, 1, 10)[:n])[:, :3]
        return [tuple(float(v) for v in colour) for colour in colours]
    return husl_palette(n)


def husl_palette(n: int, h: float = 0.01, s: float = 0.9, lightness: float = 0.65) -> list:
    """``n`` colours evenly spaced in hue in HUSL space, as ``seaborn.husl_palette(n)``.

    Parameters
    ----------
    n : int
        Number of colours.
    h, s, lightness : float
        First hue, saturation and lightness, each in [0, 1] (seaborn's defaults).

    Returns
    -------
    list
        RGB tuples.
    """
    import numpy as np

    hues = (np.linspace(0, 1, int(n) + 1)[:-1] + h) % 1 * 359
    return [tuple(min(1.0, max(0.0, c)) for c in _husl_to_rgb(float(hue), s * 99, lightness * 99)) for hue in hues]


def desaturate(colour, proportion: float) -> tuple:
    """A colour with its HLS saturation multiplied by ``proportion``, as ``seaborn.desaturate``."""
    import colorsys

    from matplotlib.colors import to_rgb

    rgb = to_rgb(colour)
    if proportion == 1:
        return rgb
    hue, light, saturation = colorsys.rgb_to_hls(*rgb)
    return colorsys.hls_to_rgb(hue, light, saturation * proportion)


# HUSL (human-friendly HSL) to RGB, the arithmetic of husl-python 2.1.0 (MIT licence, as vendored
# by seaborn in seaborn/external/husl.py), step for step so that the colours are the same doubles.
_HUSL_M = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))
_REF_U, _REF_V = 0.19784, 0.46834
_LAB_E, _LAB_K = 0.008856, 903.3


def _husl_max_chroma(lightness: float, hue: float) -> float:
    hrad = math.radians(hue)
    sin_h, cos_h = math.sin(hrad), math.cos(hrad)
    sub1 = math.pow(lightness + 16, 3.0) / 1560896.0
    sub2 = sub1 if sub1 > 0.008856 else (lightness / 903.3)
    result = float("inf")
    for m1, m2, m3 in _HUSL_M:
        top = (0.99915 * m1 + 1.05122 * m2 + 1.14460 * m3) * sub2
        rbottom = 0.86330 * m3 - 0.17266 * m2
        lbottom = 0.12949 * m3 - 0.38848 * m1
        bottom = (rbottom * sin_h + lbottom * cos_h) * sub2
        for t in (0.0, 1.0):
            chroma = lightness * (top - 1.05122 * t) / (bottom + 0.17266 * sin_h * t)
            if chroma > 0.0 and chroma < result:
                result = chroma
    return result


def _husl_to_rgb(hue: float, saturation: float, lightness: float) -> list[float]:
    # husl -> lch
    if lightness > 99.9999999:
        lightness, chroma = 100, 0.0
    elif lightness < 0.00000001:
        lightness, chroma = 0.0, 0.0
    else:
        chroma = _husl_max_chroma(lightness, hue) / 100.0 * saturation
    # lch -> luv
    hrad = math.radians(hue)
    u, v = math.cos(hrad) * chroma, math.sin(hrad) * chroma
    # luv -> xyz
    if lightness == 0:
        xyz = [0.0, 0.0, 0.0]
    else:
        t = (lightness + 16.0) / 116.0
        var_y = math.pow(t, 3.0) if math.pow(t, 3.0) > _LAB_E else (116.0 * t - 16.0) / _LAB_K
        var_u = u / (13.0 * lightness) + _REF_U
        var_v = v / (13.0 * lightness) + _REF_V
        y = var_y * 1.0
        x = 0.0 - (9.0 * y * var_u) / ((var_u - 4.0) * var_v - var_u * var_v)
        z = (9.0 * y - (15.0 * var_v * y) - (var_v * x)) / (3.0 * var_v)
        xyz = [x, y, z]
    # xyz -> rgb
    rgb = []
    for row in _HUSL_M:
        c = sum(a * b for a, b in zip(row, xyz))
        rgb.append(12.92 * c if c <= 0.0031308 else 1.055 * math.pow(c, 1.0 / 2.4) - 0.055)
    return rgb


def markers(n: int) -> list[str]:
    """``n`` matplotlib marker codes, cycling through ten distinct shapes.

    Parameters
    ----------
    n : int
        Number of markers.

    Returns
    -------
    list of str
    """
    return [_MARKERS[i % len(_MARKERS)] for i in range(n)]


def natural_key(value) -> tuple:
    """Sort key that orders ``Series2`` before ``Series10``.

    Parameters
    ----------
    value : object
        A label (compared as text, its runs of digits as integers).

    Returns
    -------
    tuple
    """
    parts = re.split(r"(\d+)", str(value))
    return tuple(int(p) if p.isdigit() else p for p in parts)


def legend_columns(labels: list[str], width: float, *, fontsize: float = 8.0) -> int:
    """How many columns a legend of ``labels`` can have within ``width`` inches without being clipped.

    Parameters
    ----------
    labels : list of str
        The entries' texts.
    width : float
        Width available, in inches (the figure's width for a figure legend).
    fontsize : float
        The legend's font size in points.

    Returns
    -------
    int
        Between 1 and ``len(labels)``: every column is as wide as the widest entry (text at about
        0.6 em per character, plus the handle and the spacing).
    """
    if not labels:
        return 1
    entry = max(len(label) for label in labels) * 0.6 * fontsize / 72 + 0.5
    return int(max(1, min(len(labels), (width - 0.2) // entry)))
