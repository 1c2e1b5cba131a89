"""Shared fixtures for the workflow tests: a run directory with the fixture, and one real run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).resolve().parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def make_run_dir(root: Path) -> Path:
    """A fresh directory laid out like a clone: Snakefile, workflow/, config/, envs/, plus the fixture as data/."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    shutil.copytree(REPO / "workflow", root / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "config", root / "config")
    shutil.copytree(REPO / "envs", root / "envs")
    shutil.copytree(FIXTURE / "data", root / "data")
    shutil.copy(FIXTURE / "config.yaml", root / "fixture.yaml")
    return root


def run_snakemake(run_dir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run snakemake in ``run_dir`` with the fixture config; returns the completed process."""
    cmd = [str(SNAKEMAKE), "--cores", "2", "--configfile", "fixture.yaml", "--nocolor", *args]
    return subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=timeout)


def result_files(run_dir: Path) -> list[str]:
    """Every file under results/, logs and run records excluded, relative to the run directory.

    A run record (``run.json``) holds the command line and the time of its run, so it differs
    between runs whose results are identical (tests/workflow/test_replay.py checks it).
    """
    results = run_dir / "results"
    if not results.exists():
        return []
    return sorted(
        str(p.relative_to(run_dir))
        for p in results.rglob("*")
        if p.is_file() and "logs" not in p.parts and p.name != "run.json"
    )


@pytest.fixture(scope="session")
def fixture_run(tmp_path_factory) -> Path:
    """The workflow run once, locally, on the tiny fixture; returns the run directory."""
    run_dir = make_run_dir(tmp_path_factory.mktemp("fixture_run"))
    proc = run_snakemake(run_dir)
    if proc.returncode != 0:
        pytest.fail(f"the workflow failed on the fixture:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return run_dir
