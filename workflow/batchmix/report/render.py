"""Rendering of the report: tables and figures for the template, ``data:`` URIs, and the Jinja2 page.

The page is one file: figures are embedded as PNG ``data:`` URIs, tables as TSV ``data:`` download
links, the CSS inline, so that it opens offline, e.g. from an email.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from batchmix.plots.style import png_bytes

__all__ = [
    "SHOWN_ROWS",
    "DOWNLOAD_ROWS",
    "TEMPLATES",
    "Figures",
    "data_uri",
    "table_to_tsv",
    "format_cell",
    "table",
    "render_page",
    "template_environment",
]

log = logging.getLogger(__name__)

# Rows of a table shown in the page; the TSV download holds up to DOWNLOAD_ROWS rows.
SHOWN_ROWS = 20
DOWNLOAD_ROWS = 10_000
#: The Jinja2 template of the page and its stylesheet.
TEMPLATES = Path(__file__).resolve().parent / "templates"


def data_uri(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,…`` of some bytes, for an ``src`` or ``href`` that needs no file."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def table_to_tsv(table: pd.DataFrame) -> str:
    """A table as tab-separated text, as the page's download links carry it.

    Parameters
    ----------
    table : pandas.DataFrame
        Written without its index.

    Returns
    -------
    str
        Tab-separated, ``\n`` line ends, floats with 6 significant digits, missing values ``NA``.
    """
    return table.to_csv(sep="\t", index=False, lineterminator="\n", float_format="%.6g", na_rep="NA")


def format_cell(value) -> str:
    """One table cell as the page shows it: 4 significant digits, 3 for tiny or huge numbers, ``NA`` for missing."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "NA"
    if isinstance(value, (float, np.floating)):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


def table(
    frame: pd.DataFrame,
    name: str,
    caption: str,
    *,
    shown: int | None = SHOWN_ROWS,
    download_rows: int = DOWNLOAD_ROWS,
    sortable: bool = False,
    full_path: str | None = None,
    hidden_columns: tuple[str, ...] = (),
) -> dict:
    """A table for the template: header, formatted rows and a TSV download of all columns.

    Parameters
    ----------
    frame : pandas.DataFrame
        The table (its index is not shown).
    name : str
        Its id in the page and the download's file name (``<name>.tsv``).
    caption : str
        Shown above it.
    shown : int or None
        Rows shown in the page (None: all).
    download_rows : int
        Rows in the download; a note says when the table has more.
    sortable : bool
        Whether clicking a column header sorts the rows.
    full_path : str, optional
        The workflow's file that holds the whole table, named in the note.
    hidden_columns : tuple of str
        Columns left out of the page (kept in the download).

    Returns
    -------
    dict
        What ``report.html`` needs: ``name``, ``caption``, ``columns``, ``rows``, ``sort_values``,
        ``n_rows``, ``n_shown``, ``download``, ``filename``, ``note``, ``sortable``.
    """
    download = frame.head(download_rows)
    note = ""
    if len(frame) > download_rows:
        note = f"The download holds the first {download_rows:,} of {len(frame):,} rows"
        note += f"; the full table is {full_path}." if full_path else "."
    rows = frame if shown is None else frame.head(shown)
    rows = rows.drop(columns=[c for c in hidden_columns if c in rows.columns])
    return {
        "name": name,
        "caption": caption,
        "columns": list(rows.columns),
        "rows": [[format_cell(v) for v in r] for r in rows.itertuples(index=False)],
        "sort_values": [
            [("" if isinstance(v, str) else format_cell(v)) for v in r] for r in rows.itertuples(index=False)
        ],
        "n_rows": len(frame),
        "n_shown": len(rows),
        "download": data_uri(table_to_tsv(download).encode(), "text/tab-separated-values"),
        "filename": f"{name}.tsv",
        "note": note,
        "sortable": sortable,
    }


class Figures:
    """Collects the report's figures: writes each PNG and keeps its data URI for the page.

    Parameters
    ----------
    directory : str or Path
        Where each figure is written as ``<name>.png`` (``results/figures`` for ``snakemake --report``).
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, fig, caption: str, alt: str) -> dict:
        """A matplotlib figure: encoded once (:func:`batchmix.plots.style.png_bytes`), written and embedded."""
        return self.add_png(name, png_bytes(fig), caption, alt)

    def add_png(self, name: str, data: bytes, caption: str, alt: str) -> dict:
        """A figure drawn by another stage: its bytes copied unchanged, so that snakemake --report carries it."""
        (self.directory / f"{name}.png").write_bytes(data)
        return {"name": name, "src": data_uri(data, "image/png"), "caption": caption, "alt": alt}


def template_environment():
    """The Jinja2 environment of batchmix's pages (the report, the index): ``report/templates/``,
    HTML autoescaping, undefined names an error, and the ``thousands`` filter (``12,345``)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["thousands"] = lambda n: f"{int(n):,}"
    return env


def render_page(context: dict, html_path: str | Path) -> None:
    """Render ``templates/report.html`` with the sections' context and write the page.

    Parameters
    ----------
    context : dict
        ``title``, ``config`` and one dict per section (``run``, ``batch``, ``lmm``, …).
    html_path : str or Path
        The page to write.
    """
    env = template_environment()
    page = env.get_template("report.html").render(css=(TEMPLATES / "report.css").read_text(), **context)
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(page)
