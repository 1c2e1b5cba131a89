"""Conclusions a biologist can act on (issue 13): the design check, the verdict and DE with and without batch.

Designs derived from the tiny fixture (200 genes, 24 samples, batches Series1/2/5/7 of 3 Mock + 3
SARS-CoV-2 each) by editing its sample sheet: some batches holding one condition, two batches,
a fixed effect aliased with the random term, one sample per batch, a reversed reference level, no
batch. The stages run through the ``batchmix`` command line (the same stages as the workflow, without
Snakemake's start-up); the design errors are also checked through Snakemake, where they must stop the
run before any job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from batchmix.cli import main as batchmix
from conftest import make_run_dir, result_files, run_snakemake

STAGES = ["stabilise", "lmm", "design", "de", "diagnostics", "summary"]


def _setup(tmp_path: Path, *, samples=None, config=None) -> Path:
    run_dir = make_run_dir(tmp_path / "run")
    if samples is not None:
        sheet = pd.read_csv(run_dir / "data/samples.tsv", sep="\t", index_col=0)
        samples(sheet).to_csv(run_dir / "data/samples.tsv", sep="\t")
    cfg = yaml.safe_load((run_dir / "fixture.yaml").read_text())
    cfg["chunks"] = 1
    cfg.update(config or {})
    (run_dir / "fixture.yaml").write_text(yaml.safe_dump(cfg))
    return run_dir


def _run(run_dir: Path, stages=STAGES, monkeypatch=None) -> None:
    monkeypatch.chdir(run_dir)
    for stage in stages:
        assert batchmix([stage, "--config", "fixture.yaml"]) == 0, stage


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "results/summary.json").read_text())


def _design(run_dir: Path) -> dict:
    return json.loads((run_dir / "results/design/design.json").read_text())


def _one_condition_in_two_batches(sheet: pd.DataFrame) -> pd.DataFrame:
    sheet = sheet.copy()
    sheet.loc[sheet["Batch"] == "Series1", "Infection"] = "Mock"
    sheet.loc[sheet["Batch"] == "Series2", "Infection"] = "SARS_CoV_2"
    return sheet


def test_batches_holding_one_condition_give_confounded_and_a_verdict_naming_them(tmp_path, monkeypatch):
    run_dir = _setup(tmp_path, samples=_one_condition_in_two_batches)
    _run(run_dir, monkeypatch=monkeypatch)
    design = _design(run_dir)
    (factor,) = design["factors"]
    assert factor["column"] == "Infection" and factor["confounded"] is True
    assert sorted(factor["single_level_batches"]) == ["Series1", "Series2"]
    assert factor["crosstab"]["Series1"] == {"Mock": 6, "SARS_CoV_2": 0}
    confounded = [f for f in design["findings"] if f["code"] == "confounded"]
    assert [f["severity"] for f in confounded] == ["warning"]
    verdict = _summary(run_dir)["verdict"]
    assert verdict["design"] == "confounded"
    assert verdict["recommendation"] == "do_not_correct_confounded"
    for word in ("'Infection'", "Series1", "Series2", "confounded"):
        assert word in verdict["text"], (word, verdict["text"])
    assert "Series5" not in verdict["text"]


def _two_batches(sheet: pd.DataFrame) -> pd.DataFrame:
    sheet = sheet.copy()
    sheet["Batch"] = sheet["Batch"].map({"Series1": "RunA", "Series2": "RunA", "Series5": "RunB", "Series7": "RunB"})
    return sheet


def test_two_batches_give_few_levels_and_a_recommendation_not_to_trust_the_batch_variance(tmp_path, monkeypatch):
    run_dir = _setup(tmp_path, samples=_two_batches)
    _run(run_dir, monkeypatch=monkeypatch)
    few = [f for f in _design(run_dir)["findings"] if f["code"] == "few_levels"]
    assert len(few) == 1 and few[0]["severity"] == "warning"
    assert "'Batch' has only 2 levels" in few[0]["message"] and "not trustworthy" in few[0]["message"]
    summary = _summary(run_dir)
    assert summary["verdict"]["design"] == "few_batches"
    assert summary["verdict"]["recommendation"] == "model_batch_as_fixed"
    assert "do not trust the batch variance" in summary["verdict"]["text"]
    assert summary["figures"]["n_batches"] == 2


@pytest.mark.parametrize(
    ("samples", "config", "code", "column"),
    [
        (None, {"model": "~ Infection + (1|Infection)"}, "aliased_fixed_random", "'Infection'"),
        (lambda s: s.assign(Batch=[f"run{i}" for i in range(len(s))]), None, "one_observation_per_level", "'Batch'"),
    ],
    ids=["aliased", "one_sample_per_batch"],
)
def test_designs_that_cannot_be_fitted_stop_before_any_result(
    tmp_path, monkeypatch, capsys, samples, config, code, column
):
    run_dir = _setup(tmp_path, samples=samples, config=config)
    proc = run_snakemake(run_dir)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "batchmix input validation failed" in message and f"[{code}]" in message and column in message
    assert result_files(run_dir) == []
    # the command line refuses the same way, before writing
    monkeypatch.chdir(run_dir)
    assert batchmix(["stabilise", "--config", "fixture.yaml"]) == 2
    err = capsys.readouterr().err
    assert f"[{code}]" in err and column in err
    assert result_files(run_dir) == []


def test_levels_change_the_coefficient_name_and_sign(tmp_path, monkeypatch):
    default = _setup(tmp_path / "default")
    _run(default, ["stabilise", "lmm", "de"], monkeypatch=monkeypatch)
    reversed_ = _setup(tmp_path / "reversed", config={"levels": {"Infection": ["SARS_CoV_2", "Mock"]}})
    _run(reversed_, ["stabilise", "lmm", "de"], monkeypatch=monkeypatch)
    assert sorted(p.name for p in (default / "results/de").glob("*.tsv")) == ["InfectionSARS_CoV_2.tsv"]
    assert sorted(p.name for p in (reversed_ / "results/de").glob("*.tsv")) == ["InfectionMock.tsv"]
    a = pd.read_csv(default / "results/de/InfectionSARS_CoV_2.tsv", sep="\t", index_col="gene_id")
    b = pd.read_csv(reversed_ / "results/de/InfectionMock.tsv", sep="\t", index_col="gene_id")
    fitted = a["status"].isin(["ok", "singular"])
    assert fitted.sum() > 100
    for column in ("logfc", "t", "ols_logfc", "ols_t"):
        pd.testing.assert_series_equal(a.loc[fitted, column], -b.loc[fitted, column], rtol=1e-6, atol=1e-9)
    pd.testing.assert_series_equal(a.loc[fitted, "q"], b.loc[fitted, "q"], rtol=1e-6)


def test_an_unknown_level_is_a_validation_error_naming_the_column_and_its_levels(tmp_path, monkeypatch, capsys):
    run_dir = _setup(tmp_path, config={"levels": {"Infection": ["Mock", "Flu"]}})
    monkeypatch.chdir(run_dir)
    assert batchmix(["validate", "--config", "fixture.yaml"]) == 2
    err = capsys.readouterr().err
    assert "'Infection'" in err and "Mock, SARS_CoV_2" in err and "Flu" in err


def test_de_tables_hold_every_input_gene_once_and_summary_has_the_verdict(tmp_path, monkeypatch):
    run_dir = _setup(tmp_path)
    _run(run_dir, monkeypatch=monkeypatch)
    genes = pd.read_csv(run_dir / "data/counts.tsv", sep="\t", index_col=0).index.astype(str)
    table = pd.read_csv(run_dir / "results/de/InfectionSARS_CoV_2.tsv", sep="\t", dtype={"gene_id": str})
    assert sorted(table["gene_id"]) == sorted(genes) and table["gene_id"].is_unique
    fitted = table["status"].isin(["ok", "singular"])
    assert set(table.loc[fitted, "change"]) <= {"both", "lmm_only", "ols_only", "neither"}
    assert table.loc[~fitted, "change"].isna().all() and (~fitted).sum() > 0
    summary = _summary(run_dir)
    assert set(summary["verdict"]) >= {"batch_effect", "design", "recommendation", "text"}
    assert summary["verdict"]["batch_effect"] in ("none", "weak", "moderate", "strong")
    for key in ("batch_fraction_median", "batch_fraction_p90", "lrt_share_q05", "batch_r2_before", "batch_r2_after"):
        assert summary["figures"][key] is not None, key
    assert summary["genes"]["in"] == len(genes)
    de = json.loads((run_dir / "results/de/summary.json").read_text())["coefficients"]["InfectionSARS_CoV_2"]
    assert de["n_lost"] == int((table["change"] == "ols_only").sum())
    assert de["sentence"].startswith(f"Accounting for batch, {de['n_lost']} ")


def test_no_batch_runs_the_workflow_without_batch_sections(tmp_path):
    run_dir = _setup(tmp_path, config={"batch": None, "model": "~ Infection"})
    proc = run_snakemake(run_dir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = set(result_files(run_dir))
    assert "results/summary.json" in files and "results/de/InfectionSARS_CoV_2.tsv" in files
    assert not any(f.startswith("results/simpson/") or f.startswith("results/corrected/") for f in files)
    assert _summary(run_dir)["verdict"]["batch_effect"] == "not_assessed"
    page = (run_dir / "results/report.html").read_text()
    assert 'id="no-batch"' in page and 'id="simpson-no-batch"' in page
    assert page.index('id="verdict"') < page.index('id="run"')
