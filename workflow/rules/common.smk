# Shared set-up: config validation, input validation, helper functions for the rules.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# batchmix is installed by `make run` (pip install -e .); for a clone used without installing,
# the package is importable from the source tree as well.
sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from batchmix.config import fill_defaults
from batchmix.io import InputError
from batchmix.stages import batch_is_random, load_validated


validate(config, schema="../schemas/config.schema.yaml")
config.update(fill_defaults(config))

# Check the inputs once, in the main process, before any job runs: a bad table or sheet stops
# the run with a message naming the file, the row or column and what to do, and nothing is written.
# Jobs spawned on a cluster re-read the Snakefile and skip this.
if workflow.is_main_process:
    try:
        load_validated(config)
    except InputError as err:
        raise WorkflowError(f"batchmix input validation failed:\n{err}") from None


scattergather:
    lmm=config["chunks"],


# Whether the model has the batch as a random grouping factor; only then is there a
# batch-corrected expression (expression minus the batch BLUPs).
BATCH_IS_RANDOM = batch_is_random(config)

# The optional uncertainty stage (parametric bootstrap and/or exact grid posterior).
UNCERTAINTY_ENABLED = config["uncertainty"]["bootstrap"] > 0 or config["uncertainty"]["bayes"]


def final_outputs():
    """Every file the run produces, for rule all."""
    outputs = [
        "results/vst/expression.tsv.gz",
        "results/vst/size_factors.tsv",
        "results/lmm/gene_fits.tsv",
        "results/lmm/blups.tsv",
        "results/report.html",
    ]
    if BATCH_IS_RANDOM:
        outputs.append("results/corrected/expression.tsv.gz")
    if config["simpson"]["enabled"]:
        outputs.append("results/simpson/reversals.tsv")
    if UNCERTAINTY_ENABLED:
        outputs += ["results/uncertainty/bootstrap.tsv", "results/uncertainty/posterior.tsv"]
    return outputs


def lmm_chunk_outputs():
    """Outputs of one LMM chunk; the corrected chunk only when the batch is a random factor."""
    outputs = {
        "fits": "results/lmm/chunks/{scatteritem}.fits.tsv",
        "blups": "results/lmm/chunks/{scatteritem}.blups.tsv",
    }
    if BATCH_IS_RANDOM:
        outputs["corrected"] = "results/lmm/chunks/{scatteritem}.corrected.tsv.gz"
    return outputs


def gather_lmm_outputs():
    """Outputs of the gather step."""
    outputs = {"gene_fits": "results/lmm/gene_fits.tsv", "blups": "results/lmm/blups.tsv"}
    if BATCH_IS_RANDOM:
        outputs["corrected"] = "results/corrected/expression.tsv.gz"
    return outputs


def gathered_corrected(wildcards):
    """The corrected chunks to gather, or none when the batch is not a random factor."""
    if not BATCH_IS_RANDOM:
        return []
    return gather.lmm("results/lmm/chunks/{scatteritem}.corrected.tsv.gz")


def report_inputs(wildcards):
    """Everything the report summarises."""
    inputs = {
        "vst_info": "results/vst/info.json",
        "size_factors": "results/vst/size_factors.tsv",
        "gene_status": "results/vst/gene_status.tsv",
        "mean_sd": "results/vst/mean_sd.tsv",
        "vst_expression": "results/vst/expression.tsv.gz",
        "gene_fits": "results/lmm/gene_fits.tsv",
        "blups": "results/lmm/blups.tsv",
        "samples": config["samples"],
        "expression": config["expression"],
    }
    if BATCH_IS_RANDOM:
        inputs["corrected"] = "results/corrected/expression.tsv.gz"
    if config["simpson"]["enabled"]:
        inputs["reversals"] = "results/simpson/reversals.tsv"
        inputs["simpson_summary"] = "results/simpson/summary.json"
        inputs["simpson_figure"] = "results/simpson/top_pairs.png"
    if UNCERTAINTY_ENABLED:
        inputs["uncertainty_summary"] = "results/uncertainty/summary.json"
        inputs["uncertainty_bootstrap"] = "results/uncertainty/bootstrap.tsv"
        inputs["uncertainty_posterior"] = "results/uncertainty/posterior.tsv"
        inputs["uncertainty_figures"] = "results/uncertainty/figures"
    return inputs
