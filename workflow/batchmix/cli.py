"""The ``batchmix`` command line: the workflow's stages without Snakemake.

The stage sub-commands are generated from the stage registry
(:data:`batchmix.pipeline.registry.STAGES`, plus ``lmm`` = split_genes, lmm_chunk for every chunk,
gather_lmm). Each reads the same config as the workflow and writes the same files under
``--outdir`` (default ``results``), at the paths of :mod:`batchmix.pipeline.paths`, with the same logs.

Two more commands run whole analyses in-process (:func:`batchmix.pipeline.runner.run_analysis`):

- ``batchmix run --config FILE [--analysis NAME] [--outdir DIR]``: every stage of an analysis, then
  its run record ``DIR/run.json`` (:mod:`batchmix.runrecord`). With ``analyses:`` in the config,
  ``--analysis`` picks one (default outdir ``results/<name>``); without it every analysis runs, each
  under ``results/<name>``.
- ``batchmix replay RUN_JSON --outdir DIR [--force]``: the analysis of a run record again, after
  checking that every input has its recorded MD5 (exit 2 and nothing written when one differs);
  ``DIR`` must be empty or new unless ``--force``.

For chunked runs on a cluster and analyses sharing their stabilise job, use Snakemake
(``snakemake --cores all``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from batchmix import __version__
from batchmix.pipeline import paths
from batchmix.pipeline.registry import COMPOSITES, STAGES, run_stage

EPILOG = """examples:
  batchmix validate --config config/config.yaml
  batchmix stabilise --config config/config.yaml --outdir results
  batchmix lmm --config config/config.yaml --outdir results
  batchmix design --config config/config.yaml --outdir results
  batchmix de --config config/config.yaml --outdir results
  batchmix diagnostics --config config/config.yaml --outdir results
  batchmix summary --config config/config.yaml --outdir results
  batchmix simpson --config config/config.yaml --outdir results
  batchmix uncertainty --config config/config.yaml --outdir results
  batchmix report --config config/config.yaml --outdir results
  batchmix compare --config config/study.yaml --outdir results
  batchmix index --config config/study.yaml --outdir results

whole analyses in-process, and their replay from the run record:
  batchmix run --config config/config.yaml                  (outputs under results/)
  batchmix run --config study.yaml --analysis random_batch  (outputs under results/random_batch/)
  batchmix replay results/run.json --outdir replay/

The whole workflow (chunks, report, clusters): snakemake --cores all --configfile my.yaml
"""

# Sub-command options beyond --config and --outdir, by stage.
CHUNK_COUNT_STAGES = {"split_genes", "gather_lmm", "lmm"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchmix",
        description="Batch-effect analysis of omics expression tables: variance stabilisation, per-gene "
        "linear mixed models, Simpson's-paradox reversals, uncertainty, one HTML report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"batchmix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {name: stage.summary for name, stage in STAGES.items()}
    commands.update({name: f"run {', '.join(steps)} in turn" for name, steps in COMPOSITES.items()})
    for name, help_text in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default="config/config.yaml", help="YAML config (default: %(default)s)")
        if not STAGES.get(name) or not STAGES[name].whole_config:
            p.add_argument(
                "--analysis", help="with analyses: in the config, the analysis (a name under analyses:) to run"
            )
        if name != "validate":
            p.add_argument(
                "--outdir",
                default=None,
                help="output directory (default: results, or results/<name> with --analysis)",
            )
        if name in CHUNK_COUNT_STAGES:
            p.add_argument("--chunks", type=int, default=1, help="number of gene chunks (default: %(default)s)")
        if name in STAGES and STAGES[name].per_chunk:
            what = {"lmm_chunk": "the chunk to fit", "simpson_block": "the share of the block pairs to scan"}
            p.add_argument(
                "--chunk",
                default="1-of-1",
                help=f"{what.get(name, 'the sign-flip replicate to run')}, i-of-n (default: %(default)s)",
            )
        if name == "uncertainty":
            p.add_argument("--threads", type=int, default=1, help="bootstrap threads (default: %(default)s)")
    p = sub.add_parser(
        "run",
        help="run every stage of an analysis in-process, then its run record (run.json)",
        description="Run every stage of an analysis in-process (no Snakemake), then write its run record "
        "OUTDIR/run.json. With analyses: in the config, --analysis picks one; without it every analysis runs, "
        "each under results/<name>.",
    )
    p.add_argument("--config", default="config/config.yaml", help="YAML config (default: %(default)s)")
    p.add_argument("--analysis", help="the analysis to run (a name under analyses:); default: every analysis")
    p.add_argument(
        "--outdir",
        help="output directory (default: results, or results/<name> for an analysis of analyses:; "
        "with several analyses, the folder that holds one folder per analysis)",
    )
    p.add_argument("--threads", type=int, default=1, help="bootstrap threads (default: %(default)s)")
    p = sub.add_parser(
        "replay",
        help="rerun the analysis of a run record (run.json) after checking its inputs' MD5s",
        description="Rerun the analysis a run record (run.json) describes, with its resolved config, into "
        "OUTDIR, after checking that every input has the recorded size and MD5 (a differing or missing input: "
        "exit 2, nothing written). Relative input paths are looked up from here, then from the recorded "
        "working directory.",
    )
    p.add_argument("record", metavar="RUN_JSON", help="the run record (e.g. results/run.json)")
    p.add_argument("--outdir", required=True, help="output directory; must be new or empty unless --force")
    p.add_argument("--force", action="store_true", help="write into OUTDIR even when it is not empty")
    p.add_argument("--threads", type=int, default=1, help="bootstrap threads (default: %(default)s)")
    return parser


def _producers(config: dict, outdir: str, n_chunks: int) -> dict[str, str]:
    """Which stage writes each file under ``outdir``."""
    made_by = {}
    for stage in [name for name, s in STAGES.items() if not s.whole_config]:
        for name, value in paths.stage_outputs(stage, config, outdir=outdir, n_chunks=n_chunks).items():
            for p in [value] if isinstance(value, str) else value:
                made_by[p] = stage
    for item in paths.scatteritems(n_chunks):
        for name, value in paths.stage_outputs("lmm_chunk", config, outdir=outdir, scatteritem=item).items():
            made_by[value] = "lmm_chunk"
    return made_by


def _check_inputs(inputs: dict, config: dict, outdir: str, n_chunks: int) -> None:
    made_by = None
    for value in inputs.values():
        for p in [value] if isinstance(value, str) else value:
            if not Path(p).exists():
                made_by = made_by or _producers(config, outdir, n_chunks)
                stage = made_by.get(p)
                if stage is None:
                    raise SystemExit(f"batchmix: {p} does not exist; check the path in the config.")
                shown = "lmm" if stage in COMPOSITES["lmm"] else stage
                raise SystemExit(
                    f"batchmix: {p} is missing; run `batchmix {shown}` first (same --config and --outdir)."
                )


def _run(name: str, config: dict, args: argparse.Namespace) -> dict:
    outdir = args.outdir
    n_chunks = getattr(args, "chunks", 1)
    scatteritem = getattr(args, "chunk", "1-of-1")
    if name == "lmm_chunk":
        n_chunks = int(scatteritem.partition("-of-")[2] or 1)
    inputs = paths.stage_inputs(name, config, outdir=outdir, scatteritem=scatteritem, n_chunks=n_chunks)
    outputs = paths.stage_outputs(name, config, outdir=outdir, scatteritem=scatteritem, n_chunks=n_chunks)
    _check_inputs(inputs, config, outdir, n_chunks)
    # the output folders, as Snakemake makes them before a job
    for value in outputs.values():
        for p in [value] if isinstance(value, str) else value:
            Path(p).parent.mkdir(parents=True, exist_ok=True)
    stage = STAGES[name]
    params = {"threads": getattr(args, "threads", 1)}
    if name == "run_record":
        params["command"] = args.command_line
    return run_stage(
        name,
        config,
        inputs,
        outputs,
        params,
        log_path=paths.log_path(name, outdir=outdir, scatteritem=scatteritem),
        record_path=paths.warnings_path(name, outdir=outdir, scatteritem=scatteritem),
        job=scatteritem if stage.per_chunk else None,
    )


def _read_yaml(path: str) -> dict:
    """A config file as written (``analyses:`` included), for :func:`batchmix.analyses.resolve_analyses`."""
    import yaml

    from batchmix.io import InputError

    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: config file does not exist.")
    try:
        config = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{file}: the config is not valid YAML ({err}). Fix the file.") from None
    if not isinstance(config, dict):
        raise InputError(f"{file}: the config must be a mapping of keys to values (expression: ..., model: ...).")
    return config


def _run_whole_config(name: str, path: str, outdir: str) -> dict:
    """A stage that takes the whole config with its ``analyses:`` (compare, index): read as it is written."""
    config = _read_yaml(path)
    if name == "compare":
        inputs = paths.compare_inputs(config, outdir=outdir)
        outputs = paths.compare_outputs(outdir, stage="compare")
        missing = [p for value in inputs.values() for p in value if not Path(p).exists()]
        if missing:
            raise SystemExit(
                f"batchmix: {missing[0]} is missing ({len(missing)} input(s) missing); run every analysis first: "
                f"snakemake --cores all --configfile {path}"
            )
    else:
        inputs = paths.index_inputs(outdir)
        outputs = paths.compare_outputs(outdir, stage="index")
        missing = [p for p in inputs.values() if not Path(p).exists()]
        if missing:
            raise SystemExit(
                f"batchmix: {missing[0]} is missing; run `batchmix compare` first (same --config and --outdir)."
            )
    return run_stage(
        name,
        config,
        inputs,
        outputs,
        {"outdir": outdir},
        log_path=paths.log_path(name, outdir=outdir),
        record_path=paths.warnings_path(name, outdir=outdir),
    )


def _run_command(args: argparse.Namespace) -> int:
    """``batchmix run``: every stage of one analysis, or of every analysis, in-process."""
    from batchmix.analyses import has_analyses, resolve_analyses
    from batchmix.io import InputError
    from batchmix.pipeline.runner import run_analysis

    raw = _read_yaml(args.config)
    several = has_analyses(raw)
    if args.analysis is not None and not several:
        raise InputError(
            f"{args.config}: --analysis {args.analysis} given, but the config has no analyses:; "
            "leave out --analysis to run its one analysis."
        )
    root = args.outdir if (args.outdir and args.analysis is None) else paths.OUTDIR
    analyses = resolve_analyses(raw, str(args.config), outdir=root)
    if args.analysis is not None:
        chosen = [a for a in analyses if a.name == args.analysis]
        if not chosen:
            names = ", ".join(str(a.name) for a in analyses)
            raise InputError(f"{args.config}: no analysis {args.analysis!r} under analyses:; its analyses: {names}.")
        analyses = chosen
    for analysis in analyses:
        outdir = args.outdir if (args.outdir and args.analysis is not None) else analysis.outdir
        run_analysis(
            analysis.config,
            outdir=outdir,
            threads=args.threads,
            analysis=analysis.name,
            command=args.command_line,
        )
        shown = "" if analysis.name is None else f" {analysis.name}"
        print(f"batchmix run{shown}: done, outputs under {outdir} (run record {outdir.rstrip('/')}/run.json)")
    return 0


def _replay_command(args: argparse.Namespace) -> int:
    """``batchmix replay``: the analysis of a run record, after checking its inputs."""
    from batchmix.config import validate_config
    from batchmix.io import InputError
    from batchmix.pipeline.runner import run_analysis
    from batchmix.runrecord import read_run_record, replay_config, verify_inputs

    record = read_run_record(args.record)
    located = verify_inputs(record)
    config = validate_config(replay_config(record, located), f"{args.record}: config")
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(
            f"{outdir}: --outdir is a file, not a folder. Give a new or empty folder. Nothing was written."
        )
    if outdir.is_dir() and any(outdir.iterdir()) and not args.force:
        raise InputError(
            f"{outdir}: --outdir is not empty. Give a new or empty folder, or add --force to write over what is "
            "there (files of the earlier run that this analysis does not write are kept). Nothing was written."
        )
    run_analysis(
        config,
        outdir=str(outdir),
        threads=args.threads,
        analysis=record.get("analysis"),
        command=args.command_line,
    )
    print(f"batchmix replay: done, outputs of {args.record} replayed under {outdir} (run record {outdir / 'run.json'})")
    return 0


def _stage_config(args: argparse.Namespace) -> dict:
    """The config one stage runs with: the file's, or with ``analyses:`` that of ``--analysis``.

    Sets ``args.outdir`` to its default (``results``, or ``results/<name>`` for an analysis).
    """
    from batchmix.analyses import has_analyses, resolve_analyses
    from batchmix.config import load_config
    from batchmix.io import InputError

    raw = _read_yaml(args.config)
    if not has_analyses(raw):
        if args.analysis is not None:
            raise InputError(
                f"{args.config}: --analysis {args.analysis} given, but the config has no analyses:; leave it out."
            )
        if getattr(args, "outdir", None) is None:
            args.outdir = paths.OUTDIR
        return load_config(args.config)
    analyses = resolve_analyses(raw, str(args.config))
    names = ", ".join(str(a.name) for a in analyses)
    chosen = [a for a in analyses if a.name == args.analysis]
    if not chosen:
        wanted = "give --analysis NAME" if args.analysis is None else f"there is no analysis {args.analysis!r}"
        raise InputError(
            f"{args.config}: the config holds several analyses; {wanted} (its analyses: {names}). "
            "The whole study runs with snakemake --configfile, or `batchmix run`."
        )
    if getattr(args, "outdir", None) is None:
        args.outdir = chosen[0].outdir
    return chosen[0].config


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``batchmix`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    # the command line as typed, for the run record
    args.command_line = shlex.join(["batchmix", *argv])

    from batchmix.io import InputError

    if args.command in ("run", "replay"):
        try:
            return _run_command(args) if args.command == "run" else _replay_command(args)
        except InputError as err:
            print(f"batchmix {args.command}: {err}", file=sys.stderr)
            return 2

    try:
        if STAGES.get(args.command) is not None and STAGES[args.command].whole_config:
            args.outdir = args.outdir or paths.OUTDIR
            _run_whole_config(args.command, args.config, args.outdir)
            print(f"batchmix {args.command}: done, outputs under {args.outdir}")
            return 0
        config = _stage_config(args)
        if args.command == "validate":
            inputs = paths.stage_inputs("validate", config)
            counts = run_stage("validate", config, inputs, {}, {})
            batches = f"{counts['batches']} batches ({config['batch']})" if config["batch"] else "no batch"
            print(f"ok: {counts['genes']} genes x {counts['samples']} samples, {batches}, model {config['model']}")
            for note in counts["notes"]:
                print(f"note: {note}")
            return 0
        if args.command in COMPOSITES:
            steps = COMPOSITES[args.command]
            for step in steps:
                if STAGES[step].per_chunk:
                    for item in paths.scatteritems(args.chunks):
                        args.chunk = item
                        _run(step, config, args)
                else:
                    _run(step, config, args)
        else:
            _run(args.command, config, args)
    except InputError as err:
        print(f"batchmix: {err}", file=sys.stderr)
        return 2
    print(f"batchmix {args.command}: done, outputs under {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
