"""The ``batchmix`` command line: the workflow's stages without Snakemake.

The sub-commands are generated from the stage registry (:data:`batchmix.pipeline.registry.STAGES`,
plus ``lmm`` = split_genes, lmm_chunk for every chunk, gather_lmm). Each reads the same config as
the workflow and writes the same files under ``--outdir`` (default ``results``), at the paths of
:mod:`batchmix.pipeline.paths`, with the same logs. For whole runs, chunking and clusters use
Snakemake (``snakemake --cores all``).
"""

from __future__ import annotations

import argparse
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
        if name != "validate":
            p.add_argument("--outdir", default=paths.OUTDIR, help="output directory (default: %(default)s)")
        if name in CHUNK_COUNT_STAGES:
            p.add_argument("--chunks", type=int, default=1, help="number of gene chunks (default: %(default)s)")
        if name == "lmm_chunk":
            p.add_argument("--chunk", default="1-of-1", help="the chunk to fit, i-of-n (default: %(default)s)")
        if name == "uncertainty":
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
    stage = STAGES[name]
    return run_stage(
        name,
        config,
        inputs,
        outputs,
        {"threads": getattr(args, "threads", 1)},
        log_path=paths.log_path(name, outdir=outdir, scatteritem=scatteritem),
        record_path=paths.warnings_path(name, outdir=outdir, scatteritem=scatteritem),
        job=scatteritem if stage.per_chunk else None,
    )


def _run_whole_config(name: str, path: str, outdir: str) -> dict:
    """A stage that takes the whole config with its ``analyses:`` (compare, index): read as it is written."""
    import yaml

    from batchmix.io import InputError

    if not Path(path).exists():
        raise InputError(f"{path}: config file does not exist.")
    config = yaml.safe_load(Path(path).read_text()) or {}
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``batchmix`` command."""
    args = _parser().parse_args(argv)

    from batchmix.config import load_config
    from batchmix.io import InputError

    try:
        if STAGES.get(args.command) is not None and STAGES[args.command].whole_config:
            _run_whole_config(args.command, args.config, args.outdir)
            print(f"batchmix {args.command}: done, outputs under {args.outdir}")
            return 0
        config = load_config(args.config)
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
