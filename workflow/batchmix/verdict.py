"""The verdict: how strong the batch effect is, whether the design can answer, and what to do.

:func:`classify` turns the design check and the per-gene fits into three codes and one paragraph a
biologist reads in a minute.

**Batch effect**, from the fitted genes (status ``ok`` or ``singular``); f is the batch's variance
fraction (``frac_<batch>``), the LRT share is the share of fitted genes whose likelihood-ratio test of the
random terms against OLS has a Benjamini–Hochberg q < 0.05 (over the fitted genes), first match wins:

- ``strong``: median f ≥ 0.25, or 90th percentile of f ≥ 0.60;
- ``moderate``: median f ≥ 0.10, or 90th percentile ≥ 0.30;
- ``weak``: median f ≥ 0.02, or 90th percentile ≥ 0.10, or LRT share ≥ 0.05;
- ``none``: otherwise;
- ``not_assessed``: no batch column, the batch not in the model, or no fitted gene.

The batch R² of the top principal components before and after correction is reported and quoted in
the text, but does not set the class: with few samples per batch a factor's R² is inflated by chance
(its expectation under no effect is (B − 1)/(n − 1) for B batches and n samples).

**Design**, from :func:`batchmix.design_check.check_design`, first match wins:

- ``not_identifiable``: the design check has an error, or the batch's random term is not identifiable;
- ``confounded``: a batch with two or more samples holds a single level of a fixed-effect factor;
- ``few_batches``: fewer than 5 batches (:data:`batchmix.design_check.FEW_LEVELS`);
- ``ok``: otherwise.

**Recommendation**, first match wins:

- ``fix_design``: design ``not_identifiable``; change the model or the samples;
- ``do_not_correct_confounded``: design ``confounded``; correcting would remove biology;
- ``model_batch_as_fixed``: design ``few_batches``; a variance from so few batches is unreliable (a batch
  variance of 0 is no evidence of no batch effect), a fixed batch effect needs none;
- ``no_action``: batch effect ``none`` or ``not_assessed``;
- ``correct_for_visualisation_only``: batch effect ``weak``; tests barely change, correct only for plots;
- ``block_in_de``: batch effect ``moderate`` or ``strong``; test with the mixed model (moderated p-values),
  never on batch-corrected data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from batchmix.de import FITTED_STATUSES, bh
from batchmix.design import formula_columns, parse_formula, sanitize_name
from batchmix.design_check import FEW_LEVELS

logger = logging.getLogger(__name__)

__all__ = ["BATCH_EFFECT_CLASSES", "DESIGN_CLASSES", "RECOMMENDATIONS", "THRESHOLDS", "Verdict", "classify"]

BATCH_EFFECT_CLASSES = ("none", "weak", "moderate", "strong", "not_assessed")
DESIGN_CLASSES = ("ok", "confounded", "not_identifiable", "few_batches")
#: Each recommendation code and what it tells the user.
RECOMMENDATIONS = {
    "fix_design": "the design cannot answer as asked: change the model or add samples (see the design check)",
    "do_not_correct_confounded": "do not batch-correct: the batch is confounded with biology",
    "no_action": "no batch handling is needed",
    "model_batch_as_fixed": "too few batches to estimate a batch variance: model the batch as a fixed effect",
    "correct_for_visualisation_only": "a weak batch effect: use corrected values for plots only",
    "block_in_de": "block on the batch in differential expression (the mixed model's moderated p-values)",
}
#: The thresholds of the batch-effect classes: (median, 90th percentile) of the batch fraction.
THRESHOLDS = {
    "strong": {"median": 0.25, "p90": 0.60},
    "moderate": {"median": 0.10, "p90": 0.30},
    "weak": {"median": 0.02, "p90": 0.10, "lrt_share": 0.05},
    "lrt_q": 0.05,
}


@dataclass
class Verdict:
    """The three codes, the paragraph, and the figures they rest on.

    Attributes
    ----------
    batch_effect : str
        One of :data:`BATCH_EFFECT_CLASSES`.
    design : str
        One of :data:`DESIGN_CLASSES`.
    recommendation : str
        A key of :data:`RECOMMENDATIONS`.
    text : str
        One paragraph for the report's "Verdict" section.
    figures : dict
        ``batch``, ``n_batches``, ``n_fitted``, ``batch_fraction_median``, ``batch_fraction_p90``,
        ``lrt_share_q05``, ``singular_share``, ``batch_r2_before``, ``batch_r2_after`` (lists, top PCs
        first), ``confounded`` (``[{factor, batches}]``), ``nested_columns`` (sheet columns outside the
        model with one value per batch).
    """

    batch_effect: str
    design: str
    recommendation: str
    text: str
    figures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "batch_effect": self.batch_effect,
            "design": self.design,
            "recommendation": self.recommendation,
            "text": self.text,
            "figures": dict(self.figures),
        }


def _fraction_column(batch: str, metadata) -> str:
    """The batch's variance-fraction column: from the model metadata when given, else ``frac_<batch>``."""
    if metadata is not None:
        meta = metadata.to_dict() if hasattr(metadata, "to_dict") else dict(metadata)
        for group in meta.get("groups", []):
            if group.get("group") == batch and group.get("fraction_column"):
                return group["fraction_column"]
        fixed = meta.get("fixed_fraction_columns", {})
        if batch in fixed:
            return fixed[batch]
    return f"frac_{sanitize_name(batch)}"


def _as_list(values) -> list[float] | None:
    if values is None:
        return None
    if isinstance(values, dict):
        values = list(values.values())
    return [None if v is None or not np.isfinite(v) else round(float(v), 6) for v in values]


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.01 or x == 0 else f"{100 * x:.1f}%"


def _join(items: list[str]) -> str:
    items = [str(i) for i in items]
    if len(items) <= 1:
        return "".join(items)
    if len(items) > 6:
        return ", ".join(items[:6]) + f" and {len(items) - 6} more"
    return ", ".join(items[:-1]) + " and " + items[-1]


def classify(
    *,
    design_report,
    gene_fits: pd.DataFrame,
    batch: str | None,
    metadata=None,
    batch_r2_before=None,
    batch_r2_after=None,
) -> Verdict:
    """Classify the batch effect and the design, and recommend what to do.

    Parameters
    ----------
    design_report : DesignReport or dict
        :func:`batchmix.design_check.check_design`'s report, or its ``to_dict()`` (``design.json``).
    gene_fits : pandas.DataFrame
        ``results/lmm/gene_fits.tsv``: ``status``, the batch's fraction column, ``lrt_p``.
    batch : str or None
        The batch column; None when the analysis has no batch.
    metadata : ModelMetadata or dict, optional
        ``results/lmm/model.json``; names the batch's fraction column (default ``frac_<batch>``).
    batch_r2_before, batch_r2_after : sequence of float or dict, optional
        R² of the batch on the top principal components (PC1 first) before and after correction.

    Returns
    -------
    Verdict
    """
    report = design_report.to_dict() if hasattr(design_report, "to_dict") else dict(design_report)
    fitted = gene_fits[gene_fits["status"].astype(str).isin(FITTED_STATUSES)]
    n_fitted = len(fitted)
    batch_levels = report.get("batch_levels") or {}
    n_batches = len(batch_levels)
    figures = {
        "batch": batch,
        "n_batches": n_batches,
        "n_fitted": n_fitted,
        "batch_fraction_median": None,
        "batch_fraction_p90": None,
        "lrt_share_q05": None,
        "singular_share": round(float((fitted["status"] == "singular").mean()), 6) if n_fitted else None,
        "batch_r2_before": _as_list(batch_r2_before),
        "batch_r2_after": _as_list(batch_r2_after),
        "confounded": [],
        "nested_columns": [],
    }
    formula = report.get("formula", "")
    batch_is_random = bool(batch) and any(t.group == batch for t in parse_formula(formula).random)
    batch_is_fixed = bool(batch) and batch in (
        formula_columns("~ " + parse_formula(formula).fixed) if parse_formula(formula).fixed.strip() != "1" else []
    )
    other_random = [t.group for t in parse_formula(formula).random if t.group != batch]

    # ---- batch effect
    batch_effect = "not_assessed"
    column = _fraction_column(batch, metadata) if batch else None
    if column and column in fitted.columns:
        frac = pd.to_numeric(fitted[column], errors="coerce").dropna().to_numpy()
        if frac.size:
            median, p90 = float(np.median(frac)), float(np.quantile(frac, 0.9))
            figures["batch_fraction_median"], figures["batch_fraction_p90"] = round(median, 6), round(p90, 6)
            lrt_share = None
            if batch_is_random and "lrt_p" in fitted.columns:
                lrt_p = pd.to_numeric(fitted["lrt_p"], errors="coerce").to_numpy()
                q = bh(lrt_p)
                finite = np.isfinite(q)
                if finite.any():
                    lrt_share = float(np.mean(q[finite] < THRESHOLDS["lrt_q"]))
                    figures["lrt_share_q05"] = round(lrt_share, 6)
            t = THRESHOLDS
            if median >= t["strong"]["median"] or p90 >= t["strong"]["p90"]:
                batch_effect = "strong"
            elif median >= t["moderate"]["median"] or p90 >= t["moderate"]["p90"]:
                batch_effect = "moderate"
            elif (
                median >= t["weak"]["median"]
                or p90 >= t["weak"]["p90"]
                or (lrt_share is not None and lrt_share >= t["weak"]["lrt_share"])
            ):
                batch_effect = "weak"
            else:
                batch_effect = "none"

    # ---- design
    errors = [f for f in report.get("findings", []) if f["severity"] == "error"]
    batch_terms = [t for t in report.get("random_terms", []) if t["group"] == batch]
    confounded = []
    for factor in report.get("factors", []):
        if factor.get("confounded"):
            batches = [b for b in factor["single_level_batches"] if batch_levels.get(b, 0) >= 2]
            confounded.append({"factor": factor["column"], "batches": batches})
    figures["confounded"] = confounded
    model_columns = set(formula_columns(formula)) if formula else set()
    figures["nested_columns"] = [c for c in report.get("nested_columns", []) if c not in model_columns]
    if errors or any(not t["identifiable"] for t in batch_terms):
        design = "not_identifiable"
    elif confounded:
        design = "confounded"
    elif batch and 0 < n_batches < FEW_LEVELS:
        design = "few_batches"
    else:
        design = "ok"

    # ---- recommendation
    if design == "not_identifiable":
        recommendation = "fix_design"
    elif design == "confounded":
        recommendation = "do_not_correct_confounded"
    elif design == "few_batches":
        # before "none": with 2-4 batches a batch variance of 0 (singular fits) is not evidence of no effect
        recommendation = "model_batch_as_fixed"
    elif batch_effect in ("none", "not_assessed"):
        recommendation = "no_action"
    elif batch_effect == "weak":
        recommendation = "correct_for_visualisation_only"
    else:
        recommendation = "block_in_de"

    text = _text(
        batch=batch,
        batch_effect=batch_effect,
        design=design,
        recommendation=recommendation,
        figures=figures,
        errors=errors,
        batch_is_random=batch_is_random,
        batch_is_fixed=batch_is_fixed,
        other_random=other_random,
        formula=formula,
        factor_names=[f["column"] for f in report.get("factors", [])],
    )
    verdict = Verdict(
        batch_effect=batch_effect, design=design, recommendation=recommendation, text=text, figures=figures
    )
    logger.info("verdict: batch effect %s, design %s, recommendation %s", batch_effect, design, recommendation)
    return verdict


def _text(
    *,
    batch,
    batch_effect,
    design,
    recommendation,
    figures,
    errors,
    batch_is_random,
    batch_is_fixed,
    other_random,
    formula,
    factor_names,
) -> str:
    sentences = []
    n_batches = figures["n_batches"]
    if batch is None:
        sentences.append("No batch column was given, so no batch effect was assessed.")
    elif batch_effect == "not_assessed" and batch not in (formula_columns(formula) if formula else []):
        sentences.append(
            f"The batch effect of {batch!r} was not assessed: the model {formula!r} does not include the batch."
        )
    elif batch_effect == "not_assessed":
        sentences.append(
            f"The batch effect of {batch!r} could not be assessed: no gene was fitted with a batch variance fraction."
        )
    else:
        sentences.append(
            f"Batch effect: {batch_effect}. The batch {batch!r} ({n_batches} batches) explains a median "
            f"{_pct(figures['batch_fraction_median'])} of a gene's variance (90th percentile "
            f"{_pct(figures['batch_fraction_p90'])}) over {figures['n_fitted']:,} fitted genes."
        )
        if figures["lrt_share_q05"] is not None:
            joint = f" (tested jointly with {_join([repr(g) for g in other_random])})" if other_random else ""
            sentences.append(
                f"For {_pct(figures['lrt_share_q05'])} of them the model with the batch{joint} fits significantly "
                "better than without it (likelihood-ratio test, q < 0.05)."
            )
        before, after = figures["batch_r2_before"], figures["batch_r2_after"]
        if before and before[0] is not None:
            after_text = f", {_pct(after[0])} after correction" if after and after[0] is not None else ""
            sentences.append(
                f"The batch accounts for {_pct(before[0])} of the variance of the first principal "
                f"component before correction{after_text}."
            )
    if design == "not_identifiable":
        codes = sorted({f["code"] for f in errors}) or ["the batch's random term is not identifiable"]
        sentences.append(
            f"Design: the model {formula!r} cannot be estimated from these samples "
            f"({', '.join(codes)}; see the design check), so no number above can be trusted."
        )
    elif design == "confounded":
        parts = [
            f"{c['factor']!r} takes a single level in batch{'es' if len(c['batches']) > 1 else ''} "
            f"{_join(c['batches'])}"
            for c in figures["confounded"]
        ]
        sentences.append(
            f"Design: confounded: {'; '.join(parts)}, so in those batches the batch and the biology "
            "cannot be told apart."
        )
    elif design == "few_batches":
        singular = figures["singular_share"]
        singular_text = f"; {_pct(singular)} of the fits are singular (batch variance 0)" if singular else ""
        sentences.append(
            f"Design: only {n_batches} batches, so the batch variance rests on at most "
            f"{max(n_batches - 1, 0)} contrast{'s' if n_batches != 2 else ''} and is unreliable"
            f"{singular_text}."
        )
    elif batch is not None and factor_names:
        sentences.append(
            f"Design: ok; every batch with several samples holds several levels of "
            f"{_join([repr(f) for f in factor_names])}."
        )
    elif batch is not None:
        sentences.append("Design: ok.")
    nested = figures["nested_columns"]
    if nested and batch_effect not in ("none", "not_assessed"):
        sentences.append(
            f"Note that {_join([repr(c) for c in nested])} take{'s' if len(nested) == 1 else ''} a "
            "single value in every batch, so the batch effect also holds their differences: if "
            f"{'it is' if len(nested) == 1 else 'they are'} biology (cell type, tissue, donor), part of "
            'the "batch" effect is biology and should not be removed.'
        )
    confounded_factors = _join([repr(c["factor"]) for c in figures["confounded"]])
    recommendation_text = {
        "fix_design": "Recommendation: fix the design first: change `model` or add samples as the design check "
        "says, then rerun.",
        "do_not_correct_confounded": (
            f"Recommendation: do not batch-correct the expression before comparing {confounded_factors}: removing "
            f"the batch would remove part of the {confounded_factors} effect. Test with the mixed model, whose "
            "comparison rests on the batches that hold several levels, and treat genes whose call changes "
            "(see Differential expression) with caution."
        ),
        "no_action": (
            "Recommendation: no batch handling is needed: the batch explains almost none of the variance."
            if batch_effect == "none"
            else "Recommendation: none about the batch."
        ),
        "model_batch_as_fixed": (
            "Recommendation: do not trust the batch variance or the variance fractions; "
            + (
                "the model already has the batch as a fixed effect, which needs no variance estimate."
                if batch_is_fixed
                else f'model the batch as a fixed effect (`model: "~ ... + {batch}"`), which needs no variance '
                "estimate, and test with that model."
            )
        ),
        "correct_for_visualisation_only": (
            "Recommendation: the batch changes the tests little; use the batch-corrected table for plots and "
            "clustering only, and test with the mixed model (blocking on the batch costs little)."
        ),
        "block_in_de": (
            "Recommendation: block on the batch in differential expression, i.e. use the mixed model's moderated "
            "p-values (results/de/), rather than testing batch-corrected data; use the corrected table only "
            "for plots and clustering."
        ),
    }[recommendation]
    sentences.append(recommendation_text)
    sentences.append(
        "This rests on the batch's share of variance over the fitted genes, the batch "
        "likelihood-ratio tests and the design check; the thresholds are in the README."
    )
    return " ".join(sentences)
