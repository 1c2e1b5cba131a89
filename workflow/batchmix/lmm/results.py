"""The results contract of :mod:`batchmix.lmm`: column names of ``gene_fits`` and θ → Σ.

Every name a consumer of ``gene_fits.tsv`` needs (``var_<group>``, ``var_<group>_<term>``,
``cor_<group>_<term1>_<term2>``, ``frac_<term>``, ``coef_/se_/df_/t_/p_<coefficient>``) is
made here, once, from the model's design; :class:`ModelMetadata` carries them with the
model's structure (coefficients, fixed terms, groups, levels) so that nobody parses column
names back. The workflow writes it to ``results/lmm/model.json``.

Clash rule: variance, correlation and random fraction names are taken in block order
(variances, then correlations, then the fraction of each block); a name already taken gets
``_2``, ``_3``, … appended (e.g. ``(1 | g) + (0 + x | g)`` gives ``frac_g`` and ``frac_g_x``;
``(1 | g) + (1 | g)`` gives ``var_g`` and ``var_g_2``). Fixed fractions are ``frac_<term>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..design import RandomBlock, fixed_design, fixed_term_columns, parse_formula, random_design, sanitize_name

__all__ = [
    "COEFFICIENT_STATISTICS",
    "RESIDUAL_VARIANCE_COLUMN",
    "RESIDUAL_FRACTION_COLUMN",
    "BlockColumns",
    "GroupMetadata",
    "ModelMetadata",
    "block_columns",
    "coefficient_column",
    "model_metadata",
    "relative_factors",
    "theta_to_covariances",
]

COEFFICIENT_STATISTICS = ("coef", "se", "df", "t", "p")
RESIDUAL_VARIANCE_COLUMN = "var_residual"
RESIDUAL_FRACTION_COLUMN = "frac_residual"


def coefficient_column(statistic: str, coefficient: str) -> str:
    """``coef_<name>``, ``se_<name>``, ``df_<name>``, ``t_<name>`` or ``p_<name>``."""
    if statistic not in COEFFICIENT_STATISTICS:
        raise ValueError(f"unknown coefficient statistic {statistic!r}; one of {COEFFICIENT_STATISTICS}")
    return f"{statistic}_{coefficient}"


@dataclass(frozen=True)
class BlockColumns:
    """The ``gene_fits`` columns of one random term (one bar of the formula).

    Attributes
    ----------
    variances : tuple of str
        One variance column per term of the block, in the block's term order.
    correlations : tuple of (int, int, str)
        ``(i, j, column)`` for every pair of terms ``i < j``.
    fraction : str
        The block's variance-fraction column.
    """

    variances: tuple[str, ...]
    correlations: tuple[tuple[int, int, str], ...]
    fraction: str


def _unique(name: str, used: set[str]) -> str:
    candidate, i = name, 2
    while candidate in used:
        candidate, i = f"{name}_{i}", i + 1
    used.add(candidate)
    return candidate


def block_columns(blocks: list[RandomBlock]) -> list[BlockColumns]:
    """Column names of every random block, with the clash rule of this module."""
    out, used = [], set()
    for block in blocks:
        group = sanitize_name(block.group)
        if block.n_terms == 1 and block.terms[0] == "Intercept":
            names = [f"var_{group}"]
        else:
            names = [f"var_{group}_{t}" for t in block.terms]
        names = [_unique(v, used) for v in names]
        cors = tuple(
            (i, j, _unique(f"cor_{group}_{block.terms[i]}_{block.terms[j]}", used))
            for i in range(block.n_terms)
            for j in range(i + 1, block.n_terms)
        )
        fraction = "frac_" + (names[0][4:] if block.n_terms == 1 else group)
        out.append(BlockColumns(tuple(names), cors, _unique(fraction, used)))
    return out


def relative_factors(theta: np.ndarray, blocks: list[RandomBlock]) -> list[np.ndarray]:
    """The lower-triangular relative covariance factors T (G × s × s) of each block.

    θ (G × m) holds each block's lower triangle column by column (lme4's order), blocks in
    formula order.
    """
    theta = np.atleast_2d(theta)
    mats, offset = [], 0
    for block in blocks:
        s = block.n_terms
        T = np.zeros((theta.shape[0], s, s))
        for c in range(s):
            for r in range(c, s):
                T[:, r, c] = theta[:, offset]
                offset += 1
        mats.append(T)
    return mats


def theta_to_covariances(theta: np.ndarray, sigma2: np.ndarray, blocks: list[RandomBlock]) -> list[np.ndarray]:
    """Covariance matrices Σ = σ² T Tᵀ (G × s × s) of each random block (lme4's ``VarCorr``)."""
    sigma2 = np.asarray(sigma2, dtype=float)
    return [sigma2[:, None, None] * (T @ T.transpose(0, 2, 1)) for T in relative_factors(theta, blocks)]


@dataclass(frozen=True)
class GroupMetadata:
    """One random term: its grouping factor, term names, levels and ``gene_fits`` columns."""

    group: str
    terms: tuple[str, ...]
    levels: tuple[str, ...]
    variance_columns: dict[str, str]
    correlation_columns: tuple[tuple[tuple[str, str], str], ...]
    fraction_column: str

    def to_dict(self) -> dict:
        return {
            "group": self.group,
            "terms": list(self.terms),
            "levels": list(self.levels),
            "variance_columns": dict(self.variance_columns),
            "correlation_columns": [
                {"terms": list(pair), "column": column} for pair, column in self.correlation_columns
            ],
            "fraction_column": self.fraction_column,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "GroupMetadata":
        return cls(
            group=data["group"],
            terms=tuple(data["terms"]),
            levels=tuple(data["levels"]),
            variance_columns=dict(data["variance_columns"]),
            correlation_columns=tuple((tuple(c["terms"]), c["column"]) for c in data["correlation_columns"]),
            fraction_column=data["fraction_column"],
        )


@dataclass(frozen=True)
class ModelMetadata:
    """The structure of a fitted model and the ``gene_fits`` columns that hold each parameter.

    Made from the design alone by :func:`model_metadata`; carried by ``LMMFit.metadata``.

    Attributes
    ----------
    formula : str
    reml : bool
    coefficients : tuple of str
        Fixed-effect coefficient names, in X's column order (``coef_<name>`` …).
    fixed_terms : dict
        Fixed term → its coefficients (e.g. ``{"Intercept": ["Intercept"], "Infection": [...]}``).
    groups : tuple of GroupMetadata
        One entry per random term, in formula order.
    fixed_fraction_columns : dict
        Fixed term (not the intercept) → its ``frac_`` column.
    residual : dict
        ``variance_column`` and ``fraction_column`` of the residual.
    """

    formula: str
    reml: bool
    coefficients: tuple[str, ...]
    fixed_terms: dict[str, list[str]]
    groups: tuple[GroupMetadata, ...] = ()
    fixed_fraction_columns: dict[str, str] = field(default_factory=dict)
    residual: dict[str, str] = field(
        default_factory=lambda: {
            "variance_column": RESIDUAL_VARIANCE_COLUMN,
            "fraction_column": RESIDUAL_FRACTION_COLUMN,
        }
    )

    def coefficient_columns(self, statistic: str = "coef") -> list[str]:
        """``<statistic>_<coefficient>`` for every coefficient, in order."""
        return [coefficient_column(statistic, c) for c in self.coefficients]

    def variance_columns(self) -> list[str]:
        """Every random variance column, in ``gene_fits`` order (residual excluded)."""
        return [c for g in self.groups for c in g.variance_columns.values()]

    def fraction_columns(self) -> list[str]:
        """Every ``frac_`` column in ``gene_fits`` order, residual last."""
        fixed = list(self.fixed_fraction_columns.values())
        random = [g.fraction_column for g in self.groups]
        return list(dict.fromkeys(fixed + random)) + [self.residual["fraction_column"]]

    def to_dict(self) -> dict:
        return {
            "formula": self.formula,
            "reml": bool(self.reml),
            "coefficients": list(self.coefficients),
            "fixed_terms": {k: list(v) for k, v in self.fixed_terms.items()},
            "groups": [g.to_dict() for g in self.groups],
            "fixed_fraction_columns": dict(self.fixed_fraction_columns),
            "residual": dict(self.residual),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ModelMetadata":
        return cls(
            formula=data["formula"],
            reml=bool(data["reml"]),
            coefficients=tuple(data["coefficients"]),
            fixed_terms={k: list(v) for k, v in data["fixed_terms"].items()},
            groups=tuple(GroupMetadata.from_dict(g) for g in data["groups"]),
            fixed_fraction_columns=dict(data["fixed_fraction_columns"]),
            residual=dict(data["residual"]),
        )

    def write_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as indented JSON (UTF-8, trailing newline)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read_json(cls, path: str | Path) -> "ModelMetadata":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def metadata_from_design(
    formula: str, reml: bool, coefficients: list[str], term_columns: dict[str, list[str]], blocks: list[RandomBlock]
) -> ModelMetadata:
    """:class:`ModelMetadata` from an already built design (used by :func:`batchmix.lmm.fit`)."""
    fixed_terms = {term: [c for c in cols if c in coefficients] for term, cols in term_columns.items()}
    fixed_terms = {term: cols for term, cols in fixed_terms.items() if cols}
    fixed_fractions = {term: f"frac_{term}" for term in fixed_terms if term != "Intercept"}
    groups = []
    for block, names in zip(blocks, block_columns(blocks)):
        groups.append(
            GroupMetadata(
                group=block.group,
                terms=tuple(block.terms),
                levels=tuple(block.levels),
                variance_columns=dict(zip(block.terms, names.variances)),
                correlation_columns=tuple(((block.terms[i], block.terms[j]), c) for i, j, c in names.correlations),
                fraction_column=names.fraction,
            )
        )
    return ModelMetadata(
        formula=formula,
        reml=bool(reml),
        coefficients=tuple(coefficients),
        fixed_terms=fixed_terms,
        groups=tuple(groups),
        fixed_fraction_columns=fixed_fractions,
    )


def model_metadata(formula: str, samples: pd.DataFrame, *, reml: bool = True) -> ModelMetadata:
    """The :class:`ModelMetadata` of a formula on a sample sheet, from the design alone (no fit).

    Parameters
    ----------
    formula : str
        lme4-style formula, e.g. ``"~ condition + (1 | batch)"``.
    samples : pandas.DataFrame
        Sample sheet (the samples that are fitted).
    reml : bool, default True

    Returns
    -------
    ModelMetadata
    """
    _, coefficients = fixed_design(formula, samples)
    term_columns = fixed_term_columns(formula, samples)
    blocks = random_design(formula, samples).blocks if parse_formula(formula).random else []
    return metadata_from_design(formula, reml, coefficients, term_columns, blocks)
