"""The report of the tiny fixture, rendered in headless Chromium.

Checks that the page loads offline with no console error, that every image decodes, that the
main sections are there and that the sortable tables sort; takes a screenshot.

Chromium is Debian's ``chromium`` package, installed with apt-get when missing (as root only);
otherwise the tests are skipped with the reason. Run as a script to screenshot any report::

    python tests/workflow/test_report_browser.py results/report.html docs/report_screenshot.png
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import make_run_dir, run_snakemake

SECTIONS = {
    "verdict": "Verdict",
    "design": "Design check",
    "de": "Differential expression with and without batch",
    "run": "The run",
    "batch": "Batch diagnostics",
    "lmm": "Mixed models",
    "shrinkage": "Shrinkage",
    "vst": "Variance stabilisation",
    "simpson": "Simpson reversals",
}
# No network, no background services: the page must render from the file alone.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--disable-extensions",
    "--mute-audio",
]
# Recorded into the DOM of a copy of the page: script errors, console errors, failed resources,
# and once loaded, the decode status of every image and a check that clicking a sortable
# column header sorts its rows.
PROBE = """<script>
window.__probe = {errors: []};
window.addEventListener("error", function (e) {
  var target = e.target && e.target !== window ? (e.target.src || e.target.href || e.target.tagName) : "";
  window.__probe.errors.push("error: " + (e.message || "resource failed: " + target));
}, true);
window.addEventListener("unhandledrejection", function (e) { window.__probe.errors.push("rejection: " + e.reason); });
var __consoleError = console.error;
console.error = function () {
  window.__probe.errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
  __consoleError.apply(console, arguments);
};
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  window.__probe.n_images = images.length;
  window.__probe.broken_images = images.filter(function (img) {
    return !(img.complete && img.naturalWidth > 0 && img.naturalHeight > 0);
  }).map(function (img) { return img.alt || img.src.slice(0, 40); });
  window.__probe.sorted = [];
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.querySelectorAll("th.num");
    if (!headers.length || table.tBodies[0].rows.length < 2) return;
    var th = headers[headers.length - 1];
    var column = Array.prototype.indexOf.call(th.parentNode.children, th);
    th.click();
    var read = function () {
      return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
        return parseFloat(r.cells[column].textContent);
      });
    };
    var values = read();
    var ascending = values.every(function (v, i) {
      return i === 0 || isNaN(v) || isNaN(values[i - 1]) || values[i - 1] <= v;
    });
    th.click();
    values = read();
    var descending = values.every(function (v, i) {
      return i === 0 || isNaN(v) || isNaN(values[i - 1]) || values[i - 1] >= v;
    });
    window.__probe.sorted.push({table: table.id, ascending: ascending, descending: descending, rows: values.length});
  });
  // Anything wider than the window (a table, a figure, a long name) makes the page scroll sideways.
  window.__probe.overflow = document.documentElement.scrollWidth - document.documentElement.clientWidth;
  // Inside a .scroll box a wide table scrolls within the box, by design: only its box must fit.
  window.__probe.wide = Array.prototype.filter.call(document.querySelectorAll("main *"), function (el) {
    if (el.parentElement && el.parentElement.closest(".scroll")) return false;
    return el.getBoundingClientRect().right > document.documentElement.clientWidth + 1;
  }).map(function (el) { return el.tagName + (el.id ? "#" + el.id : ""); }).slice(0, 10);
  var out = document.createElement("pre");
  out.id = "__probe";
  out.textContent = JSON.stringify(window.__probe);
  document.body.appendChild(out);
});
</script>"""


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium() -> str:
    """Chromium's path, installing Debian's package when missing; skips the test when it cannot."""
    path = find_chromium()
    if path:
        return path
    if not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and apt-get is not available to install it")
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed and installing it with apt-get needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    path = find_chromium()
    if not path:
        pytest.fail("apt-get installed chromium but no chromium binary is on PATH")
    return path


def run_chromium(chromium: str, url: str, *args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``url`` with a throw-away profile."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def screenshot(chromium: str, html: Path, png: Path, width: int = 1280, height: int = 2200) -> None:
    """Screenshot the top ``width`` × ``height`` pixels of a page."""
    png.parent.mkdir(parents=True, exist_ok=True)
    proc = run_chromium(
        chromium,
        html.resolve().as_uri(),
        f"--screenshot={png.resolve()}",
        f"--window-size={width},{height}",
        "--virtual-time-budget=10000",
    )
    if not png.exists():
        raise RuntimeError(f"chromium wrote no screenshot:\n{proc.stderr[-3000:]}")


def probe_page(chromium: str, html: Path, work: Path, probe: str = PROBE) -> tuple[dict, str, str]:
    """Load a probed copy of ``html``; returns the probe's record, the rendered DOM and Chromium's log."""
    page = html.read_text()
    probed = work / "probed_report.html"
    probed.write_text(page.replace("<head>", "<head>\n" + probe, 1))
    proc = run_chromium(
        chromium,
        probed.as_uri(),
        "--dump-dom",
        "--window-size=1280,2000",
        "--virtual-time-budget=10000",
        "--enable-logging=stderr",
        "--v=0",
    )
    match = re.search(r'<pre id="__probe">(.*?)</pre>', proc.stdout, re.S)
    if not match:
        raise AssertionError(f"the page never finished loading (no probe record):\n{proc.stderr[-3000:]}")
    record = json.loads(
        match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )
    return record, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def chromium() -> str:
    return ensure_chromium()


@pytest.fixture(scope="module")
def rendered(fixture_run, chromium, tmp_path_factory):
    """The fixture run's report loaded in Chromium: (probe record, DOM, Chromium log, report path)."""
    html = fixture_run / "results" / "report.html"
    assert html.exists(), "the workflow wrote no results/report.html"
    record, dom, log = probe_page(chromium, html, tmp_path_factory.mktemp("browser"))
    return record, dom, log, html


def test_page_loads_with_no_console_error(rendered):
    record, _, log, _ = rendered
    assert record["errors"] == []
    # Chromium logs every console message of the page (uncaught exceptions included) as a CONSOLE
    # line; the report writes none.
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert console == []


def test_every_image_decodes(rendered, fixture_run):
    record, _, _, _ = rendered
    figures = sorted((fixture_run / "results" / "figures").glob("*.png"))
    assert figures, "no figure in results/figures"
    # Every figure of results/figures is in the page, plus the Simpson figure when there are reversals.
    assert record["n_images"] >= len(figures)
    assert record["broken_images"] == []


def test_main_sections_are_present(rendered):
    _, dom, _, _ = rendered
    for section_id, heading in SECTIONS.items():
        assert re.search(rf'<section id="{section_id}">\s*<h2>{heading}</h2>', dom), section_id
    # The fixture's model has the batch as a random factor: before and after correction are shown.
    assert "after correction" in dom
    assert 'id="accounting-check"' in dom


def test_the_verdict_comes_first(rendered):
    _, dom, _, _ = rendered
    main = dom[dom.index("<main>") :]
    assert re.match(r'<main>\s*<section id="verdict">', main)
    assert re.search(r'id="verdict-batch-effect">(none|weak|moderate|strong)<', dom)
    assert re.search(r'<p class="verdict" id="verdict-text">Batch effect: \w+\.', dom)


# Types a gene id into the search box one character at a time, as a user does (an ``input`` event per
# keystroke, which is what the page listens to), and records what the result box shows after each
# step; then clicks the first of several matches.
SEARCH_PROBE = """<script>
window.__probe = {errors: [], steps: []};
window.addEventListener("error", function (e) { window.__probe.errors.push("error: " + e.message); }, true);
window.addEventListener("load", function () {
  var input = document.getElementById("gene-query");
  var result = document.getElementById("gene-result");
  function type(text) {
    input.value = "";
    for (var i = 0; i < text.length; i++) {
      input.value += text[i];
      input.dispatchEvent(new Event("input", {bubbles: true}));
    }
    return result.innerText;
  }
  window.__probe.steps.push({typed: "__GENE__", shown: type("__GENE__")});
  window.__probe.steps.push({typed: "__PREFIX__", shown: type("__PREFIX__")});
  var link = result.querySelector("a");
  if (link) {
    link.click();
    window.__probe.steps.push({clicked: link.textContent, shown: result.innerText});
  }
  window.__probe.steps.push({typed: "no_such_gene_xyz", shown: type("no_such_gene_xyz")});
  window.__probe.size_note = document.querySelector(".searchnote").textContent;
  var out = document.createElement("pre");
  out.id = "__probe";
  out.textContent = JSON.stringify(window.__probe);
  document.body.appendChild(out);
});
</script>"""


def test_gene_search_shows_the_typed_gene(fixture_run, chromium, tmp_path):
    import pandas as pd

    fits = pd.read_csv(fixture_run / "results/lmm/gene_fits.tsv", sep="\t", dtype={"gene_id": str})
    de = pd.read_csv(fixture_run / "results/de/InfectionSARS_CoV_2.tsv", sep="\t", dtype={"gene_id": str})
    fitted = fits[fits["status"].isin(["ok", "singular"])]
    gene = fitted.sort_values("frac_Batch", ascending=False)["gene_id"].iloc[0]
    # a prefix shared by several fitted genes: the box lists them as links
    prefix = next(
        g[:2] for g in fitted["gene_id"] if sum(x.lower().startswith(g[:2].lower()) for x in fitted["gene_id"]) > 1
    )
    probe = SEARCH_PROBE.replace("__GENE__", gene.lower()).replace("__PREFIX__", prefix.lower())
    record, _, _ = probe_page(chromium, fixture_run / "results/report.html", tmp_path, probe=probe)
    assert record["errors"] == []
    typed, listed, *rest = record["steps"]
    row = fitted.set_index("gene_id").loc[gene]
    shown = typed["shown"]
    assert shown.startswith(f"{gene}: {row['status']}")
    # the page rounds: fractions to 0.1%, p-values to 2 significant digits, log fold changes to 2 decimals
    assert f"{round(1000 * row['frac_Batch']) / 10:.1f}%" in shown
    assert f"{round(1000 * row['frac_residual']) / 10:.1f}%" in shown
    lrt = re.search(r"batch LRT p (\S+)", shown)
    assert lrt and abs(float(lrt.group(1)) / row["lrt_p"] - 1) < 0.06
    de_row = de.set_index("gene_id").loc[gene]
    assert "InfectionSARS_CoV_2" in shown and str(round(de_row["logfc"], 2)) in shown
    assert de_row["change"] in shown
    assert listed["shown"].startswith("Matches: ")
    clicked = rest[0]
    assert clicked["shown"].startswith(clicked["clicked"] + ": ")
    assert rest[-1]["shown"].startswith("No fitted gene matches")
    assert re.search(r"\d+ fitted genes searchable, from a table of [\d.]+ kB", record["size_note"])


def test_sortable_tables_sort(rendered):
    record, dom, _, _ = rendered
    n_sortable = len(re.findall(r'<table id="[^"]+" class="sortable"', dom))
    assert n_sortable >= 1
    assert record["sorted"], "no sortable table with two rows to click"
    for table in record["sorted"]:
        assert table["ascending"] and table["descending"], table


def test_nothing_is_wider_than_the_window(rendered):
    record, _, _, _ = rendered
    assert record["overflow"] <= 0 and record["wide"] == [], record["wide"]


# Level names of 12 characters and more (issue 13): the fixture's batches and conditions renamed.
LONG_NAMES = {
    "Batch": {f"Series{i}": f"Sequencing_run_Series{i}_2020" for i in (1, 2, 5, 7)},
    "Infection": {"Mock": "mock_infected_control", "SARS_CoV_2": "SARS_CoV_2_infected_MOI_2"},
}


@pytest.fixture(scope="module")
def long_names_run(tmp_path_factory) -> Path:
    """The workflow run on the fixture with long batch and condition names; returns the run directory."""
    run_dir = make_run_dir(tmp_path_factory.mktemp("long_names_run"))
    sheet = run_dir / "data" / "samples.tsv"
    lines = sheet.read_text().splitlines()
    header = lines[0].split("\t")
    renamed = [lines[0]]
    for line in lines[1:]:
        cells = line.split("\t")
        for column, names in LONG_NAMES.items():
            j = header.index(column)
            cells[j] = names.get(cells[j], cells[j])
        renamed.append("\t".join(cells))
    sheet.write_text("\n".join(renamed) + "\n")
    proc = run_snakemake(run_dir)
    if proc.returncode != 0:
        pytest.fail(f"the workflow failed on the long-names fixture:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return run_dir


def test_long_level_names_render_without_error_or_overflow(long_names_run, chromium, tmp_path):
    html = long_names_run / "results" / "report.html"
    record, _, _ = probe_page(chromium, html, tmp_path)
    assert record["errors"] == [] and record["broken_images"] == []
    assert record["overflow"] <= 0 and record["wide"] == [], record["wide"]
    # The run used the long names: they are the batch levels of the BLUPs the figures draw.
    blups = (long_names_run / "results" / "lmm" / "blups.tsv").read_text()
    assert all(name in blups for name in LONG_NAMES["Batch"].values())
    png = tmp_path / "long_names.png"
    screenshot(chromium, html, png, height=1600)
    assert png.stat().st_size > 10_000


def test_screenshot(rendered, chromium, tmp_path):
    import matplotlib.image

    _, _, _, html = rendered
    png = tmp_path / "report.png"
    screenshot(chromium, html, png, height=1600)
    image = matplotlib.image.imread(png)
    assert image.shape[:2] == (1600, 1280)
    # A blank or error page is (nearly) one colour; the report has text, cards and figures.
    assert image[..., :3].std() > 0.05


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: test_report_browser.py REPORT.html OUT.png [HEIGHT]")
    binary = find_chromium()
    if binary is None:
        sys.exit("chromium is not installed (Debian: apt-get install chromium)")
    screenshot(binary, Path(sys.argv[1]), Path(sys.argv[2]), height=int(sys.argv[3]) if len(sys.argv) == 4 else 2200)
    print(f"wrote {sys.argv[2]}")
