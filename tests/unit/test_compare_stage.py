"""The compare and index stages on real analysis outputs of the workflow fixture (the stages run without Snakemake)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix import cli
from batchmix.analyses import resolve_analyses
from batchmix.io import read_result_table
from batchmix.pipeline import paths
from batchmix.pipeline.registry import run_stage

FIXTURE = Path(__file__).resolve().parents[1] / "workflow" / "data"
STAGES = ("design", "de", "diagnostics", "summary")


def study_config() -> dict:
    """Three models of the fixture fitted by ML (so that gene_fits.tsv holds ML criteria), and one more
    analysis whose low-count filter differs (its own stabilise job: nothing to compare it with)."""
    return {
        "expression": str(FIXTURE / "counts.tsv"),
        "samples": str(FIXTURE / "samples.tsv"),
        "input_type": "counts",
        "model": "~ Infection + (1|Batch)",
        "batch": "Batch",
        "reml": False,
        "chunks": 1,
        "vst": {"nsub": None},
        "simpson": {"enabled": False},
        "analyses": {
            "random": {"simpson": {"enabled": True, "n_replicates": 1, "jobs": 1}},
            "fixed": {"model": "~ Infection + Batch"},
            "plain": {"model": "~ Infection", "batch": None},
            "strict": {"filter": {"min_count": 50, "min_samples": 3}},
        },
    }


def run_analyses(config: dict, outdir: str) -> None:
    """Every stage the compare stage reads from, for every analysis, through the registry."""
    stabilised = set()
    for a in resolve_analyses(config, outdir=outdir):
        cfg = a.config

        def run(stage: str, **kw) -> None:
            inputs = paths.stage_inputs(stage, cfg, outdir=a.outdir, vst_outdir=a.stabilise_outdir, **kw)
            target = {"stabilise": a.stabilise_outdir, "simpson": a.simpson_outdir}.get(stage, a.outdir)
            run_stage(stage, cfg, inputs, paths.stage_outputs(stage, cfg, outdir=target, **kw), {}, console=False)

        if a.stabilise_outdir not in stabilised:
            run("stabilise")
            stabilised.add(a.stabilise_outdir)
        run("split_genes", n_chunks=1)
        run("lmm_chunk", scatteritem="1-of-1")
        run("gather_lmm", n_chunks=1)
        for stage in STAGES:
            run(stage)
        if paths.simpson_runs(cfg):
            run("simpson")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    outdir = str(root / "results")
    config = study_config()
    run_analyses(config, outdir)
    inputs = paths.compare_inputs(config, outdir=outdir)
    run_stage("compare", config, inputs, paths.compare_outputs(outdir, stage="compare"), {}, console=False)
    return config, outdir


def _own_fits(outdir: str, name: str) -> pd.DataFrame:
    return read_result_table(f"{outdir}/{name}/lmm/gene_fits.tsv").set_index("gene_id")


def test_the_refits_agree_with_each_analysis_own_ml_fits(study):
    _, outdir = study
    ic = read_result_table(paths.compare_outputs(outdir)["information_criteria"])
    assert list(ic.columns) == [
        "gene_id",
        "group",
        "analysis",
        "model",
        "status",
        "loglik_ml",
        "n_params",
        "aic",
        "bic",
    ]
    assert list(pd.unique(ic["analysis"])) == ["random", "fixed", "plain"]  # strict has its own data
    for name, n_params in (("random", 4), ("fixed", 6), ("plain", 3)):
        own = _own_fits(outdir, name)
        mine = ic[ic["analysis"] == name].set_index("gene_id")
        assert list(mine.index) == list(own.index)  # every gene, in the stabilised matrix's order
        fitted = own["status"].isin(["ok", "singular"])
        assert fitted.sum() > 150
        for column in ("loglik", "aic", "bic"):
            ours = mine.loc[fitted, "loglik_ml" if column == "loglik" else column].to_numpy(float)
            np.testing.assert_allclose(ours, own.loc[fitted, column].to_numpy(float), rtol=1e-9)
        assert (mine.loc[fitted, "n_params"] == n_params).all()
        assert (mine.loc[~fitted, "status"] == own.loc[~fitted, "status"]).all()
        assert mine.loc[~fitted, ["loglik_ml", "aic", "bic"]].isna().all().all()


def test_best_models_follow_the_analyses_own_criteria(study):
    _, outdir = study
    best = read_result_table(paths.compare_outputs(outdir)["best_models"]).set_index("gene_id")
    own = {name: _own_fits(outdir, name) for name in ("random", "fixed", "plain")}
    assert list(best.index) == list(own["random"].index)
    assert best["status"].notna().all()
    fitted = pd.concat([o["status"].isin(["ok", "singular"]) for o in own.values()], axis=1).all(axis=1)
    assert (best.loc[~fitted, "status"].str.startswith("not_fitted:")).all()
    for criterion in ("aic", "bic"):
        wide = pd.DataFrame({name: o[criterion] for name, o in own.items()}).loc[fitted]
        assert list(best.loc[fitted, f"best_{criterion}"]) == list(wide.idxmin(axis=1))
        model = {"random": "~ Infection + (1|Batch)", "fixed": "~ Infection + Batch", "plain": "~ Infection"}
        assert list(best.loc[fitted, f"model_{criterion}"]) == [model[n] for n in wide.idxmin(axis=1)]


def test_summary_rows_come_from_each_analysis(study):
    _, outdir = study
    summary = json.loads(Path(paths.compare_outputs(outdir)["summary"]).read_text())
    rows = {row["name"]: row for row in summary["analyses"]}
    assert list(rows) == ["random", "fixed", "plain", "strict"]
    for name, row in rows.items():
        own = json.loads(Path(f"{outdir}/{name}/summary.json").read_text())
        de = json.loads(Path(f"{outdir}/{name}/de/summary.json").read_text())
        assert row["report"] == f"{name}/report.html"
        assert row["verdict"]["text"] == own["verdict"]["text"]
        assert row["genes"] == own["genes"]
        assert row["batch_fraction_median"] == own["figures"]["batch_fraction_median"]
        assert row["lrt_share_q05"] == own["figures"]["lrt_share_q05"]
        for coef, entry in de["coefficients"].items():
            assert row["de"][coef]["n_significant_lmm"] == entry["n_significant_lmm"]
    (random,) = [a for a in resolve_analyses(study_config(), outdir=outdir) if a.name == "random"]
    simpson = json.loads(Path(f"{random.simpson_outdir}/simpson/summary.json").read_text())
    assert rows["random"]["simpson_reversals"] == simpson["n_reversals"]
    assert rows["fixed"]["simpson_reversals"] is None
    compared = [g for g in summary["groups"] if g["compared"]]
    lonely = [g for g in summary["groups"] if not g["compared"]]
    assert [g["analyses"] for g in compared] == [["random", "fixed", "plain"]]
    assert [g["analyses"] for g in lonely] == [["strict"]]
    best = read_result_table(paths.compare_outputs(outdir)["best_models"])
    for criterion in ("aic", "bic"):
        counts = best[best["status"] == "ok"][f"best_{criterion}"].value_counts()
        assert compared[0][criterion]["wins"] == {n: int(counts.get(n, 0)) for n in ("random", "fixed", "plain")}


def test_de_agreement_counts_the_tables_calls(study):
    _, outdir = study
    agreement = read_result_table(paths.compare_outputs(outdir)["de_agreement"])
    assert [tuple(r) for r in agreement[["analysis_a", "analysis_b"]].itertuples(index=False)] == [
        ("random", "fixed"),
        ("random", "plain"),
        ("fixed", "plain"),
    ]
    for row in agreement.itertuples(index=False):
        a = read_result_table(f"{outdir}/{row.analysis_a}/de/{row.coefficient}.tsv").set_index("gene_id")
        b = read_result_table(f"{outdir}/{row.analysis_b}/de/{row.coefficient}.tsv").set_index("gene_id")
        in_a, in_b = a["q"] <= 0.05, b["q"] <= 0.05
        assert row.n_both == (in_a & in_b).sum()
        assert row.n_only_a == (in_a & ~in_b & b["q"].notna()).sum()
        assert row.n_only_b == (in_b & ~in_a & a["q"].notna()).sum()
        listed = [] if pd.isna(row.genes_only_a) else row.genes_only_a.split(",")
        assert sorted(listed) == sorted(a.index[in_a & ~in_b & b["q"].notna()])


def test_the_stage_reads_only_its_listed_inputs(study, tmp_path):
    config, outdir = study
    inputs = paths.compare_inputs(config, outdir=outdir)
    inputs["gene_fits"] = inputs["gene_fits"][1:]
    outputs = {k: str(tmp_path / Path(v).name) for k, v in paths.compare_outputs(outdir, stage="compare").items()}
    with pytest.raises(RuntimeError, match="not among the stage's inputs"):
        run_stage("compare", config, inputs, outputs, {"outdir": outdir}, console=False)


def test_compare_is_deterministic_and_the_cli_runs_both_stages(study, tmp_path, monkeypatch):
    config, outdir = study
    before = {k: Path(v).read_bytes() for k, v in paths.compare_outputs(outdir, stage="compare").items()}
    study_yaml = tmp_path / "study.yaml"
    study_yaml.write_text(json.dumps(config))  # JSON is YAML
    assert cli.main(["compare", "--config", str(study_yaml), "--outdir", outdir]) == 0
    after = {k: Path(v).read_bytes() for k, v in paths.compare_outputs(outdir, stage="compare").items()}
    assert after == before
    assert cli.main(["index", "--config", str(study_yaml), "--outdir", outdir]) == 0
    page = Path(paths.compare_outputs(outdir)["index"]).read_text()
    for name in ("random", "fixed", "plain", "strict"):
        assert f'<a href="{name}/report.html">' in page
    assert Path(outdir, "logs", "compare.log").exists() and Path(outdir, "logs", "index.log").exists()


def test_inputs_of_an_analysis_without_a_partner_are_its_summaries_only(study):
    config, outdir = study
    inputs = paths.compare_inputs(config, outdir=outdir)
    assert f"{outdir}/strict/summary.json" in inputs["summary"]
    assert f"{outdir}/strict/de/summary.json" in inputs["de_summary"]
    assert not any("/strict/" in p for p in inputs["gene_fits"] + inputs["de_tables"])
    assert len(inputs["expression"]) == 1 and "/shared/stabilise-" in inputs["expression"][0]
    (random,) = [a for a in resolve_analyses(config, outdir=outdir) if a.name == "random"]
    assert inputs["simpson_summary"] == [f"{random.simpson_outdir}/simpson/summary.json"]


def test_a_config_without_analyses_gets_its_row_and_no_comparison(study):
    config, outdir = study
    single = {k: v for k, v in config.items() if k != "analyses"}
    single["filter"] = config["analyses"]["strict"]["filter"]
    root = f"{outdir}/strict"  # that analysis's folder is a single run's results/
    inputs = paths.compare_inputs(single, outdir=root)
    assert not inputs["expression"] and not inputs["gene_fits"]
    run_stage("compare", single, inputs, paths.compare_outputs(root, stage="compare"), {}, console=False)
    summary = json.loads(Path(paths.compare_outputs(root)["summary"]).read_text())
    assert [row["name"] for row in summary["analyses"]] == ["analysis"]
    assert summary["analyses"][0]["report"] == "report.html"
    assert [g["compared"] for g in summary["groups"]] == [False]
    assert len(read_result_table(paths.compare_outputs(root)["best_models"])) == 0
    run_stage("index", single, paths.index_inputs(root), paths.compare_outputs(root, stage="index"), {}, console=False)
    assert '<a href="report.html">' in Path(paths.compare_outputs(root)["index"]).read_text()
