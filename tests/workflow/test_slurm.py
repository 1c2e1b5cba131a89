"""The workflow on a real SLURM cluster: `--executor slurm --profile profiles/slurm` on the tiny fixture.

`tests/cluster/local-slurm-up` starts a real single-node SLURM (munge, slurmctld, slurmd,
slurmdbd with MariaDB) on loopback; every job of the workflow then goes through `sbatch`, and
the test checks that each output equals the local run's byte for byte. It needs root and, where
the SLURM packages are missing, apt-get; elsewhere it is skipped and says why. The cluster is
stopped whatever happens (also when the session is interrupted with Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SNAKEMAKE, make_run_dir, result_files

CLUSTER_TOOLS = REPO / "tests" / "cluster"
SLURM_UP = CLUSTER_TOOLS / "local-slurm-up"
SLURM_DOWN = CLUSTER_TOOLS / "local-slurm-down"
# Two pytest sessions on one machine would start and stop the same daemons under each other.
CLUSTER_LOCK = Path("/var/lock/batchmix-local-slurm.lock")
CLUSTER_LOCK_WAIT_S = 900
SLURM_DAEMONS = ("munged", "slurmctld", "slurmd")


def _why_slurm_cannot_run() -> str | None:
    """The reason this machine cannot host the test cluster, or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"a local SLURM cluster needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "local-slurm-up needs root to write /etc/slurm and start the SLURM daemons (not root here)"
    installed = all(shutil.which(d, path="/usr/sbin:/usr/bin:/sbin:/bin") for d in (*SLURM_DAEMONS, "sbatch"))
    if not installed and shutil.which("apt-get") is None:
        return "the SLURM packages are not installed and there is no apt-get to install them"
    return None


SKIP_REASON = _why_slurm_cannot_run()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=f"SLURM cluster test not run: {SKIP_REASON}")


def _run_tool(tool: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(tool)], capture_output=True, text=True, timeout=timeout)


class _Terminated(BaseException):
    """SIGTERM turned into an exception, so that the cluster's `finally` still runs."""


@contextlib.contextmanager
def _stop_cluster_on_sigterm():
    def raise_terminated(signum, frame):
        raise _Terminated(f"received signal {signum}")

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _exclusive_cluster():
    CLUSTER_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(CLUSTER_LOCK, "w") as lock:
        deadline = time.monotonic() + CLUSTER_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session has held {CLUSTER_LOCK} for {CLUSTER_LOCK_WAIT_S} s")
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node SLURM cluster; stopped afterwards whatever happens."""
    with _exclusive_cluster(), _stop_cluster_on_sigterm():
        # An earlier run may have been killed before it could stop its daemons.
        _run_tool(SLURM_DOWN, timeout=300)
        try:
            started = time.monotonic()
            up = _run_tool(SLURM_UP, timeout=600)
            if up.returncode != 0:
                pytest.fail(f"local-slurm-up failed (exit {up.returncode}):\n{up.stdout}\n{up.stderr[-6000:]}")
            print(f"local-slurm-up took {time.monotonic() - started:.0f} s:\n{up.stderr.strip()}")
            yield
        finally:
            down = _run_tool(SLURM_DOWN, timeout=300)
            print(f"local-slurm-down (exit {down.returncode}): {down.stderr.strip()}")
            leftover = _our_daemons_still_running()
            assert down.returncode == 0 and not leftover, (
                f"the SLURM cluster was not stopped (exit {down.returncode}, still running: {leftover}):\n{down.stderr}"
            )


def _our_daemons_still_running() -> list[str]:
    """SLURM daemons with a pid file from local-slurm-up whose process is still alive."""
    alive = []
    for daemon in ("slurmctld", "slurmd", "slurmdbd"):
        pid_file = Path("/var/run/local-slurm") / f"{daemon}.pid"
        if pid_file.is_file():
            pid = pid_file.read_text().strip()
            if pid.isdigit() and Path(f"/proc/{pid}").exists():
                alive.append(f"{daemon}({pid})")
    return alive


SUBMITTED = re.compile(
    r"Job (?P<job>\d+) has been submitted with SLURM jobid (?P<slurm_id>\d+) \(log: .*/slurm_logs/rule_(?P<rule>\w+)/"
)


def _declared_resources(log: str) -> dict[str, dict[str, str]]:
    """Snakemake job id -> the threads and resources snakemake printed for that job."""
    declared: dict[str, dict[str, str]] = {}
    job = None
    for line in log.splitlines():
        if re.match(r"^(local)?rule \w+:$", line):
            job = None
        elif m := re.match(r"^\s+jobid: (\d+)$", line):
            job = m.group(1)
            declared.setdefault(job, {})
        elif job is not None and (m := re.match(r"^\s+threads: (\d+)$", line)):
            declared[job]["threads"] = m.group(1)
        elif job is not None and (m := re.match(r"^\s+resources: (.*)$", line)):
            for item in m.group(1).split(", "):
                key, _, value = item.partition("=")
                declared[job][key] = value
    return declared


def _minutes(timelimit: str) -> int:
    """SLURM's [D-]HH:MM:SS time limit in minutes."""
    days, _, clock = timelimit.rpartition("-")
    hours, minutes, _seconds = (int(x) for x in clock.split(":"))
    return (int(days) if days else 0) * 1440 + hours * 60 + minutes


def test_workflow_on_slurm_equals_the_local_run(slurm_cluster, fixture_run, tmp_path, capsys):
    run_dir = make_run_dir(tmp_path / "slurm_run")
    shutil.copytree(REPO / "profiles", run_dir / "profiles")
    cmd = [
        str(SNAKEMAKE),
        "--executor",
        "slurm",
        "--profile",
        "profiles/slurm",
        "--configfile",
        "fixture.yaml",
        "--nocolor",
        # Machine-specific overrides of the profile, the only ones: the test node has
        # os.cpu_count() CPUs and answers at once, so the first status query need not wait 20 s.
        "--max-threads",
        str(os.cpu_count() or 1),
        "--slurm-init-seconds-before-status-checks",
        "1",
    ]
    # The jobs snakemake plans for this config, from a dry run ("Job stats" table).
    dry = subprocess.run([*cmd, "--dry-run"], cwd=run_dir, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stdout[-4000:] + dry.stderr[-4000:]
    # (The table is printed twice; the first one, up to its "total" row, is enough.)
    stats = (dry.stdout + dry.stderr).split("Job stats:")[1].split("total")[0]
    planned_jobs = [
        rule
        for rule, count in re.findall(r"^(\w+)\s+(\d+)$", stats, re.M)
        if rule not in ("all", "total")
        for _ in range(int(count))
    ]

    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=1800)
    elapsed = time.monotonic() - started
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake on SLURM failed (exit {proc.returncode}):\n{log[-12000:]}"

    submissions = [m.groupdict() for m in SUBMITTED.finditer(log)]
    with capsys.disabled():
        # Shown in the CI log even when the test passes: the evidence that sbatch ran the jobs.
        print(f"\n[test_slurm] snakemake --executor slurm finished in {elapsed:.0f} s; jobs submitted through sbatch:")
        for line in log.splitlines():
            if SUBMITTED.search(line):
                print(f"[test_slurm]   {line.strip()}")

    # Every job of the plan except the target rule `all` ran as a SLURM job, one per gene chunk
    # for the LMM.
    submitted_rules = sorted(s["rule"] for s in submissions)
    assert submitted_rules == sorted(planned_jobs), (submitted_rules, planned_jobs)
    n_chunks = len(list((fixture_run / "results" / "lmm" / "chunks").glob("*.fits.parquet")))
    assert n_chunks >= 2 and submitted_rules.count("lmm_chunk") == n_chunks
    assert {"stabilise", "split_genes", "gather_lmm", "report"} <= set(submitted_rules)

    # SLURM's own accounting (slurmdbd) saw each of them complete, with the memory, time limit
    # and CPUs that the rule declared for that job.
    slurm_ids = ",".join(s["slurm_id"] for s in submissions)
    sacct = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", slurm_ids, "-o", "JobID,State,ReqMem,Timelimit,ReqCPUS"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sacct.returncode == 0, sacct.stderr
    accounted = {row.split("|")[0]: row.split("|")[1:] for row in sacct.stdout.splitlines() if row}
    declared = _declared_resources(log)
    for job in submissions:
        state, req_mem, timelimit, req_cpus = accounted[job["slurm_id"]]
        resources = declared[job["job"]]
        assert state == "COMPLETED", (job, accounted[job["slurm_id"]])
        assert req_mem == f"{resources['mem_mb']}M", (job, req_mem, resources)
        assert _minutes(timelimit) == int(resources["runtime"]), (job, timelimit, resources)
        assert int(req_cpus) == int(resources.get("threads", "1")), (job, req_cpus, resources)

    # The same files as the local run, byte for byte.
    local_files = result_files(fixture_run)
    assert result_files(run_dir) == local_files
    differing = [f for f in local_files if (run_dir / f).read_bytes() != (fixture_run / f).read_bytes()]
    assert differing == [], f"outputs of the SLURM run differ from the local run: {differing}"
