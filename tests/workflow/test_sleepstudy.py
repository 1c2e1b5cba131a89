"""The shipped walkthrough, config/sleepstudy.yaml, end to end against lme4.

The workflow runs once on lme4's sleepstudy data (``Reaction ~ Days + (1 | Subject)``, REML) in a
copy of the repository, with 200 bootstrap replicates instead of the walkthrough's 2,000 to stay
fast. The expected values are lme4's, read from the reference files made in R:
``tests/data/lme4/fits.tsv.gz`` (lme4 1.1-31 fits, see ``tests/data/lme4/make_fixtures.R``) and
``tests/data/sleepstudy_uncertainty/confint_profile_wald.tsv`` (``confint(method = "Wald")``).
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import make_run_dir

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
LME4_FITS = REPO / "tests/data/lme4/fits.tsv.gz"
LME4_CONFINT = REPO / "tests/data/sleepstudy_uncertainty/confint_profile_wald.tsv"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Fewer replicates than the walkthrough's 2,000: the run takes ~20 s instead of ~1 min.
N_BOOTSTRAP = 200
# Relative agreement with lme4 required of the REML fit.
RTOL_FIT = 1e-4
# The 95% intervals of b_Days may differ in width from lme4's Wald interval by this share: the
# bootstrap is a Monte Carlo estimate from 200 replicates, the posterior integrates over the
# variance, and neither is the Wald interval.
WIDTH_TOLERANCE = 0.30
# gene_fits.tsv column → lme4 statistic of fits.tsv.gz (dataset sleepstudy, model intercept_reml).
FIT_COLUMNS = {
    "var_Subject": "var_Subject",
    "var_residual": "var_residual",
    "loglik": "loglik",
    "coef_Intercept": "coef_Intercept",
    "coef_Days": "coef_Days",
}


def make_sleepstudy_run_dir(root: Path) -> Path:
    """A directory laid out like a clone (conftest.make_run_dir), with the sleepstudy inputs and a
    copy of config/sleepstudy.yaml that asks for ``N_BOOTSTRAP`` replicates, as ``sleepstudy_test.yaml``."""
    make_run_dir(root)
    shutil.copytree(REPO / "resources/sleepstudy", root / "resources/sleepstudy")
    config = yaml.safe_load((REPO / "config/sleepstudy.yaml").read_text())
    config["uncertainty"]["bootstrap"] = N_BOOTSTRAP
    (root / "sleepstudy_test.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def sleepstudy_run(tmp_path_factory) -> Path:
    """The walkthrough run once; returns the run directory."""
    run_dir = make_sleepstudy_run_dir(tmp_path_factory.mktemp("sleepstudy_run"))
    cmd = [str(SNAKEMAKE), "--cores", "2", "--configfile", "sleepstudy_test.yaml", "--nocolor"]
    proc = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"the sleepstudy walkthrough failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return run_dir


def _lme4_fit() -> pd.Series:
    fits = pd.read_csv(LME4_FITS, sep="\t")
    rows = fits[(fits["dataset"] == "sleepstudy") & (fits["model"] == "intercept_reml")]
    return rows.set_index("stat")["value"].astype(float)


def _wald_width_days() -> float:
    confint = pd.read_csv(LME4_CONFINT, sep="\t")
    row = confint[(confint["model"] == "intercept") & (confint["method"] == "Wald") & (confint["param"] == "b_Days")]
    assert len(row) == 1
    return float(row["upper"].iloc[0] - row["lower"].iloc[0])


def test_the_reference_files_hold_the_numbers_of_the_source():
    """The reference files are the lme4 fit printed in tests/data/lme4/sleepstudy_SOURCE.md."""
    lme4 = _lme4_fit()
    assert lme4["var_Subject"] == pytest.approx(1378.1785138, rel=1e-9)
    assert lme4["var_residual"] == pytest.approx(960.4565786, rel=1e-9)
    assert lme4["loglik"] == pytest.approx(-893.2325427, rel=1e-9)
    assert lme4["coef_Intercept"] == pytest.approx(251.40510485, rel=1e-9)
    assert lme4["coef_Days"] == pytest.approx(10.46728596, rel=1e-9)
    # Wald: 2 × 1.96 × SE(Days) = 2 × 1.96 × 0.8042214289.
    assert _wald_width_days() == pytest.approx(2 * 1.959964 * 0.8042214289, rel=1e-5)


def test_gene_fits_match_lme4(sleepstudy_run):
    fits = pd.read_csv(sleepstudy_run / "results/lmm/gene_fits.tsv", sep="\t")
    assert list(fits["gene_id"]) == ["Reaction"]
    row = fits.iloc[0]
    assert row["status"] == "ok"
    lme4 = _lme4_fit()
    for column, stat in FIT_COLUMNS.items():
        assert row[column] == pytest.approx(lme4[stat], rel=RTOL_FIT), column


@pytest.mark.parametrize("table", ["bootstrap", "posterior"])
def test_b_days_interval_covers_the_estimate_with_a_plausible_width(sleepstudy_run, table):
    rows = pd.read_csv(sleepstudy_run / f"results/uncertainty/{table}.tsv", sep="\t")
    row = rows[(rows["gene_id"] == "Reaction") & (rows["param"] == "b_Days")]
    assert len(row) == 1 and row["status"].iloc[0] == "ok"
    lower, upper = float(row["q2.5"].iloc[0]), float(row["q97.5"].iloc[0])
    estimate = _lme4_fit()["coef_Days"]
    assert lower < estimate < upper
    wald = _wald_width_days()
    assert abs((upper - lower) / wald - 1) <= WIDTH_TOLERANCE, (lower, upper, wald)


def test_bootstrap_ran_the_requested_replicates(sleepstudy_run):
    import json

    summary = json.loads((sleepstudy_run / "results/uncertainty/summary.json").read_text())
    assert summary["bootstrap"]["nsim"] == N_BOOTSTRAP
    assert summary["posterior"]["prior"] == "unif_icc"
    assert set(summary["figures"]["Reaction"]) == {"bootstrap_band", "posterior"}


def test_report_has_the_uncertainty_section_with_both_figures(sleepstudy_run):
    from PIL import Image

    page = (sleepstudy_run / "results/report.html").read_text()
    assert '<a href="#uncertainty">Uncertainty</a>' in page
    section = re.search(r'<section id="uncertainty">(.*?)</section>', page, re.S)
    assert section, "no Uncertainty section"
    section = section.group(1)
    text = re.sub(r"<[^>]+>", "", section)
    assert f"{N_BOOTSTRAP} replicates per gene" in text
    assert "ICC = σ_b²/(σ_b² + σ²) uniform on (0, 1)" in text
    images = {
        alt: base64.b64decode(data)
        for data, alt in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)"', section)
    }
    figures = sleepstudy_run / "results/uncertainty/figures"
    expected = {
        "Bootstrap band of the population fit of Reaction": figures / "Reaction.bootstrap_band.png",
        "Marginal posteriors of Reaction": figures / "Reaction.posterior.png",
    }
    assert set(images) == set(expected)
    for alt, path in expected.items():
        data = images[alt]
        assert data.startswith(PNG_SIGNATURE), alt
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel: a truncated or corrupt PNG raises here
            assert image.width > 300 and image.height > 200, (alt, image.size)
        assert data == path.read_bytes(), alt
    # The OLS-against-LMM row of the LMM carries lme4's REML log-likelihood (4 significant digits shown).
    assert re.search(r"<td>LMM</td><td class=\"num\">-893.2</td>", section)
