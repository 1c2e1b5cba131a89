"""Can the design answer the question? A check of the model against the sample sheet, before any fit.

:func:`check_design` looks only at the sample sheet, the formula and the batch column (and, for one
finding, at the expression values), so it runs at validation, before any job. It describes

* the batch and every categorical fixed-effect factor: the crosstab batch × level, Cramér's V, the
  batches that hold a single level of the factor, and ``confounded``;
* every random term: its number of levels, the observations per level, ``identifiable``;
* ``nested_columns``: the sheet columns that take one value within every batch;

and lists **findings** ``{code, severity, message}``. The codes are a stable set (new codes may be added,
none is renamed):

- ``aliased_fixed_random`` (error): a random term's levels are explained by the fixed effects
  (``~ group + (1|group)``, a condition equal to the batch), so its variance cannot be estimated.
- ``one_observation_per_level`` (error): every level of a grouping factor holds one observation (one
  sample per batch): its variance and the residual variance cannot be told apart (lme4 refuses this).
- ``no_residual_df`` (error): n − rank[X Z] < 1 or n − rank X < 2 (three samples in all, more
  coefficients than samples): nothing is left to estimate the residual variance.
- ``single_level_factor``: a grouping factor with a single level (error); a fixed-effect factor with a
  single level (warning: it is dropped).
- ``slope_not_identifiable`` (error): a random slope whose covariate varies within fewer than two levels
  of its grouping factor.
- ``confounded`` (warning): a batch with two or more samples holds a single level of a fixed-effect
  factor (a two-valued numeric column counts as a factor).
- ``rank_deficient_fixed`` (warning): fixed-effect columns are combinations of others and are dropped,
  as lme4 does.
- ``few_levels`` (warning): a grouping factor with fewer than 5 levels; strongly worded at 2 or 3 (a
  variance from one or two contrasts).
- ``few_residual_df`` (warning): n − rank[X Z] is 1 or 2.
- ``looks_like_counts`` (warning): ``input_type: log``, but every value is a non-negative integer and
  the largest exceeds 1000.
- ``numeric_few_values`` (note): a numeric fixed-effect column with 3 to 5 distinct values (3 to 10 when
  all are integers, e.g. condition codes) is fitted as a linear trend; not for two values (a factor
  already) nor for a covariate that is also a random slope.
- ``nested_in_batch`` (note): sheet columns outside the model take a single value within every batch,
  so the batch effect includes their differences (cell type, donor).

Errors mean a result of the requested model would be a made-up number: :meth:`DesignReport.raise_on_errors`
stops the run with one message listing every error.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from batchmix.design import (
    KINSHIP,
    check_levels,
    fixed_design,
    formula_columns,
    level_label,
    parse_formula,
    random_design,
)
from batchmix.io import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "FINDING_CODES",
    "FEW_LEVELS",
    "NUMERIC_FEW_VALUES",
    "NUMERIC_FEW_CODES",
    "COUNTS_MAX",
    "Finding",
    "DesignReport",
    "check_design",
    "nested_columns",
    "cramers_v",
]

#: Every finding code and its meaning (the set is stable: new codes are added, none renamed).
FINDING_CODES = {
    "aliased_fixed_random": "a random term is explained by the fixed effects; its variance cannot be estimated",
    "one_observation_per_level": "a grouping factor has one observation per level",
    "no_residual_df": "no degrees of freedom are left for the residual variance",
    "single_level_factor": "a factor with a single level",
    "slope_not_identifiable": "a random slope's covariate does not vary within enough levels",
    "confounded": "some batches hold a single level of a fixed-effect factor",
    "rank_deficient_fixed": "fixed-effect columns are aliased and dropped",
    "few_levels": "a grouping factor with fewer than 5 levels",
    "few_residual_df": "one or two residual degrees of freedom",
    "looks_like_counts": "input_type log, but the values look like raw counts",
    "numeric_few_values": "a numeric fixed effect with few distinct values is fitted as a linear trend",
    "nested_in_batch": "sheet columns take a single value within every batch",
}
#: A grouping factor with fewer levels than this gets ``few_levels``.
FEW_LEVELS = 5
#: A numeric fixed-effect column with at most this many distinct values gets ``numeric_few_values``.
NUMERIC_FEW_VALUES = 5
#: The same for integer-valued columns (codes such as conditions 1–10).
NUMERIC_FEW_CODES = 10
#: ``looks_like_counts``: integers whose maximum exceeds this.
COUNTS_MAX = 1000
_SEVERITIES = ("error", "warning", "note")


@dataclass(frozen=True)
class Finding:
    """One finding of the design check: a code from :data:`FINDING_CODES`, a severity, a message."""

    code: str
    severity: str
    message: str

    def to_dict(self) -> dict:
        return {"code": self.code, "severity": self.severity, "message": self.message}


@dataclass
class DesignReport:
    """The result of :func:`check_design`; ``to_dict()`` is the content of ``results/design/design.json``.

    Attributes
    ----------
    formula, batch : str, str or None
    n_samples : int
    fixed_rank, full_rank : int
        rank X and rank [X Z]; ``residual_df`` = n − rank [X Z].
    batch_levels : dict
        Samples per batch (empty without a batch).
    factors : list of dict
        Per categorical fixed-effect factor (the batch excluded): ``column``, ``levels``,
        ``crosstab`` ({batch: {level: n}}), ``cramers_v``, ``single_level_batches``, ``confounded``.
    random_terms : list of dict
        ``group``, ``terms``, ``n_levels``, ``obs_per_level`` ({min, median, max}), ``identifiable``.
    nested_columns : list of str
    findings : list of Finding
    """

    formula: str
    batch: str | None
    n_samples: int
    fixed_rank: int
    full_rank: int
    batch_levels: dict = field(default_factory=dict)
    factors: list = field(default_factory=list)
    random_terms: list = field(default_factory=list)
    nested_columns: list = field(default_factory=list)
    findings: list = field(default_factory=list)

    @property
    def residual_df(self) -> int:
        return self.n_samples - self.full_rank

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def confounded(self) -> bool:
        """True when any fixed-effect factor is confounded with the batch."""
        return any(f["confounded"] for f in self.factors)

    def codes(self, severity: str | None = None) -> list[str]:
        """The finding codes (of one severity if given), in order."""
        return [f.code for f in self.findings if severity is None or f.severity == severity]

    def to_dict(self) -> dict:
        return {
            "formula": self.formula,
            "batch": self.batch,
            "n_samples": self.n_samples,
            "fixed_rank": self.fixed_rank,
            "full_rank": self.full_rank,
            "residual_df": self.residual_df,
            "batch_levels": dict(self.batch_levels),
            "factors": list(self.factors),
            "random_terms": list(self.random_terms),
            "nested_columns": list(self.nested_columns),
            "findings": [f.to_dict() for f in self.findings],
        }

    def raise_on_errors(self, *, source: str | None = None) -> None:
        """Raise :class:`batchmix.io.InputError` listing every error finding; do nothing without errors.

        Parameters
        ----------
        source : str, optional
            The sample sheet the design comes from, named first in the message.
        """
        errors = self.errors
        if errors:
            lines = "\n".join(f"- [{f.code}] {f.message}" for f in errors)
            where = f"{source}: " if source else ""
            raise InputError(f"{where}the design cannot be fitted as asked ({self.formula}):\n{lines}")


def cramers_v(table: pd.DataFrame) -> float | None:
    """Cramér's V of a contingency table (no continuity correction); None when a side has one level."""
    observed = np.asarray(table, dtype=float)
    observed = observed[observed.sum(axis=1) > 0][:, observed.sum(axis=0) > 0]
    r, c = observed.shape
    if min(r, c) < 2:
        return None
    n = observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / n
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    return math.sqrt(chi2 / (n * (min(r, c) - 1)))


def nested_columns(samples: pd.DataFrame, batch: str) -> list[str]:
    """Sheet columns that take a single value within every batch (nested in the batch).

    Parameters
    ----------
    samples : pandas.DataFrame
        Sample sheet.
    batch : str
        The batch column.

    Returns
    -------
    list of str
        In sheet order; the batch itself and columns constant over all samples are left out (a
        constant column carries no information). A missing value counts as a value. A column nested
        in the batch cannot be separated from it: adjusting for it removes the batch effect too.
    """
    if batch not in samples.columns:
        raise ValueError(f"batch column {batch!r} is not in the sample sheet")
    groups = samples[batch].map(level_label)
    out = []
    for column in samples.columns:
        if column == batch:
            continue
        text = samples[column].map(lambda v: "<NA>" if pd.isna(v) else level_label(v))
        if text.nunique() < 2:
            continue
        if (text.groupby(groups.to_numpy()).nunique() == 1).all():
            out.append(column)
    return out


def _rank(matrix: np.ndarray) -> int:
    return int(np.linalg.matrix_rank(matrix)) if matrix.size else 0


def _is_categorical(values: pd.Series, column: str, batch: str | None, levels: dict) -> bool:
    if column in levels or column == batch:
        return True
    return not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)


def _join(items, limit: int = 8) -> str:
    items = [str(i) for i in items]
    return ", ".join(items) if len(items) <= limit else ", ".join(items[:limit]) + f", … ({len(items)} in all)"


def check_design(
    samples: pd.DataFrame,
    *,
    formula: str,
    batch: str | None,
    input_type: str | None = None,
    expression: pd.DataFrame | None = None,
    levels: dict | None = None,
) -> DesignReport:
    """Check whether the model can be estimated from the sample sheet, and how batch and biology overlap.

    Parameters
    ----------
    samples : pandas.DataFrame
        Sample sheet, one row per sample (every column the formula names, without missing values:
        validation has checked that).
    formula : str
        The lme4-style model.
    batch : str or None
        The batch column (categorical wherever it appears); None for an analysis without a batch.
    input_type : {"counts", "log"}, optional
        With ``"log"`` and ``expression`` the values are checked for looking like raw counts.
    expression : pandas.DataFrame, optional
        genes × samples values (only for ``looks_like_counts``).
    levels : dict, optional
        ``{column: [reference, ...]}`` as in :func:`batchmix.design.fixed_design`; checked here.

    Returns
    -------
    DesignReport

    Raises
    ------
    ValueError
        When ``levels`` does not match the sheet (the message names the column and its levels)
        or the formula does not parse.
    """
    levels = dict(levels or {})
    check_levels(samples, levels)
    parsed = parse_formula(formula)
    categorical = (batch,) if batch else ()
    n = len(samples)
    findings: list[Finding] = []

    def add(code: str, severity: str, message: str) -> None:
        assert code in FINDING_CODES and severity in _SEVERITIES
        findings.append(Finding(code, severity, message))

    fixed_columns = formula_columns("~ " + parsed.fixed) if parsed.fixed.strip() != "1" else []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        X, names = fixed_design(formula, samples, levels=levels, categorical=categorical)
    dropped = [str(w.message) for w in caught if "rank deficient" in str(w.message)]
    rd = random_design(formula, samples, levels=levels, categorical=categorical) if parsed.random else None
    # (1 | kinship)'s Z is a full factor of K: its variance is told from the residual by K's spectrum,
    # not by rank, so it stays out of the rank count
    blocks = [b for b in (rd.blocks if rd is not None else []) if b.group != KINSHIP]
    Z = np.column_stack([b.Z for b in blocks]) if blocks else np.zeros((n, 0))
    fixed_rank = _rank(X)
    full_rank = _rank(np.column_stack([X, Z])) if Z.size else fixed_rank

    slope_columns = {
        c for t in parsed.random if t.expr.strip() not in ("1", "0 + 1") for c in formula_columns("~ " + t.expr)
    }
    # ---- the batch and the categorical fixed factors
    batch_levels: dict = {}
    factors = []
    if batch:
        batch_text = samples[batch].map(level_label)
        order = _ordered_levels(samples[batch], levels.get(batch))
        batch_levels = {b: int((batch_text == b).sum()) for b in order}
    for column in fixed_columns:
        values = samples[column]
        if not _is_categorical(values, column, batch, levels):
            distinct = values.nunique()
            integer_codes = bool(np.all(values.to_numpy(dtype=float) == np.round(values.to_numpy(dtype=float))))
            limit = NUMERIC_FEW_CODES if integer_codes else NUMERIC_FEW_VALUES
            # a covariate that is also a random slope is meant as a trend (Days in (Days | Subject))
            if 3 <= distinct <= limit and distinct < n and column not in slope_columns:
                add(
                    "numeric_few_values",
                    "note",
                    f"{column!r} is numeric with {distinct} distinct values "
                    f"({_join(level_label(v) for v in sorted(values.unique()))}), so it is fitted as a linear "
                    "trend (one slope). If its values are groups, make it categorical: "
                    f"`levels: {{{column}: [reference, ...]}}` in the config, or write its values as text in the "
                    "sample sheet.",
                )
            if distinct != 2:
                continue
            # a two-valued number spans the same columns as a factor: check it against the batch as one
        factor_levels = _ordered_levels(values, levels.get(column))
        if len(factor_levels) < 2:
            add(
                "single_level_factor",
                "warning",
                f"the fixed effect {column!r} has a single level ({_join(factor_levels)}), so it estimates "
                "nothing and is dropped; remove it from `model`.",
            )
        if column == batch or not batch:
            continue
        text = values.map(level_label)
        table = pd.crosstab(batch_text, text).reindex(index=list(batch_levels), columns=factor_levels, fill_value=0)
        per_batch = (table > 0).sum(axis=1)
        single = [b for b in table.index if per_batch[b] == 1]
        confounded = any(batch_levels[b] >= 2 for b in single)
        batches_per_level = (table > 0).sum(axis=0)
        v = cramers_v(table)
        factors.append(
            {
                "column": column,
                "levels": factor_levels,
                "crosstab": {b: {lv: int(table.loc[b, lv]) for lv in factor_levels} for b in table.index},
                "cramers_v": None if v is None else round(v, 6),
                "single_level_batches": single,
                "single_batch_levels": [lv for lv in factor_levels if batches_per_level[lv] == 1],
                "confounded": bool(confounded),
            }
        )
        if confounded:
            v_text = "NA" if v is None else f"{v:.2f}"
            which = [
                f"{b} (only {table.columns[(table.loc[b] > 0).to_numpy()][0]})" for b in single if batch_levels[b] >= 2
            ]
            add(
                "confounded",
                "warning",
                f"{column!r} is confounded with the batch {batch!r}: batch{'es' if len(which) > 1 else ''} "
                f"{_join(which)} hold a single level of {column!r}, so within them the batch effect and the "
                f"{column!r} effect cannot be separated (Cramér's V {v_text}). The {column!r} effect rests on the "
                "batches that hold several levels; do not batch-correct the expression before comparing "
                f"{column!r}, and if possible add samples of the missing levels to those batches.",
            )
    if dropped:
        add(
            "rank_deficient_fixed",
            "warning",
            f"the fixed-effect design of {formula!r} is rank deficient: {'; '.join(dropped)}. Those effects "
            "are explained by other columns of the model; remove the redundant column from `model`.",
        )

    # ---- random terms
    random_terms = []
    for term, block in zip(parsed.random, rd.blocks if rd is not None else []):
        group = term.group
        if group == KINSHIP:
            # a known covariance between samples, not a grouping column: no levels to count
            continue
        key = samples[group.split(":")].apply(lambda col: col.map(level_label)).agg(":".join, axis=1)
        codes = np.unique(key.to_numpy(dtype=str), return_inverse=True)[1].reshape(-1)
        counts = np.bincount(codes)
        n_levels = int(counts.size)
        identifiable = True
        reasons = []
        # does the term carry anything the fixed effects do not? With an intercept, its level indicators
        # must (the slopes cannot rescue an aliased intercept variance); a slope-only term, its own columns
        if "Intercept" in block.terms:
            own = np.zeros((n, n_levels))
            own[np.arange(n), codes] = 1.0
        else:
            own = block.Z
        extra = _rank(np.column_stack([X, own])) - fixed_rank
        if n_levels < 2:
            identifiable = False
            reasons.append("single level")
            add(
                "single_level_factor",
                "error",
                f"the grouping factor {group!r} of ({term.expr} | {group}) has a single level, so it has no "
                f"variance to estimate; remove the term from `model` or check the column {group!r}.",
            )
        elif n_levels >= n:
            identifiable = False
            reasons.append("one observation per level")
            add(
                "one_observation_per_level",
                "error",
                f"every level of {group!r} holds a single sample ({n_levels} levels, {n} samples), so the "
                f"variance between levels of {group!r} and the residual variance cannot be told apart "
                "(lme4 refuses this design). Remove the term (" + f"{term.expr} | {group}" + ") from `model`, "
                "or use a coarser grouping with several samples per level.",
            )
        elif extra == 0:
            identifiable = False
            reasons.append("aliased with the fixed effects")
            aliased = [c for c in fixed_columns if c != group and _nested_in(samples, c, group)]
            what = (
                f"the fixed effect{'s' if len(aliased) > 1 else ''} {_join(repr(a) for a in aliased)}"
                if aliased
                else "the fixed effects"
            )
            if group in fixed_columns:
                what = f"the fixed effect {group!r} itself"
            add(
                "aliased_fixed_random",
                "error",
                f"the random term ({term.expr} | {group}) is aliased with {what}: every level of {group!r} "
                f"is explained by the fixed part of the model, so no variance between levels of {group!r} is "
                f"left to estimate. Use {group!r} either as a fixed effect or as a random term, not both, "
                "or remove the fixed effect that equals it.",
            )
        if identifiable and n_levels < FEW_LEVELS:
            contrasts = max(extra, 0)
            strength = (
                f"A variance estimated from {contrasts} contrast{'s' if contrasts != 1 else ''} is not "
                "trustworthy: many genes will be singular (variance 0) and the batch share of variance "
                "is unreliable. Model the grouping as a fixed effect instead "
                f'(`model: "~ ... + {group}"`).'
                if n_levels <= 3
                else "Its variance is estimated imprecisely; read the variance fractions with care."
            )
            add("few_levels", "warning", f"{group!r} has only {n_levels} levels, fewer than {FEW_LEVELS}. {strength}")
        slope_terms = [t for t in block.terms if t != "Intercept"]
        if identifiable and slope_terms:
            # each row of Z has one level's block non-zero: the sum over levels is the term's value
            values = block.Z.reshape(n, block.n_levels, block.n_terms).sum(axis=1)
            for k, term_name in enumerate(block.terms):
                if term_name == "Intercept":
                    continue
                covariate = values[:, k]
                varying = sum(np.unique(covariate[codes == lv]).size >= 2 for lv in np.unique(codes))
                if varying < 2:
                    identifiable = False
                    reasons.append(f"slope {term_name} varies within {varying} level(s)")
                    add(
                        "slope_not_identifiable",
                        "error",
                        f"the random slope {term_name!r} of ({term.expr} | {group}) needs {term_name!r} to take "
                        f"at least two values within at least two levels of {group!r}; it does within {varying}. "
                        f"Use (1 | {group}) instead.",
                    )
        random_terms.append(
            {
                "group": group,
                "terms": list(block.terms),
                "n_levels": n_levels,
                "obs_per_level": {
                    "min": int(counts.min()),
                    "median": float(np.median(counts)),
                    "max": int(counts.max()),
                },
                "identifiable": bool(identifiable),
                "reason": "; ".join(reasons) or None,
            }
        )

    # ---- residual degrees of freedom
    if n - fixed_rank < 2 or n - full_rank < 1:
        add(
            "no_residual_df",
            "error",
            f"{n} samples leave {n - full_rank} residual degree{'s' if n - full_rank != 1 else ''} of freedom for "
            f"{formula!r} (rank of the fixed part {fixed_rank}, of fixed and random parts {full_rank}; every "
            "gene needs at least 2 beyond the fixed effects and 1 beyond all effects), so the residual variance "
            "cannot be estimated. Use fewer terms in `model` or more samples.",
        )
    elif n - full_rank <= 2:
        add(
            "few_residual_df",
            "warning",
            f"{formula!r} leaves only {n - full_rank} residual degree(s) of freedom on {n} samples; the residual "
            "variance of each gene rests on almost nothing (moderation helps, but treat p-values with care).",
        )

    # ---- values
    if input_type == "log" and expression is not None and expression.size:
        values = expression.to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() >= 0 and np.all(finite == np.round(finite)) and finite.max() > COUNTS_MAX:
            add(
                "looks_like_counts",
                "warning",
                f"input_type is log, but every value is a non-negative integer and the largest is "
                f"{finite.max():.0f}: these look like raw counts. If they are, set `input_type: counts` so that "
                "they are normalised and variance-stabilised; models on raw counts are dominated by a few "
                "highly expressed genes.",
            )

    nested = nested_columns(samples, batch) if batch else []
    model_columns = set(formula_columns(formula))
    outside = [c for c in nested if c not in model_columns]
    if outside and len(batch_levels) < n:
        add(
            "nested_in_batch",
            "note",
            f"{_join(repr(c) for c in outside)} take{'s' if len(outside) == 1 else ''} a single value within every "
            f"batch of {batch!r}, so what is measured as the batch effect also includes the differences in "
            f"{'this column' if len(outside) == 1 else 'these columns'} (for example cell type or donor) and "
            "cannot be told apart from them. If such a column is biology, the batch share of variance measures "
            "biology too.",
        )
    report = DesignReport(
        formula=formula,
        batch=batch,
        n_samples=n,
        fixed_rank=fixed_rank,
        full_rank=full_rank,
        batch_levels=batch_levels,
        factors=factors,
        random_terms=random_terms,
        nested_columns=nested,
        findings=findings,
    )
    for finding in findings:
        logger.info("design check %s %s: %s", finding.severity, finding.code, finding.message)
    return report


def _ordered_levels(values: pd.Series, wanted: list | None) -> list[str]:
    """A factor's levels as text: the ``levels`` order if given, else R's order (numeric or sorted text)."""
    if wanted is not None:
        return [level_label(v) for v in wanted]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return [level_label(v) for v in sorted(values.dropna().unique())]
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [str(c) for c in values.cat.remove_unused_categories().cat.categories]
    return sorted({level_label(v) for v in values.dropna()})


def _nested_in(samples: pd.DataFrame, column: str, group: str) -> bool:
    """True when ``column`` takes one value within every level of ``group`` (``g1:g2`` groups allowed)."""
    parts = group.split(":")
    if any(p not in samples.columns for p in parts) or column not in samples.columns:
        return False
    key = samples[parts].astype(str).agg(":".join, axis=1)
    return bool((samples[column].astype(str).groupby(key.to_numpy()).nunique() == 1).all())
