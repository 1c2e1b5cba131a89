"""The ``batchmix`` command line: the workflow's stages without Snakemake.

Each sub-command reads the same config as the workflow and writes the same files under
``--outdir`` (default ``results``), through the functions in :mod:`batchmix.stages`.
For whole runs, chunking and clusters use Snakemake (``snakemake --cores all``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from batchmix import __version__

EPILOG = """examples:
  batchmix validate --config config/config.yaml
  batchmix stabilise --config config/config.yaml --outdir results
  batchmix lmm --config config/config.yaml --outdir results
  batchmix simpson --config config/config.yaml --outdir results

The whole workflow (chunks, report, clusters): snakemake --cores all --configfile my.yaml
"""


def _paths(outdir: Path) -> dict[str, dict[str, str]]:
    def o(rel: str) -> str:
        return str(outdir / rel)

    return {
        "vst": {
            "expression": o("vst/expression.tsv.gz"), "size_factors": o("vst/size_factors.tsv"),
            "gene_status": o("vst/gene_status.tsv"), "mean_sd": o("vst/mean_sd.tsv"), "info": o("vst/info.json"),
        },
        "chunk": {"fits": o("lmm/chunks/1-of-1.fits.tsv"), "blups": o("lmm/chunks/1-of-1.blups.tsv"),
                  "corrected": o("lmm/chunks/1-of-1.corrected.tsv.gz")},
        "gather": {"gene_fits": o("lmm/gene_fits.tsv"), "blups": o("lmm/blups.tsv"),
                   "corrected": o("corrected/expression.tsv.gz")},
        "simpson": {"reversals": o("simpson/reversals.tsv"), "excluded": o("simpson/excluded_genes.tsv"),
                    "summary": o("simpson/summary.json"), "figure": o("simpson/top_pairs.png")},
    }


def _need(path: str, stage: str) -> None:
    if not Path(path).exists():
        raise SystemExit(f"batchmix: {path} is missing; run `batchmix {stage}` first (same --config and --outdir).")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``batchmix`` command."""
    parser = argparse.ArgumentParser(
        prog="batchmix",
        description="Batch-effect analysis of omics expression tables: variance stabilisation, per-gene "
        "linear mixed models, Simpson's-paradox reversals.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"batchmix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("validate", "check the config, the expression table and the sample sheet"),
        ("stabilise", "size factors, low-count filter and variance-stabilising transformation"),
        ("lmm", "per-gene linear mixed models, moderation, BLUPs, batch-corrected expression"),
        ("simpson", "scan all gene pairs for Simpson's-paradox reversals"),
    ]:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default="config/config.yaml", help="YAML config (default: %(default)s)")
        if name != "validate":
            p.add_argument("--outdir", default="results", help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)

    from batchmix.config import load_config
    from batchmix.io import InputError
    from batchmix import stages

    try:
        config = load_config(args.config)
        if args.command == "validate":
            inputs = stages.load_validated(config)
            e = inputs.expression
            print(f"ok: {e.shape[0]} genes x {e.shape[1]} samples, {inputs.batch.nunique()} batches "
                  f"({config['batch']}), model {config['model']}")
            for note in inputs.notes:
                print(f"note: {note}")
            return 0
        paths = _paths(Path(args.outdir))
        if args.command == "stabilise":
            stages.stabilise_stage(config, paths["vst"])
        elif args.command == "lmm":
            _need(paths["vst"]["expression"], "stabilise")
            random_batch = stages.batch_is_random(config)
            chunk = {k: v for k, v in paths["chunk"].items() if random_batch or k != "corrected"}
            gathered = {k: v for k, v in paths["gather"].items() if random_batch or k != "corrected"}
            stages.lmm_chunk_stage(config, paths["vst"]["expression"], paths["vst"]["gene_status"],
                                   config["samples"], chunk)
            stages.gather_stage(config, [chunk["fits"]], [chunk["blups"]],
                                [chunk["corrected"]] if random_batch else [], paths["vst"]["gene_status"], gathered)
        elif args.command == "simpson":
            _need(paths["vst"]["expression"], "stabilise")
            stages.simpson_stage(config, paths["vst"]["expression"], paths["vst"]["gene_status"],
                                 config["samples"], paths["simpson"])
    except InputError as err:
        print(f"batchmix: {err}", file=sys.stderr)
        return 2
    print(f"batchmix {args.command}: done, outputs under {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
