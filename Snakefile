# batchmix: batch-effect analysis of omics expression tables.
# Usage: snakemake --cores all [--configfile my.yaml]; see README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/design.smk"
include: "workflow/rules/stabilise.smk"
include: "workflow/rules/lmm.smk"
include: "workflow/rules/de.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/simpson.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/uncertainty.smk"
include: "workflow/rules/record.smk"
include: "workflow/rules/compare.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
