"""Shared figure style: resolution, PNG encoding, colours, markers and the order of labels."""

from __future__ import annotations

import io
import re

# Dots per inch of every PNG figure (embedded in the report and written to results/figures/).
FIGURE_DPI = 110
# Light grid lines behind the data.
GRID_COLOUR = "0.92"

_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*", "<", ">")


def png_bytes(fig) -> bytes:
    """Encode a matplotlib figure as PNG bytes, without the software tag (same bytes on every run)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, metadata={"Software": None})
    return buffer.getvalue()


def save_png(fig, path) -> None:
    """Write a matplotlib figure as a PNG file, without the software tag (same bytes on every run)."""
    fig.savefig(path, dpi=FIGURE_DPI, metadata={"Software": None})


def palette(n: int) -> list:
    """``n`` distinct colours: seaborn's tab10 up to ten, husl beyond.

    Parameters
    ----------
    n : int
        Number of colours.

    Returns
    -------
    list
        RGB tuples.
    """
    import seaborn as sns

    return sns.color_palette("tab10" if n <= 10 else "husl", n)


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
