"""One whole analysis in-process, without Snakemake: every stage in the workflow's order.

:func:`run_analysis` runs the stages of the registry (:mod:`batchmix.pipeline.registry`) one after
the other, with the paths of :mod:`batchmix.pipeline.paths` under one output folder (the stabilised
matrix in the same folder), each job with its log and JSON record under ``<outdir>/logs/`` as the
workflow writes them. The Simpson scan runs as the single ``simpson`` job (it scans and calibrates
in one job when given no per-block files), which writes the same tables as the scattered jobs.
``batchmix run`` and ``batchmix replay`` (:mod:`batchmix.cli`) use it.
"""

from __future__ import annotations

import logging
import sys
import time

from batchmix.pipeline import paths
from batchmix.pipeline.registry import get_stage, run_stage

__all__ = ["analysis_jobs", "run_analysis"]

logger = logging.getLogger(__name__)


def _progress(console: bool, message: str) -> None:
    """One progress line: to stderr with ``console`` (the stages log to it too), and to the log."""
    logger.info(message)
    if console:
        print(message, file=sys.stderr, flush=True)


def analysis_jobs(config: dict) -> list[tuple[str, str | None]]:
    """The jobs of one analysis in the workflow's order: ``(stage, chunk)``, chunk ``i-of-n`` or None.

    validate, stabilise, split_genes, every lmm_chunk, gather_lmm, design, de, diagnostics, summary,
    simpson (when :func:`~batchmix.pipeline.paths.simpson_runs`), uncertainty (when
    :func:`~batchmix.pipeline.paths.uncertainty_enabled`), report, run_record.
    """
    n_chunks = paths.chunk_count(config, "lmm")
    jobs: list[tuple[str, str | None]] = [("validate", None), ("stabilise", None), ("split_genes", None)]
    jobs += [("lmm_chunk", item) for item in paths.scatteritems(n_chunks)]
    jobs += [(stage, None) for stage in ("gather_lmm", "design", "de", "diagnostics", "summary")]
    if paths.simpson_runs(config):
        jobs.append(("simpson", None))
    if paths.uncertainty_enabled(config):
        jobs.append(("uncertainty", None))
    jobs += [("report", None), ("run_record", None)]
    return jobs


def run_analysis(
    config: dict,
    *,
    outdir: str,
    threads: int = 1,
    console: bool = True,
    analysis: str | None = None,
    command: str | None = None,
) -> list[str]:
    """Run every stage of one analysis in-process, writing under ``outdir``.

    Parameters
    ----------
    config : dict
        The analysis's resolved config (:func:`batchmix.analyses.resolve_analyses`: validated,
        defaults filled in, without ``analyses``).
    outdir : str
        The output folder (the layout of a single run's ``results/``; the stabilised matrix in it too).
    threads : int
        Threads of the stages that use them (the uncertainty stage's bootstrap).
    console : bool
        Whether the stages log to stderr too (they always log to ``<outdir>/logs/``).
    analysis : str, optional
        The analysis's name, for the run record (None without ``analyses:``).
    command : str, optional
        The command line, for the run record.

    Returns
    -------
    list of str
        The stages run, in order (a chunked stage once).

    Raises
    ------
    batchmix.io.InputError
        From the stage that found an unusable input; the stages before it have written their outputs.
    """
    outdir = str(outdir)
    n_chunks = paths.chunk_count(config, "lmm")
    jobs = analysis_jobs(config)
    done: list[str] = []
    started = time.perf_counter()
    for number, (stage, item) in enumerate(jobs, start=1):
        scatteritem = item or "1-of-1"
        inputs = paths.stage_inputs(stage, config, outdir=outdir, scatteritem=scatteritem, n_chunks=n_chunks)
        outputs = paths.stage_outputs(stage, config, outdir=outdir, scatteritem=scatteritem, n_chunks=n_chunks)
        params: dict = {"threads": threads}
        if stage == "run_record":
            params.update(analysis=analysis, command=command)
        label = stage if item is None else f"{stage} {item}"
        _progress(console, f"batchmix run: [{number}/{len(jobs)}] {label} (outputs under {outdir})")
        run_stage(
            stage,
            config,
            inputs,
            outputs,
            params,
            log_path=paths.log_path(stage, outdir=outdir, scatteritem=scatteritem),
            record_path=paths.warnings_path(stage, outdir=outdir, scatteritem=scatteritem),
            job=item if get_stage(stage).per_chunk else None,
            console=console,
        )
        if not done or done[-1] != stage:
            done.append(stage)
    seconds = time.perf_counter() - started
    _progress(console, f"batchmix run: {len(jobs)} jobs done in {seconds:.1f} s, outputs under {outdir}")
    return done
