"""Logging of a stage's job: its log file, the console, and a machine-readable run record.

Every job of a stage (:func:`batchmix.pipeline.registry.run_stage`) logs to its log file and to the
console (stderr) through :mod:`logging`; Python warnings are routed into the same log
(``logging.captureWarnings``). The job's warnings, from :mod:`warnings` or logged at level WARNING
or above, are also written with its counts and time to a JSON run record next to the log
(:func:`batchmix.pipeline.paths.warnings_path`), which the report renders in its run record:

.. code-block:: json

    {"stage": "lmm_chunk", "job": "2-of-4", "status": "ok", "seconds": 1.234, "cpu_seconds": 1.198,
     "counts": {"genes": 50},
     "warnings": [{"source": "warning", "category": "RuntimeWarning", "message": "...",
                   "where": "batchmix/lmm/core.py:120", "count": 3},
                  {"source": "log", "category": "WARNING", "message": "...",
                   "where": "batchmix.lmm", "count": 1}]}

``status`` is ``ok`` or ``failed`` (then ``error`` holds the exception's message). ``seconds`` is
the job's wall time, ``cpu_seconds`` the CPU time of its process (every thread) over the same span:
on a busy machine the first grows with the load, the second much less.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from batchmix.io import InputError, write_json

__all__ = ["RunRecord", "stage_logging", "read_run_records"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class RunRecord:
    """What one job of a stage did: counts, time, warnings; written as JSON by :func:`stage_logging`."""

    stage: str
    job: str | None = None
    status: str = "running"
    seconds: float | None = None
    cpu_seconds: float | None = None
    counts: dict = field(default_factory=dict)
    warnings: list[dict] = field(default_factory=list)
    error: str | None = None

    def add_warning(self, source: str, category: str, message: str, where: str) -> bool:
        """Record one warning; a repeat of the same warning from the same place only raises its count.

        Returns whether this is the first of its kind (the one worth logging).
        """
        key = (source, category, message, where)
        for entry in self.warnings:
            if (entry["source"], entry["category"], entry["message"], entry["where"]) == key:
                entry["count"] += 1
                return False
        self.warnings.append({"source": source, "category": category, "message": message, "where": where, "count": 1})
        return True

    def to_dict(self) -> dict:
        """The record as written to JSON."""
        out = {
            "stage": self.stage,
            "job": self.job,
            "status": self.status,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "counts": self.counts,
            "warnings": self.warnings,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


class _WarningRecorder(logging.Handler):
    """Copies log records of level WARNING and above (not Python warnings: those come structured) into a record."""

    def __init__(self, record: RunRecord):
        super().__init__(level=logging.WARNING)
        self.run_record = record

    def emit(self, log_record: logging.LogRecord) -> None:
        if log_record.name == "py.warnings":
            return
        self.run_record.add_warning("log", log_record.levelname, log_record.getMessage(), log_record.name)


@contextlib.contextmanager
def stage_logging(
    stage: str,
    *,
    log_path: str | Path | None = None,
    record_path: str | Path | None = None,
    job: str | None = None,
    console: bool = True,
) -> Iterator[RunRecord]:
    """Log a stage's job to its log file and the console, and write its run record at the end.

    Parameters
    ----------
    stage : str
        The stage's name.
    log_path : str or Path, optional
        The job's log file (overwritten); none: the console only.
    record_path : str or Path, optional
        Where the JSON run record goes (see the module's docstring); none: not written.
    job : str, optional
        The job within the stage (an LMM chunk's ``i-of-n``).
    console : bool
        Whether to log to stderr too.

    Yields
    ------
    RunRecord
        Fill in ``counts``; ``status``, ``seconds`` and ``warnings`` are set here. A failure is
        logged with its traceback, recorded, and raised again.
    """
    record = RunRecord(stage=stage, job=job)
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = []
    log_file = None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "w")
        handlers.append(logging.StreamHandler(log_file))
    if console:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
    recorder = _WarningRecorder(record)
    root = logging.getLogger()
    previous_level = root.level
    for handler in [*handlers, recorder]:
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logger = logging.getLogger(__name__)
    started, started_cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        # Python warnings reach the job log through logging (captureWarnings) and the record, structured.
        logging.captureWarnings(True)
        to_log = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            # Every occurrence is counted; only the first of its kind is logged, so that a warning
            # raised once per gene does not flood the log.
            if record.add_warning("warning", category.__name__, str(message), f"{filename}:{lineno}"):
                to_log(message, category, filename, lineno, file, line)

        # "always": repeats reach show() to be counted (Python's default shows one per place).
        # Deprecation, import and resource warnings concern batchmix's maintainers, not a run: left out
        # as by Python's defaults.
        warnings.simplefilter("always")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)

        warnings.showwarning = show
        try:
            logger.info("stage %s%s: start", stage, f" ({job})" if job else "")
            yield record
            record.status = "ok"
        except BaseException as err:
            record.status = "failed"
            record.error = f"{type(err).__name__}: {err}"
            if isinstance(err, InputError):
                # The message says what is wrong and what to do; a traceback would only bury it.
                logger.error("stage %s failed: %s", stage, err)
            else:
                logger.error("stage %s failed:\n%s", stage, traceback.format_exc())
            raise
        finally:
            record.seconds = round(time.perf_counter() - started, 3)
            record.cpu_seconds = round(time.process_time() - started_cpu, 3)
            counts = ", ".join(f"{k}={v}" for k, v in record.counts.items())
            logger.info(
                "stage %s%s: %s in %.3f s%s (%d warning(s))",
                stage,
                f" ({job})" if job else "",
                "done" if record.status == "ok" else "failed",
                record.seconds,
                f"; {counts}" if counts else "",
                sum(w["count"] for w in record.warnings),
            )
            logging.captureWarnings(False)
            for handler in [*handlers, recorder]:
                root.removeHandler(handler)
            root.setLevel(previous_level)
            if log_file is not None:
                log_file.close()
            if record_path is not None:
                write_json(record.to_dict(), record_path)


def read_run_records(logs_dir: str | Path) -> list[dict]:
    """Every run record (``*.warnings.json``) under ``logs_dir``, in file-name order.

    Parameters
    ----------
    logs_dir : str or Path
        ``<outdir>/logs`` (for a report at ``<outdir>/report.html``: its folder's ``logs``).

    Returns
    -------
    list of dict
        The records as described in this module's docstring; none if the folder does not exist.
    """
    logs_dir = Path(logs_dir)
    if not logs_dir.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(logs_dir.rglob("*.warnings.json"))]
