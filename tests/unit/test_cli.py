"""The batchmix command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BATCHMIX = Path(sys.executable).with_name("batchmix")


def _fixture_config(tmp_path, **changes):
    cfg = yaml.safe_load((REPO / "tests/workflow/config.yaml").read_text())
    cfg["expression"] = str(REPO / "tests/workflow/data/counts.tsv")
    cfg["samples"] = str(REPO / "tests/workflow/data/samples.tsv")
    cfg.update(changes)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_help_lists_the_stages():
    proc = subprocess.run([str(BATCHMIX), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for stage in (
        "validate",
        "stabilise",
        "split_genes",
        "lmm_chunk",
        "gather_lmm",
        "lmm",
        "simpson",
        "uncertainty",
        "report",
    ):
        assert f"    {stage} " in proc.stdout, stage


def test_validate_reports_the_shape(tmp_path):
    proc = subprocess.run(
        [str(BATCHMIX), "validate", "--config", str(_fixture_config(tmp_path))], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "200 genes x 24 samples, 4 batches" in proc.stdout


def test_validate_fails_with_the_message_and_exit_code_2(tmp_path):
    proc = subprocess.run(
        [str(BATCHMIX), "validate", "--config", str(_fixture_config(tmp_path, batch="Lane"))],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Lane" in proc.stderr and "not in the sample sheet" in proc.stderr


def test_lmm_before_stabilise_says_what_to_run(tmp_path):
    proc = subprocess.run(
        [str(BATCHMIX), "lmm", "--config", str(_fixture_config(tmp_path)), "--outdir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "batchmix stabilise" in proc.stderr


def test_report_before_lmm_names_the_missing_stage(tmp_path):
    config = _fixture_config(tmp_path)
    out = tmp_path / "out"
    stabilise = subprocess.run(
        [str(BATCHMIX), "stabilise", "--config", str(config), "--outdir", str(out)], capture_output=True, text=True
    )
    assert stabilise.returncode == 0, stabilise.stderr
    assert (out / "vst/gene_status.tsv").exists() and (out / "logs/stabilise.log").exists()
    record = yaml.safe_load((out / "logs/stabilise.warnings.json").read_text())
    assert record["stage"] == "stabilise" and record["status"] == "ok" and record["counts"]["genes"] == 200
    proc = subprocess.run(
        [str(BATCHMIX), "report", "--config", str(config), "--outdir", str(out)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "batchmix lmm" in proc.stderr


def test_a_stage_of_a_config_with_analyses_needs_the_analysis_and_writes_under_its_folder(tmp_path):
    config = _fixture_config(tmp_path, analyses={"random_batch": {}, "fixed_batch": {"model": "~ Infection + Batch"}})
    run = lambda *args: subprocess.run([str(BATCHMIX), *args], capture_output=True, text=True, cwd=tmp_path)  # noqa: E731
    refused = run("stabilise", "--config", str(config))
    assert refused.returncode == 2
    assert "give --analysis NAME" in refused.stderr
    assert "random_batch" in refused.stderr and "fixed_batch" in refused.stderr
    assert not (tmp_path / "results").exists()
    unknown = run("validate", "--config", str(config), "--analysis", "nope")
    assert unknown.returncode == 2 and "no analysis 'nope'" in unknown.stderr
    done = run("stabilise", "--config", str(config), "--analysis", "fixed_batch")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "results" / "fixed_batch" / "vst" / "gene_status.tsv").is_file()


def test_the_scattered_simpson_scan_runs_from_the_command_line(tmp_path):
    """simpson_prepare, then each block-pair job by --chunk i-of-n: together the one-job scan's candidates."""
    config = str(_fixture_config(tmp_path, simpson={"block_size": 64, "calibration": "none"}))
    out = tmp_path / "out"

    def run(*command):
        proc = subprocess.run(
            [str(BATCHMIX), *command, "--config", config, "--outdir", str(out)], capture_output=True, text=True
        )
        return proc

    proc = run("stabilise")
    assert proc.returncode == 0, proc.stderr
    proc = run("simpson_block", "--chunk", "1-of-3")
    assert proc.returncode != 0 and "batchmix simpson_prepare" in proc.stderr
    assert run("simpson_prepare").returncode == 0
    for i in (1, 2, 3):
        proc = run("simpson_block", "--chunk", f"{i}-of-3")
        assert proc.returncode == 0, proc.stderr
    parts = [(out / f"simpson/blocks/{i}-of-3.candidates.tsv").read_text().splitlines() for i in (1, 2, 3)]
    assert all(part[0] == "index_a\tindex_b\tp" for part in parts)
    one = run("simpson_block")  # 1-of-1: every block pair
    assert one.returncode == 0, one.stderr
    whole = (out / "simpson/blocks/1-of-1.candidates.tsv").read_text().splitlines()
    scattered = sorted(line for part in parts for line in part[1:])
    assert len(whole) > 1 and scattered == sorted(whole[1:])


def test_the_one_job_simpson_scan_prepares_on_disk_and_agrees_with_the_workflow_path(tmp_path):
    """`batchmix simpson` (no prepared folder given) prepares into a temporary folder next to its
    outputs, removes it, and writes the tables the gather of the saved preparation writes."""
    from batchmix.config import load_config
    from batchmix.pipeline import run_stage, stage_inputs, stage_outputs

    config_path = _fixture_config(tmp_path, simpson={"block_size": 64, "calibration": "sign_flip", "n_replicates": 2})
    out = tmp_path / "out"
    for stage in ("stabilise", "simpson"):
        proc = subprocess.run(
            [str(BATCHMIX), stage, "--config", str(config_path), "--outdir", str(out)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "simpson").iterdir()) == [
        "excluded_genes.tsv",
        "reversals.tsv",
        "summary.json",
        "top_pairs.png",
    ]
    # the workflow's path in-process: simpson_prepare's folder, then the gather that scans it itself
    config = load_config(str(config_path))
    prepared = tmp_path / "prepared"
    prepare_inputs = stage_inputs("simpson_prepare", config, outdir=str(out))
    run_stage("simpson_prepare", config, prepare_inputs, {"prepared": str(prepared)}, console=False)
    gathered = tmp_path / "gathered"
    names = stage_outputs("simpson", config, outdir=str(out))
    outputs = {key: str(gathered / Path(value).name) for key, value in names.items()}
    inputs = {**stage_inputs("simpson", config, outdir=str(out)), "prepared": str(prepared)}
    run_stage("simpson", config, inputs, outputs, console=False)
    for name in ("reversals.tsv", "excluded_genes.tsv", "summary.json"):
        assert (out / "simpson" / name).read_bytes() == (gathered / name).read_bytes(), name
    assert json.loads((gathered / "summary.json").read_text())["calibration"]["method"] == "sign_flip"


def test_the_permutation_check_runs_on_the_prepared_data_with_the_in_memory_numbers(tmp_path):
    """simpson.permutation_check and calibration: permutation, in the gather, prepare each permuted data
    set a block at a time on disk; their counts are those of the in-memory check on the matrix."""
    import numpy as np
    from batchmix import simpson
    from batchmix.io import batch_labels, read_matrix, read_result_table, read_samples
    from batchmix.pipeline.simpson import zero_value_of

    settings = {"calibration": "permutation", "permutation_check": True, "n_permutations": 2, "seed": 5}
    config_path = _fixture_config(tmp_path, simpson=settings)
    out = tmp_path / "out"
    for stage in ("stabilise", "simpson"):
        proc = subprocess.run(
            [str(BATCHMIX), stage, "--config", str(config_path), "--outdir", str(out)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "simpson/summary.json").read_text())
    assert sorted(p.name for p in (out / "simpson").iterdir())[0] == "excluded_genes.tsv"  # no folder left

    expression = read_matrix(out / "vst/expression.parquet")
    status = read_result_table(out / "vst/gene_status.tsv").set_index("gene_id")["status"]
    expression = expression.loc[(status.reindex(expression.index) == "ok").to_numpy()]
    batch = batch_labels(read_samples(REPO / "tests/workflow/data/samples.tsv").loc[expression.columns], "Batch")
    zero_value = zero_value_of(json.loads((out / "vst/info.json").read_text()))
    common = {"n_permutations": 2, "zero_value": zero_value}
    check = simpson.permutation_check(expression, batch, **common)  # the summary's check: the default seed
    assert summary["permutation_check"] == {**check.__dict__, "null_counts": list(check.null_counts)}
    assert summary["permutation_check"]["discoveries_observed"] == summary["n_reversals"] > 0
    calibration = simpson.permutation_check(expression, batch, seed=5, **common)
    assert summary["calibration"]["method"] == "permutation"
    assert summary["calibration"]["flagged_null"] == calibration.null_counts
    assert np.isfinite(summary["permutation_check"]["empirical_fdr"])
