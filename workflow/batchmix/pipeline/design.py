"""The design stage: the design check written to ``results/design/design.json``.

The same check runs at validation (:func:`batchmix.pipeline.validate.load_validated`), where its
errors stop the run; this stage records its findings, crosstabs and random-term table for the
verdict and the report.
"""

from __future__ import annotations

import logging

from batchmix.io import write_json
from batchmix.pipeline.validate import design_report, load_samples, load_validated, sheet_design_report

__all__ = ["design_stage"]

logger = logging.getLogger(__name__)


def design_stage(config: dict, inputs: dict, outputs: dict, params: dict) -> dict:
    """Check the design and write ``outputs["design"]`` (:meth:`batchmix.design_check.DesignReport.to_dict`).

    Inputs ``expression`` and ``samples`` (the config's files; the expression only for the
    ``looks_like_counts`` finding).

    Raises
    ------
    batchmix.io.InputError
        When the design check has errors; nothing is written then.
    """
    if config["input_type"] == "log":
        validated = load_validated(config, expression=inputs["expression"], samples=inputs["samples"], check=False)
        report = design_report(config, validated)
    else:
        # The values enter the check only for log input (``looks_like_counts``); the two files were
        # validated together before any job (the workflow's main process, ``batchmix validate``), so
        # reading a count table here again would cost a whole parse for nothing.
        report = sheet_design_report(config, load_samples(config, inputs["samples"]))
    report.raise_on_errors()
    write_json(report.to_dict(), outputs["design"])
    counts = {severity: len(report.codes(severity)) for severity in ("error", "warning", "note")}
    return {"findings_warning": counts["warning"], "findings_note": counts["note"]}
