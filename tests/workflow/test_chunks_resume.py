"""Gene chunks: count set by the config or --set-scatter, exact gather, resources per chunk, resume.

A killed run (SIGKILL to snakemake and its jobs, after some chunks finished) started again
finishes without recomputing the finished chunks and gives the same tables as an unkilled run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FIXTURE, REPO, SNAKEMAKE, make_run_dir, result_files, run_snakemake

RESOURCES_SMK = REPO / "workflow" / "rules" / "resources.smk"


def final_tables(run_dir: Path) -> list[str]:
    """Result files that do not depend on the chunk count (the chunk files themselves do)."""
    return [f for f in result_files(run_dir) if "/chunks/" not in f]


def differing_files(run_dir: Path, reference: Path, files: list[str]) -> list[str]:
    return [f for f in files if (run_dir / f).read_bytes() != (reference / f).read_bytes()]


def lmm_chunk_jobs(log: str) -> dict[str, str]:
    """Snakemake job id -> scatter item, for every lmm_chunk job the log announces."""
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", log):
        if block.startswith(("rule lmm_chunk:", "localrule lmm_chunk:")):
            jobid = re.search(r"^\s+jobid: (\d+)$", block, re.M)
            item = re.search(r"^\s+wildcards: scatteritem=(\S+)$", block, re.M)
            assert jobid and item, block
            jobs[jobid.group(1)] = item.group(1)
    return jobs


def finished_chunks(log: str) -> set[str]:
    jobs = lmm_chunk_jobs(log)
    return {jobs[j] for j in re.findall(r"Finished jobid: (\d+) \(Rule: lmm_chunk\)", log)}


# ----------------------------------------------------------------------------- chunk count and exact gather


def test_chunk_count_comes_from_the_config_and_set_scatter(tmp_path):
    run_dir = make_run_dir(tmp_path / "dry")
    from_config = run_snakemake(run_dir, "--dry-run")
    assert from_config.returncode == 0, from_config.stderr
    # tests/workflow/config.yaml sets chunks: 3
    assert sorted(lmm_chunk_jobs(from_config.stdout + from_config.stderr).values()) == ["1-of-3", "2-of-3", "3-of-3"]
    overridden = run_snakemake(run_dir, "--dry-run", "--set-scatter", "lmm=5")
    assert overridden.returncode == 0, overridden.stderr
    assert sorted(lmm_chunk_jobs(overridden.stdout + overridden.stderr).values()) == [f"{i}-of-5" for i in range(1, 6)]


def test_single_chunk_run_equals_the_chunked_run_byte_for_byte(fixture_run, tmp_path):
    run_dir = make_run_dir(tmp_path / "one_chunk")
    proc = run_snakemake(run_dir, "--set-scatter", "lmm=1")
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert len(list((run_dir / "results/lmm/chunks").glob("*.fits.parquet"))) == 1
    assert len(list((fixture_run / "results/lmm/chunks").glob("*.fits.parquet"))) == 3
    tables = final_tables(fixture_run)
    assert final_tables(run_dir) == tables
    assert {
        "results/lmm/gene_fits.tsv",
        "results/lmm/blups.tsv",
        "results/lmm/fixed_vcov.tsv",
        "results/corrected/expression.parquet",
    } <= set(tables)
    assert differing_files(run_dir, fixture_run, tables) == []


LMM_TABLES = [
    "results/lmm/gene_fits.tsv",
    "results/lmm/blups.tsv",
    "results/lmm/fixed_vcov.tsv",
    "results/lmm/model.json",
    "results/corrected/expression.parquet",
]


def test_single_chunk_run_equals_the_chunked_run_on_the_embedded_default(tmp_path):
    """The default config on the embedded example (21,797 genes x 61 samples): the gathered LMM
    tables of its chunked run and of a single-chunk run are the same bytes."""
    import yaml

    default_chunks = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["chunks"]
    assert default_chunks > 1
    run_dir = make_run_dir(tmp_path / "embedded_default")
    shutil.copytree(REPO / "resources", run_dir / "resources")

    def run(*args: str) -> None:
        # Targets first: --set-scatter takes every argument after it.
        proc = subprocess.run(
            [str(SNAKEMAKE), *LMM_TABLES, "--cores", "2", "--nocolor", *args],
            cwd=run_dir,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]

    run()
    chunked = {table: (run_dir / table).read_bytes() for table in LMM_TABLES}
    written = {table: (run_dir / table).stat().st_mtime_ns for table in LMM_TABLES}
    assert len(list((run_dir / "results/lmm/chunks").glob(f"*-of-{default_chunks}.fits.parquet"))) == default_chunks
    run("--set-scatter", "lmm=1")
    assert (run_dir / "results/lmm/chunks/1-of-1.fits.parquet").exists()
    assert all((run_dir / t).stat().st_mtime_ns != written[t] for t in LMM_TABLES), "the tables were not rewritten"
    assert [t for t in LMM_TABLES if (run_dir / t).read_bytes() != chunked[t]] == []


# ----------------------------------------------------------------------------- resources per chunk


def load_resources(expression: Path, simpson_genes="all") -> dict:
    """resources.smk's functions, loaded as plain Python with a minimal config."""
    namespace = {"config": {"expression": str(expression), "simpson": {"genes": simpson_genes}}}
    exec(compile(RESOURCES_SMK.read_text(), str(RESOURCES_SMK), "exec"), namespace)
    return namespace


def test_chunk_sizes_match_how_the_genes_are_split():
    # chunks hold whole 2,000-gene fit blocks, the blocks shared out as numpy.array_split shares items
    res = load_resources(FIXTURE / "data" / "counts.tsv")
    expected = {
        (200, 3): [200, 0, 0],
        (200, 1): [200],
        (7, 10): [7] + [0] * 9,
        (21_797, 4): [6000, 6000, 6000, 3797],  # 11 blocks: 3, 3, 3, 2 (the last one short)
        (60_000, 64): [2000] * 30 + [0] * 34,
        (20_000, 3): [8000, 6000, 6000],
    }
    for (n_genes, n_chunks), sizes in expected.items():
        got = [res["genes_in_chunk"](f"{i}-of-{n_chunks}", n_genes) for i in range(1, n_chunks + 1)]
        assert got == sizes, (n_genes, n_chunks)
    with pytest.raises(ValueError, match="i-of-n"):
        res["genes_in_chunk"]("chunk2", 200)


def test_lmm_chunk_memory_scales_with_genes_times_samples_and_grows_with_attempt(tmp_path):
    # Two tables with the same genes: 24 and 20,000 samples (header and first rows are enough:
    # the functions count rows and header fields).
    small = FIXTURE / "data" / "counts.tsv"
    wide = tmp_path / "wide.tsv"
    header = "gene_id\t" + "\t".join(f"s{i}" for i in range(20_000))
    wide.write_text(header + "\n" + "".join(f"g{i}\t0\n" for i in range(60_000)))
    small_res, wide_res = load_resources(small), load_resources(wide)
    assert small_res["n_samples"]() == 24 and wide_res["n_samples"]() == 20_000
    no_status = SimpleNamespace()

    mem = wide_res["mem_mb_for"]("lmm_chunk")
    one_chunk = mem(SimpleNamespace(scatteritem="1-of-1"), no_status, 1)
    ten_chunks = mem(SimpleNamespace(scatteritem="1-of-10"), no_status, 1)
    assert one_chunk > ten_chunks
    cost = wide_res["STAGE_COSTS"]["lmm_chunk"]
    # The data term: 10x the genes of a chunk means 10x its data part of the request.
    base = cost.base_mb * wide_res["MEMORY_HEADROOM"]
    assert (one_chunk - base) == pytest.approx(10 * (ten_chunks - base), rel=0.01)
    # 60,000 genes x 20,000 samples in one chunk does not fit in the request for 24 samples.
    assert one_chunk > 10 * small_res["mem_mb_for"]("lmm_chunk")(SimpleNamespace(scatteritem="1-of-1"), no_status, 1)

    # A retried job gets twice the memory and twice the time, then four times.
    runtime = wide_res["runtime_for"]("lmm_chunk")
    chunk = SimpleNamespace(scatteritem="3-of-10")
    assert [mem(chunk, no_status, a) for a in (1, 2, 3)] == [mem(chunk, no_status, 1) * k for k in (1, 2, 4)]
    assert [runtime(chunk, no_status, a) for a in (1, 2, 3)] == [runtime(chunk, no_status, 1) * k for k in (1, 2, 4)]


def test_gene_count_is_read_from_gene_status_when_the_job_has_it(tmp_path):
    res = load_resources(FIXTURE / "data" / "counts.tsv")
    status = tmp_path / "gene_status.tsv"
    status.write_text("gene_id\tstatus\n" + "".join(f"g{i}\tok\n" for i in range(1000)))
    mem = res["mem_mb_for"]("lmm_chunk")
    chunk = SimpleNamespace(scatteritem="1-of-1")
    from_table = mem(chunk, SimpleNamespace(), 1)  # the fixture's 200 genes
    from_status = mem(chunk, SimpleNamespace(gene_status=str(status)), 1)  # 1000 genes
    assert res["_n_genes"](SimpleNamespace(gene_status=str(status))) == 1000
    assert res["_n_genes"](SimpleNamespace()) == 200
    assert from_status >= from_table


def rule_blocks() -> dict[str, str]:
    """Rule name -> the text of its definition, over every .smk file of the workflow.

    Rules are written ``rule name:`` or, defined once per analysis in a loop, ``rule:`` with
    ``name: _analysis.rule("stage")`` (or ``shared_rule("stage", ...)``): the stage is the name here.
    """
    blocks = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for match in re.finditer(r"^([ \t]*)rule(?: (\w+))?:\n((?:\1[ \t]+.*\n|\n)*)", smk.read_text(), re.M):
            name, body = match.group(2), match.group(3)
            if name is None:
                named = re.search(r"^\s+name:\s*\n\s+.*?\"(\w+)\"", body, re.M)
                assert named, f"a rule in {smk.name} has no name: line naming its stage"
                name = named.group(1)
            blocks[name] = body
    return blocks


def test_every_rule_declares_threads_memory_and_runtime():
    blocks = rule_blocks()
    assert {"stabilise", "split_genes", "lmm_chunk", "gather_lmm", "simpson", "report"} <= set(blocks)
    for rule, body in blocks.items():
        if "script:" not in body and "shell:" not in body and "run:" not in body:
            continue  # a target rule such as `all` runs no job
        assert re.search(r"^\s+threads: \S", body, re.M), f"rule {rule} declares no threads"
        assert re.search(r"^\s+mem_mb=\S", body, re.M), f"rule {rule} declares no mem_mb"
        assert re.search(r"^\s+runtime=\S", body, re.M), f"rule {rule} declares no runtime"


def test_cost_models_belong_to_rules():
    res = load_resources(FIXTURE / "data" / "counts.tsv")
    assert set(res["STAGE_COSTS"]) <= set(rule_blocks())
    with pytest.raises(KeyError, match="no cost model"):
        res["mem_mb_for"]("no_such_stage")


# ----------------------------------------------------------------------------- resume after a kill

N_CHUNKS = 6


def _wait_for_finished_chunks(proc: subprocess.Popen, log_path: Path, at_least: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(finished_chunks(log_path.read_text())) >= at_least:
            return
        if proc.poll() is not None:
            pytest.fail(
                f"snakemake ended (exit {proc.returncode}) before {at_least} chunks finished:\n"
                f"{log_path.read_text()[-6000:]}"
            )
        time.sleep(0.05)
    pytest.fail(f"{at_least} chunks did not finish within {timeout} s:\n{log_path.read_text()[-6000:]}")


def test_killed_run_resumes_without_recomputing_finished_chunks(fixture_run, tmp_path):
    run_dir = make_run_dir(tmp_path / "killed")
    shutil.copytree(REPO / "profiles", run_dir / "profiles")
    # One job at a time, so that the chunks finish one by one and the kill lands between them.
    cmd = [
        str(SNAKEMAKE),
        "--profile",
        "profiles/local",
        "--cores",
        "1",
        "--configfile",
        "fixture.yaml",
        "--set-scatter",
        f"lmm={N_CHUNKS}",
        "--nocolor",
    ]

    first_log = tmp_path / "first.log"
    with open(first_log, "w") as log:
        # Own session: the kill reaches snakemake and the job it is running, as a crash would.
        first = subprocess.Popen(cmd, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_finished_chunks(first, first_log, at_least=2, timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, "snakemake finished before it could be killed"

    finished = finished_chunks(first_log.read_text())
    all_chunks = {f"{i}-of-{N_CHUNKS}" for i in range(1, N_CHUNKS + 1)}
    unfinished = all_chunks - finished
    assert len(finished) >= 2 and unfinished, (finished, unfinished)
    assert not (run_dir / "results/lmm/gene_fits.tsv").exists()
    chunk_files = {item: sorted((run_dir / "results/lmm/chunks").glob(f"{item}.*")) for item in finished}
    stamps = {p: p.stat().st_mtime_ns for paths in chunk_files.values() for p in paths}
    # expression, fits, blups, fixed_vcov, corrected
    assert all(len(paths) == 5 for paths in chunk_files.values()), chunk_files

    # Started again as a user would: the kill left Snakemake's lock behind, so unlock first.
    unlock = subprocess.run([*cmd, "--unlock"], cwd=run_dir, capture_output=True, text=True, timeout=300)
    assert unlock.returncode == 0, unlock.stderr
    second = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=900)
    second_log = second.stdout + second.stderr
    assert second.returncode == 0, second_log[-8000:]

    rerun = set(lmm_chunk_jobs(second_log).values())
    assert rerun == unfinished, f"finished before the kill: {sorted(finished)}; rerun: {sorted(rerun)}"
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "a finished chunk was rewritten"
    assert "rule stabilise:" not in second_log and "rule split_genes:" not in second_log

    # The same tables as the run that was never killed (which used 3 chunks).
    tables = final_tables(fixture_run)
    assert final_tables(run_dir) == tables
    assert differing_files(run_dir, fixture_run, tables) == []


def test_resources_cut_chunks_as_the_split_does_and_read_binary_input_shapes(tmp_path):
    import numpy as np
    import pandas as pd
    from batchmix.io.matrices import write_matrix
    from batchmix.pipeline.lmm import chunk_ranges

    table = pd.DataFrame(np.ones((300, 7)), index=[f"g{i}" for i in range(300)], columns=[f"s{j}" for j in range(7)])
    for name in ("counts.parquet", "counts.h5ad"):
        write_matrix(table, tmp_path / name)
        res = load_resources(tmp_path / name)
        assert res["n_samples"]() == 7
        no_status = type("Input", (), {"gene_status": None})()
        assert res["stage_values"]("stabilise", None, no_status) == 300 * 7
        for n_chunks in (1, 3, 7, 400):
            sizes = [res["genes_in_chunk"](f"{i}-of-{n_chunks}", 300) for i in range(1, n_chunks + 1)]
            assert sizes == [stop - start for start, stop in chunk_ranges(300, n_chunks)]


def _chunk_outputs(run_dir: Path, item: str) -> list[Path]:
    """The files an lmm_chunk job writes (the chunk's expression file comes from split_genes)."""
    return [p for p in (run_dir / "results/lmm/chunks").glob(f"{item}.*") if ".expression." not in p.name]


def _stop_while_a_chunk_is_being_written(proc: subprocess.Popen, log_path: Path, run_dir: Path, timeout: float):
    """Freeze snakemake and its jobs (SIGSTOP) while an lmm_chunk job has written some outputs but has not finished.

    Returns the chunk. The poll is tight; the freeze makes the state checkable before the kill.
    """
    deadline = time.monotonic() + timeout
    all_chunks = [f"{i}-of-{N_CHUNKS}" for i in range(1, N_CHUNKS + 1)]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"snakemake ended (exit {proc.returncode}) before a chunk was caught mid-write")
        for item in all_chunks:
            if _chunk_outputs(run_dir, item):
                os.killpg(proc.pid, signal.SIGSTOP)
                if item not in finished_chunks(log_path.read_text()):
                    return item
                os.killpg(proc.pid, signal.SIGCONT)
                all_chunks.remove(item)  # finished before the freeze: try the next one
                break
        time.sleep(0.001)
    pytest.fail(f"no lmm_chunk job was caught while writing within {timeout} s")


def test_killed_mid_write_resumes_with_the_make_run_command(fixture_run, tmp_path):
    """A kill while a chunk job writes: plain snakemake refuses the leftovers; the profile of `make run` resumes."""
    run_dir = make_run_dir(tmp_path / "killed_mid_write")
    shutil.copytree(REPO / "profiles", run_dir / "profiles")
    common = ["--cores", "1", "--configfile", "fixture.yaml", "--set-scatter", f"lmm={N_CHUNKS}", "--nocolor"]
    # The command `make run` runs (checked against the Makefile below), with the fixture's config.
    make_run = [str(SNAKEMAKE), "--profile", "profiles/local", *common]
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M)
    assert recipe and "$(BIN)/snakemake --profile profiles/local" in recipe.group(1), (
        "make run does not use the profile"
    )
    assert re.search(r"^rerun-incomplete: true$", (REPO / "profiles/local/config.yaml").read_text(), re.M)

    first_log = tmp_path / "first.log"
    with open(first_log, "w") as log:
        first = subprocess.Popen(make_run, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        item = _stop_while_a_chunk_is_being_written(first, first_log, run_dir, timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            os.killpg(first.pid, signal.SIGCONT)  # a stopped process dies only once it runs again
        first.wait(timeout=60)
    assert _chunk_outputs(run_dir, item), "the kill did not leave a partly written chunk"

    subprocess.run([*make_run, "--unlock"], cwd=run_dir, capture_output=True, text=True, timeout=300)
    # Without the profile, Snakemake refuses to go on: the killed job's outputs are marked incomplete.
    plain = subprocess.run([str(SNAKEMAKE), *common], cwd=run_dir, capture_output=True, text=True, timeout=300)
    assert plain.returncode != 0 and "incomplete" in (plain.stdout + plain.stderr).lower(), plain.stderr[-3000:]
    assert not (run_dir / "results/lmm/gene_fits.tsv").exists()

    # The documented command resumes by itself and reruns the interrupted chunk.
    second = subprocess.run(make_run, cwd=run_dir, capture_output=True, text=True, timeout=900)
    second_log = second.stdout + second.stderr
    assert second.returncode == 0, second_log[-8000:]
    assert item in set(lmm_chunk_jobs(second_log).values())
    tables = final_tables(fixture_run)
    assert final_tables(run_dir) == tables
    assert differing_files(run_dir, fixture_run, tables) == []
