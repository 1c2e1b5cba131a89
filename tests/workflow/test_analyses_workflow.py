"""Several analyses in one config, through Snakemake: shared stabilisation, per-analysis folders,
reruns of only what changed, and errors that name the analysis and the key."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from conftest import FIXTURE, SNAKEMAKE, make_run_dir

STUDY = FIXTURE / "study.yaml"
ANALYSES = ("random_batch", "fixed_batch", "other_vst")


def snakemake(run_dir, *args, timeout=900):
    """snakemake on the fixture with the study config read after it."""
    cmd = [str(SNAKEMAKE), "--cores", "2", "--configfile", "fixture.yaml", "study.yaml", "--nocolor", *args]
    return subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=timeout)


def study_dir(root):
    run_dir = make_run_dir(root)
    shutil.copy(STUDY, run_dir / "study.yaml")
    return run_dir


def job_counts(output: str) -> dict[str, int]:
    """The dry run's job table: rule -> count (``all`` left out)."""
    table = output.split("Job stats:", 1)[1].split("Reasons:", 1)[0] if "Job stats:" in output else ""
    counts = {}
    for line in table.splitlines():
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if match and match[1] not in ("all", "total"):
            counts[match[1]] = int(match[2])
    return counts


def dry_run(run_dir) -> dict[str, int]:
    proc = snakemake(run_dir, "--dry-run", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return job_counts(proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """The study (three analyses of the fixture) run once."""
    run_dir = study_dir(tmp_path_factory.mktemp("study_run"))
    proc = snakemake(run_dir)
    if proc.returncode != 0:
        pytest.fail(f"the study failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return run_dir


def test_a_dry_run_shows_the_shared_stabilise_job_once(tmp_path):
    counts = dry_run(study_dir(tmp_path))
    stabilise = {rule: n for rule, n in counts.items() if rule.startswith("stabilise")}
    # random_batch and fixed_batch share one job; other_vst's trend differs and has its own
    assert len(stabilise) == 2 and set(stabilise.values()) == {1}, counts
    for name in ANALYSES:
        assert counts[f"gather_lmm_{name}"] == 1 and counts[f"report_{name}"] == 1
        assert counts[f"lmm_chunk_{name}"] == 3
    # other_vst switches the Simpson scan off; random_batch and fixed_batch differ only in their model,
    # which the scan does not read: they share one scan (its preparation, 4 block-pair jobs and the gather)
    simpson = {rule: n for rule, n in counts.items() if rule.startswith("simpson")}
    assert len(simpson) == 3 and sorted(simpson.values()) == [1, 1, 4], counts
    assert {rule.rsplit("_", 1)[0] for rule in simpson} == {"simpson_prepare", "simpson_block", "simpson"}


def test_each_analysis_writes_the_single_run_layout_under_its_name(study_run, fixture_run):
    results = study_run / "results"
    for name in ANALYSES:
        for relative in ("lmm/gene_fits.tsv", "lmm/blups.tsv", "de/summary.json", "summary.json", "report.html"):
            assert (results / name / relative).is_file(), f"{name}/{relative}"
        assert not (results / name / "vst").exists(), "the stabilised matrix lives in the shared folder"
    shared = sorted(p.name for p in (results / "shared").iterdir())
    assert [p.split("-")[0] for p in shared] == ["simpson", "stabilise", "stabilise"], shared
    scan = results / "shared" / shared[0]
    assert not any((results / name / "simpson").exists() for name in ANALYSES), "the shared scan is not copied"
    # random_batch is the fixture's own config: its tables equal the single run's byte for byte
    for relative in ("lmm/gene_fits.tsv", "lmm/blups.tsv", "de/InfectionSARS_CoV_2.tsv"):
        single = fixture_run / "results" / relative
        assert (results / "random_batch" / relative).read_bytes() == single.read_bytes(), relative
    for relative in ("simpson/reversals.tsv", "simpson/excluded_genes.tsv"):
        assert (scan / relative).read_bytes() == (fixture_run / "results" / relative).read_bytes(), relative
    # the fixed-batch model fits no variance component: its gene_fits has no batch variance column
    header = (results / "fixed_batch" / "lmm" / "gene_fits.tsv").read_text().splitlines()[0].split("\t")
    assert not any(col.startswith("var_Batch") for col in header)


def test_changing_one_analysis_reruns_only_its_jobs(study_run):
    assert dry_run(study_run) == {}, "a finished study has nothing to do"
    study = study_run / "study.yaml"
    original = study.read_text()
    try:
        study.write_text(original.replace('model: "~ Infection + Batch"', 'model: "~ Infection + Batch + Celltype"'))
        counts = dry_run(study_run)
        assert counts, "the model change must rerun something"
        per_analysis = [rule for rule in counts if rule not in ("compare", "index")]
        assert all(rule.endswith("_fixed_batch") for rule in per_analysis), counts
        assert {"gather_lmm_fixed_batch", "de_fixed_batch", "report_fixed_batch"} <= set(counts)
        assert not any(rule.startswith("stabilise") for rule in counts)

        # a Simpson setting of one analysis: a scan of its own (it no longer shares fixed_batch's), its
        # report and record; not its LMM, and nothing of fixed_batch
        study.write_text(original.replace("  random_batch: {}", "  random_batch:\n    simpson: {fdr: 0.1}"))
        counts = dry_run(study_run)
        per_analysis = {rule for rule in counts if rule not in ("compare", "index") and not rule.startswith("simpson")}
        assert per_analysis == {"report_random_batch", "run_record_random_batch"}, counts
        scans = {rule.rsplit("_", 1)[-1] for rule in counts if rule.startswith("simpson")}
        assert len(scans) == 1 and not (study_run / "results" / "shared" / f"simpson-{scans.pop()}").exists()

        # the filter of one analysis: a stabilise job of its own and all of its jobs, nothing of the others
        study.write_text(
            original.replace(
                '    model: "~ Infection + Batch"', '    model: "~ Infection + Batch"\n    filter: {min_count: 20}'
            )
        )
        counts = dry_run(study_run)
        assert sum(1 for rule in counts if rule.startswith("stabilise")) == 1, counts
        others = [rule for rule in counts if rule.endswith(("_random_batch", "_other_vst"))]
        assert others == [] and "gather_lmm_fixed_batch" in counts, counts

        # the levels of one analysis: its model-dependent jobs; the shared stabilisation stays
        study.write_text(
            original.replace("  random_batch: {}", "  random_batch:\n    levels: {Infection: [SARS_CoV_2, Mock]}")
        )
        counts = dry_run(study_run)
        per_analysis = [rule for rule in counts if rule not in ("compare", "index") and not rule.startswith("simpson")]
        assert all(rule.endswith("_random_batch") for rule in per_analysis), counts
        assert "gather_lmm_random_batch" in counts and not any(rule.startswith("stabilise") for rule in counts)
    finally:
        study.write_text(original)


@pytest.mark.parametrize(
    "analyses, fragments",
    [
        ("  bad name: {}\n", ["analyses.bad name", "letters, digits"]),
        ("  a: {chunks: 2}\n", ["analyses.a.chunks", "whole run"]),
        ("  a: {}\n  b: {reml: maybe}\n", ["analyses.b", "reml: 'maybe'"]),
        ("  a: {}\n  b: {model: '~ Infection + (1|Nope)'}\n", ["analysis 'b'", "Nope"]),
    ],
)
def test_a_bad_analysis_stops_the_run_before_any_job_naming_it(tmp_path, analyses, fragments):
    run_dir = make_run_dir(tmp_path)
    (run_dir / "study.yaml").write_text("analyses:\n" + analyses)
    proc = snakemake(run_dir)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    for fragment in fragments:
        assert fragment in message, message[-3000:]
    assert not (run_dir / "results").exists(), "nothing is written"


def test_the_index_compares_the_analyses_and_links_every_report(study_run):
    results = study_run / "results"
    for name in ("information_criteria.tsv", "best_models.tsv", "de_agreement.tsv", "summary.json"):
        assert (results / "compare" / name).is_file(), name
    page = (results / "index.html").read_text()
    for name in ANALYSES:
        assert f'<a href="{name}/report.html">' in page, name
        assert (results / name / "report.html").is_file()
    # random_batch and fixed_batch share data and genes: compared gene by gene; other_vst stands alone
    ic = (results / "compare" / "information_criteria.tsv").read_text().splitlines()
    header = ic[0].split("\t")
    analyses = {row.split("\t")[header.index("analysis")] for row in ic[1:]}
    assert analyses == {"random_batch", "fixed_batch"}
    assert "AIC prefers" in page and "BIC prefers" in page
    assert "http://" not in page and "https://" not in page, "the index is self-contained"


def test_the_index_renders_in_chromium_with_no_console_error(study_run, tmp_path):
    from test_report_browser import ensure_chromium, probe_page

    record, _, log = probe_page(ensure_chromium(), study_run / "results" / "index.html", tmp_path)
    assert record["errors"] == []
    assert [line for line in log.splitlines() if ":CONSOLE" in line] == []
    assert record["n_images"] >= 2 and record["broken_images"] == []
    assert record["overflow"] <= 0 and record["wide"] == [], record
