"""Shared figure style: resolution and the PNG encoding used for every figure batchmix writes."""

from __future__ import annotations

import io

# Dots per inch of every PNG figure (embedded in the report and written to results/figures/).
FIGURE_DPI = 110


def png_bytes(fig) -> bytes:
    """Encode a matplotlib figure as PNG bytes, without the software tag (same bytes on every run)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, metadata={"Software": None})
    return buffer.getvalue()


def save_png(fig, path) -> None:
    """Write a matplotlib figure as a PNG file, without the software tag (same bytes on every run)."""
    fig.savefig(path, dpi=FIGURE_DPI, metadata={"Software": None})
