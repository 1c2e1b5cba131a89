"""The ``batchmix`` command line runs every stage of the workflow and writes the same files, byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import make_run_dir, result_files

BATCHMIX = Path(sys.executable).with_name("batchmix")


def test_the_command_line_writes_what_snakemake_writes(fixture_run, tmp_path):
    run_dir = make_run_dir(tmp_path / "cli")
    commands = [
        ["validate"],
        ["stabilise"],
        ["lmm", "--chunks", "3"],  # the fixture config's chunks
        ["design"],
        ["de"],
        ["diagnostics"],
        ["summary"],
        ["simpson"],
        ["report"],
    ]
    for command in commands:
        proc = subprocess.run([str(BATCHMIX), *command, "--config", "fixture.yaml"], cwd=run_dir,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, (command, proc.stderr[-4000:])
    files = result_files(run_dir)
    # Snakemake marks the directories it made as outputs with a time stamp file
    assert files == [f for f in result_files(fixture_run) if not f.endswith("/.snakemake_timestamp")]
    differing = [f for f in files if (run_dir / f).read_bytes() != (fixture_run / f).read_bytes()]
    assert differing == []
    for job in ("stabilise", "lmm_chunk/3-of-3", "gather_lmm", "simpson", "report"):
        assert (run_dir / "results/logs" / f"{job}.warnings.json").exists(), job
