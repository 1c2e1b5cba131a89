"""The batchmix command line."""

from __future__ import annotations

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
    for stage in ("validate", "stabilise", "lmm", "simpson"):
        assert stage in proc.stdout


def test_validate_reports_the_shape(tmp_path):
    proc = subprocess.run([str(BATCHMIX), "validate", "--config", str(_fixture_config(tmp_path))],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "200 genes x 24 samples, 4 batches" in proc.stdout


def test_validate_fails_with_the_message_and_exit_code_2(tmp_path):
    proc = subprocess.run([str(BATCHMIX), "validate", "--config", str(_fixture_config(tmp_path, batch="Lane"))],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Lane" in proc.stderr and "not in the sample sheet" in proc.stderr


def test_lmm_before_stabilise_says_what_to_run(tmp_path):
    proc = subprocess.run([str(BATCHMIX), "lmm", "--config", str(_fixture_config(tmp_path)),
                           "--outdir", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode != 0 and "batchmix stabilise" in proc.stderr
