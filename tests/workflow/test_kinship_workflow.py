"""The known-covariance term ``(1|kinship)`` and the importance-sampling posterior through the whole workflow.

- A kinship run on the fixture's 24 samples with a synthetic block-diagonal relationship matrix
  (each Mock replicate paired with the SARS-CoV-2 replicate of the same number and series, relatedness
  0.5, so the pairs do not follow the condition): every fitted gene gets ``h2`` and the report
  the heritability figure.
- Bad matrices (not symmetric, not positive semi-definite, other sample ids) stop the run at
  validation, naming the file and the problem, with nothing under ``results/``.
- ``uncertainty: {bayes: true, prior: brms_default}`` with the random-slopes model on the sleepstudy
  walkthrough's data: every fitted gene has a posterior or a ``failed:importance_*`` status.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_run_dir, result_files, run_snakemake

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
KINSHIP_FILE = "data/kinship.tsv"
FITTED = ("ok", "singular")
HERITABILITY_CAPTION = "Per-gene heritability h² of (1|kinship); right: h² against its SE"


def _sample_ids(run_dir: Path) -> list[str]:
    return pd.read_csv(run_dir / "data/samples.tsv", sep="\t", dtype=str)["sample_id"].tolist()


def _pairs_matrix(ids: list[str]) -> np.ndarray:
    """Identity plus 0.5 between ``<series>_Mock_<k>`` and ``<series>_SARS-CoV-2_<k>`` (the fixture's order)."""
    K = np.eye(len(ids))
    for first in range(0, len(ids), 6):
        for k in range(3):
            mock, infected = first + k, first + 3 + k
            assert ids[mock].endswith(f"_Mock_{k + 1}") and ids[infected].endswith(f"_SARS-CoV-2_{k + 1}")
            K[mock, infected] = K[infected, mock] = 0.5
    return K


def _write_kinship(run_dir: Path, K: np.ndarray, ids: list[str]) -> None:
    frame = pd.DataFrame(K, index=pd.Index(ids, name="sample_id"), columns=ids)
    frame.to_csv(run_dir / KINSHIP_FILE, sep="\t")


def _kinship_config(run_dir: Path) -> None:
    config = yaml.safe_load((run_dir / "fixture.yaml").read_text())
    config["model"] = "~ Infection + (1|kinship)"
    config["covariance"] = {"kinship": KINSHIP_FILE}
    # the scan does not use the model; off to keep the run short
    config["simpson"] = {**config.get("simpson", {}), "enabled": False}
    (run_dir / "fixture.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def kinship_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = make_run_dir(tmp_path_factory.mktemp("kinship_run"))
    ids = _sample_ids(run_dir)
    _write_kinship(run_dir, _pairs_matrix(ids), ids)
    _kinship_config(run_dir)
    return run_dir, run_snakemake(run_dir)


def _finished(kinship_run) -> Path:
    run_dir, proc = kinship_run
    assert proc.returncode == 0, f"the kinship workflow failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return run_dir


def test_every_fitted_gene_has_a_heritability(kinship_run):
    kinship_run = _finished(kinship_run)
    fits = pd.read_csv(kinship_run / "results/lmm/gene_fits.tsv", sep="\t", dtype={"gene_id": str})
    fitted = fits[fits["status"].isin(FITTED)]
    assert len(fitted) > 100, fits["status"].value_counts()
    for column in ("var_kinship", "h2", "se_h2", "lrt_kinship_stat", "lrt_kinship_p"):
        assert column in fits.columns, column
    h2 = fitted["h2"].to_numpy(dtype=float)
    assert np.isfinite(h2).all(), fitted.loc[~np.isfinite(h2), ["gene_id", "status"]]
    assert ((h2 >= 0) & (h2 <= 1)).all()
    p = fitted["lrt_kinship_p"].to_numpy(dtype=float)
    assert ((p >= 0) & (p <= 1)).all()


def test_the_report_has_the_heritability_figure(kinship_run):
    kinship_run = _finished(kinship_run)
    html = (kinship_run / "results/report.html").read_text()
    assert HERITABILITY_CAPTION in html
    assert "The median h² over the" in html and "q &lt; 0.05" in html
    figure = kinship_run / "results/figures/heritability.png"
    assert figure.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def _not_symmetric(K: np.ndarray) -> np.ndarray:
    K = K.copy()
    K[0, 3] = 0.2  # K[3, 0] stays 0.5
    return K


def _not_psd(K: np.ndarray) -> np.ndarray:
    K = K.copy()
    K[0, 3] = K[3, 0] = 1.5  # the pair's 2 x 2 block [[1, 1.5], [1.5, 1]] has eigenvalue -0.5
    return K


BAD_MATRICES = {
    "not symmetric": (_not_symmetric, None, ["not symmetric"]),
    "not PSD": (_not_psd, None, ["not positive semi-definite"]),
    "wrong ids": (None, "not_a_sample", ["not in it", "Series1_NHBE_Mock_1"]),
}


@pytest.mark.parametrize("case", sorted(BAD_MATRICES))
def test_a_bad_kinship_matrix_stops_the_run_before_any_job(case, tmp_path):
    edit, renamed, fragments = BAD_MATRICES[case]
    run_dir = make_run_dir(tmp_path / "run")
    ids = _sample_ids(run_dir)
    K = _pairs_matrix(ids)
    if edit is not None:
        K = edit(K)
    matrix_ids = [renamed if i == 0 and renamed else s for i, s in enumerate(ids)]
    _write_kinship(run_dir, K, matrix_ids)
    _kinship_config(run_dir)
    proc = run_snakemake(run_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    for fragment in [KINSHIP_FILE, "covariance: kinship", *fragments]:
        assert fragment in out, f"{fragment!r} not in the error output:\n{out[-3000:]}"
    assert result_files(run_dir) == []


def test_brms_default_posterior_of_random_slopes_on_sleepstudy(tmp_path):
    run_dir = make_run_dir(tmp_path / "sleep")
    shutil.copytree(REPO / "resources/sleepstudy", run_dir / "resources/sleepstudy")
    config = yaml.safe_load((REPO / "config/sleepstudy.yaml").read_text())
    config["model"] = "~ Days + (Days | Subject)"
    config["uncertainty"].update({"bootstrap": 0, "bayes": True, "prior": "brms_default", "genes": "all"})
    (run_dir / "sleep.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [str(SNAKEMAKE), "--cores", "2", "--configfile", "sleep.yaml", "--nocolor"]
    proc = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    fits = pd.read_csv(run_dir / "results/lmm/gene_fits.tsv", sep="\t", dtype={"gene_id": str})
    fitted = set(fits.loc[fits["status"].isin(FITTED), "gene_id"])
    assert fitted == {"Reaction"}
    post = pd.read_csv(run_dir / "results/uncertainty/posterior.tsv", sep="\t", dtype={"gene_id": str})
    assert set(post["gene_id"]) >= fitted
    for gene, rows in post[post["gene_id"].isin(fitted)].groupby("gene_id"):
        statuses = set(rows["status"])
        assert len(statuses) == 1, (gene, statuses)
        status = statuses.pop()
        if status == "ok":
            values = rows[["mean", "sd", "q2.5", "q50", "q97.5"]].to_numpy(dtype=float)
            assert np.isfinite(values).all(), rows
            # the random-slopes model: both SDs and their correlation, not only one component
            params = set(rows["param"])
            assert {"b_Intercept", "b_Days", "sigma"} <= params, params
            assert any(p.startswith("cor_") for p in params), params
        else:
            assert status in ("failed:importance_khat", "failed:importance_ess"), (gene, status)
    diagnostics = pd.read_csv(
        run_dir / "results/uncertainty/posterior_diagnostics.tsv", sep="\t", dtype={"gene_id": str}
    )
    assert set(diagnostics["gene_id"]) == fitted
    assert np.isfinite(diagnostics["khat"].to_numpy(dtype=float)).all()
