"""lme4-style model formulas to fixed (X) and random (Z) design matrices.

A formula such as ``"y ~ condition + (1 | batch)"`` or ``"~ Days + (Days | Subject)"`` is
split into its fixed part, handed to :mod:`formulaic`, and its random "bar" terms
``(expr | group)``, which are expanded here the way ``lme4::mkReTrms`` does:
for each term, one block of columns per level of the grouping factor (level-major,
the term's columns inside each level), and a lower-triangular relative covariance
factor with ``s (s + 1) / 2`` parameters for ``s`` columns.

Coefficient names follow R's conventions so that output columns read like lme4
output: ``(Intercept)`` becomes ``Intercept``, a factor level is the factor name
followed by the level (``InfectionSARS_CoV_2``), interactions are joined by ``:``
and then every character outside ``[A-Za-z0-9_.]`` is replaced by ``_``.
Factor levels are sorted as Python's :func:`sorted` does (the C locale, as R's
``factor()`` in the C locale), unless the column is a :class:`pandas.Categorical`,
whose category order is kept, or the ``levels`` argument names the column:
``levels={"dex": ["untrt", "trt"]}`` makes ``untrt`` the reference level, so the
coefficient is ``dextrt``. A numeric column is a linear covariate unless it is named
in ``categorical`` (e.g. the batch column, coded 1, 2, 3) or in ``levels``: then it
is a factor whose levels are its distinct values in numeric order (as ``factor()`` in
R), printed as R prints them (``6``, not ``6.0``), e.g. coefficients ``Batch2``,
``Batch3``.
"""

from __future__ import annotations

import keyword
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "RandomTerm",
    "ModelFormula",
    "RandomBlock",
    "RandomDesign",
    "parse_formula",
    "formula_columns",
    "fixed_design",
    "fixed_term_columns",
    "random_design",
    "sanitize_name",
    "check_levels",
    "level_label",
    "categorize",
    "KINSHIP",
    "KINSHIP_PREFIX",
    "kinship_factor",
]

#: The reserved grouping name of a known-covariance random effect: ``(1 | kinship)``.
KINSHIP = "kinship"
#: Prefix of the sample-sheet columns that carry the kinship matrix (one column per sample id):
#: :func:`batchmix.lmm.kinship.attach_kinship` adds them, so that any row subset of the sheet
#: carries the matching submatrix.
KINSHIP_PREFIX = "kinship::"

_IDENTIFIER = re.compile(r"`[^`]+`|[A-Za-z_.][A-Za-z0-9_.]*")
_FORMULA_WORDS = {"C", "I", "Q", "log", "exp", "sqrt", "center", "scale", "poly", "bs"}


@dataclass
class RandomTerm:
    """One random-effects bar term ``(expr | group)`` of an lme4 formula.

    Attributes
    ----------
    expr : str
        Right-hand side of the term's model matrix, e.g. ``"1"``, ``"Days"``,
        ``"1 + Days"`` or ``"0 + Days"``. As in R, an intercept is implied unless
        removed with ``0 +`` or ``- 1``.
    group : str
        Grouping column name, or several joined by ``:`` for their interaction.
    """

    expr: str
    group: str


@dataclass
class ModelFormula:
    """A parsed lme4-style formula.

    Attributes
    ----------
    response : str or None
        Left-hand side if given (e.g. ``"Reaction"``), else None.
    fixed : str
        Fixed-effect right-hand side as a formulaic formula string (``"1"`` when
        only the intercept remains).
    random : list of RandomTerm
        The bar terms, in order of appearance (a ``||`` term contributes one
        term per column of its expression).
    """

    response: str | None
    fixed: str
    random: list[RandomTerm] = field(default_factory=list)


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split ``text`` on ``sep`` where it is not nested inside parentheses."""
    parts, depth, current = [], 0, []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ')' in formula {text!r}")
        if depth == 0 and text.startswith(sep, i):
            parts.append("".join(current))
            current = []
            i += len(sep)
            continue
        current.append(ch)
        i += 1
    if depth != 0:
        raise ValueError(f"unbalanced '(' in formula {text!r}")
    parts.append("".join(current))
    return parts


def _expand_uncorrelated(expr: str, group: str) -> list[RandomTerm]:
    """``(a + b || g)`` is ``(1 | g) + (0 + a | g) + (0 + b | g)`` as in lme4."""
    pieces = [p.strip() for p in _split_top_level(expr, "+")]
    has_intercept = True
    variables = []
    for piece in pieces:
        if piece in ("0", "-1") or piece.replace(" ", "") in ("-1",):
            has_intercept = False
        elif piece == "1":
            continue
        elif piece.endswith("- 1") or piece.endswith("-1"):
            has_intercept = False
            variables.append(piece.rsplit("-", 1)[0].strip())
        elif piece:
            variables.append(piece)
    terms = [RandomTerm("1", group)] if has_intercept else []
    terms += [RandomTerm(f"0 + {v}", group) for v in variables]
    return terms


def parse_formula(formula: str) -> ModelFormula:
    """Parse an lme4-style mixed-model formula.

    Parameters
    ----------
    formula : str
        For example ``"~ condition + (1 | batch)"``, ``"Reaction ~ Days + (Days | Subject)"``,
        ``"~ x + (x || g)"`` (uncorrelated intercept and slope),
        ``"~ x + (1 | g1) + (1 | g2)"`` or ``"~ x + (1 | g1:g2)"``.

    Returns
    -------
    ModelFormula

    Raises
    ------
    ValueError
        On a missing ``~``, unbalanced parentheses, an empty bar term, or a
        parenthesised term with no ``|`` at top level in a position where a
        random term was expected.
    """
    if not isinstance(formula, str) or "~" not in formula:
        raise ValueError(f"a model formula needs '~', got {formula!r}")
    sides = _split_top_level(formula, "~")
    if len(sides) != 2:
        raise ValueError(f"a model formula has exactly one '~' at top level, got {formula!r}")
    lhs, rhs = sides[0].strip(), sides[1].strip()
    if not rhs:
        raise ValueError(f"empty right-hand side in formula {formula!r}")
    fixed_parts: list[str] = []
    random: list[RandomTerm] = []
    for raw in _split_top_level(rhs, "+"):
        part = raw.strip()
        if not part:
            raise ValueError(f"empty term (a dangling '+') in formula {formula!r}")
        inner = part[1:-1] if part.startswith("(") and part.endswith(")") else None
        if inner is not None and len(_split_top_level(inner, ")")) == 1:
            bars = _split_top_level(inner, "|")
            if len(bars) >= 2:
                double = len(bars) == 3 and bars[1] == ""
                if len(bars) > 3 or (len(bars) == 3 and not double):
                    raise ValueError(f"bad random term {part!r} in formula {formula!r}")
                expr = bars[0].strip()
                group = bars[-1].strip()
                if not expr or not group:
                    raise ValueError(f"random term {part!r} needs an expression and a group")
                if not re.fullmatch(r"[A-Za-z0-9_.`:]+( *: *[A-Za-z0-9_.`]+)*", group):
                    raise ValueError(
                        f"grouping factor {group!r} in {part!r} must be a column name or columns joined by ':'"
                    )
                group = re.sub(r"\s*:\s*", ":", group).replace("`", "")
                if group == KINSHIP and (double or expr.replace(" ", "") not in ("1", "0+1")):
                    raise ValueError(f"the known-covariance term is written (1 | {KINSHIP}), got {part!r}")
                if double:
                    random.extend(_expand_uncorrelated(expr, group))
                else:
                    random.append(RandomTerm(expr, group))
                continue
        if "|" in part:
            raise ValueError(f"random term {part!r} must be written in parentheses, e.g. '(1 | batch)'")
        fixed_parts.append(part)
    fixed = " + ".join(fixed_parts) if fixed_parts else "1"
    return ModelFormula(response=lhs or None, fixed=fixed, random=random)


def _identifiers(text: str) -> list[str]:
    """Variable names in a formula fragment, in order of appearance (no functions)."""
    names = []
    for match in _IDENTIFIER.finditer(text):
        token = match.group(0)
        end = match.end()
        if token.startswith("`"):
            names.append(token[1:-1])
            continue
        rest = text[end:].lstrip()
        if rest.startswith("("):  # a function call such as log(x) or C(x)
            continue
        if token in _FORMULA_WORDS or keyword.iskeyword(token) or token[0] == "." and token[1:].isdigit():
            continue
        if re.fullmatch(r"\.?[0-9.]+", token):
            continue
        names.append(token)
    return names


def formula_columns(formula: str) -> list[str]:
    """Every sample-sheet column a formula refers to.

    Parameters
    ----------
    formula : str
        An lme4-style formula (see :func:`parse_formula`).

    Returns
    -------
    list of str
        Fixed-effect covariates, random-term covariates and grouping factors, in
        order of appearance, each once; the response is not included.
    """
    parsed = parse_formula(formula)
    rhs = _split_top_level(formula, "~")[1]
    # (1 | kinship) names a matrix given in the config, not a sample-sheet column
    reserved = {KINSHIP} if any(t.group == KINSHIP for t in parsed.random) else set()
    seen: list[str] = []
    for name in _identifiers(rhs.replace("|", " + ").replace(":", " + ")):
        if name not in seen and name not in reserved:
            seen.append(name)
    return seen


def sanitize_name(name: str) -> str:
    """Replace every character outside ``[A-Za-z0-9_.]`` by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", name)


def _r_column_name(formulaic_name: str) -> str:
    """Formulaic's ``g[T.level]`` / ``g[level]`` naming to R's ``glevel``."""
    if formulaic_name == "Intercept":
        return "Intercept"
    pieces = []
    for factor in formulaic_name.split(":"):
        match = re.fullmatch(r"(.*)\[(?:T\.)?(.*)\]", factor)
        pieces.append(match.group(1) + match.group(2) if match else factor)
    return ":".join(p.replace("`", "") for p in pieces)


def level_label(value) -> str:
    """The text of one factor level as R prints it: ``6`` for 6.0, ``TRUE`` for True, else ``str``."""
    if isinstance(value, (bool, np.bool_)):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return _format_number(value)
    return str(value)


def check_levels(samples: pd.DataFrame, levels: dict | None) -> None:
    """Check a ``levels`` mapping ``{column: [reference, other, ...]}`` against a sample sheet.

    Parameters
    ----------
    samples : pandas.DataFrame
        The sample sheet.
    levels : dict or None
        Column name to the complete list of its levels, reference first. Levels are compared
        as text (:func:`level_label`), so ``[4, 6, 7]`` and ``["4", "6", "7"]`` both name a
        numeric column's values.

    Raises
    ------
    ValueError
        When a column is not in the sheet, a level is listed twice, a listed level does not
        occur in the column, or a value of the column is not listed; the message names the
        column and lists the levels it has.
    """
    for column, wanted in (levels or {}).items():
        if column not in samples.columns:
            raise ValueError(
                f"levels: column {column!r} is not in the sample sheet "
                f"(columns: {', '.join(map(str, samples.columns))})"
            )
        if not isinstance(wanted, (list, tuple)) or not wanted:
            raise ValueError(
                f"levels: {column!r} needs a list of its levels, reference first, e.g. {column}: [control, treated]"
            )
        values = samples[column].dropna()
        present = sorted({level_label(v) for v in values}, key=_level_sort_key(values))
        wanted_text = [level_label(v) for v in wanted]
        doubled = sorted({v for v in wanted_text if wanted_text.count(v) > 1})
        unknown = [v for v in wanted_text if v not in present]
        missing = [v for v in present if v not in wanted_text]
        problems = []
        if doubled:
            problems.append(f"listed twice: {', '.join(doubled)}")
        if unknown:
            problems.append(f"not in the column: {', '.join(unknown)}")
        if missing:
            problems.append(f"not listed: {', '.join(missing)}")
        if problems:
            raise ValueError(
                f"levels: {column!r} has the levels {', '.join(present)}; the list given "
                f"({', '.join(wanted_text)}) has levels {'; '.join(problems)}. "
                "List every level of the column once, the reference level first."
            )


def categorize(samples: pd.DataFrame, *, levels: dict | None = None, categorical=()) -> pd.DataFrame:
    """A copy of the sheet whose ``levels`` and ``categorical`` columns are :class:`pandas.Categorical`.

    Every function of this module keeps a categorical column's category order, so a sheet passed
    through this function gives the same design as passing ``levels`` and ``categorical`` to each of
    them: one call where the sheet is read is enough for the whole pipeline. Level labels are text as
    R prints them (:func:`level_label`); numeric columns keep their numeric order.

    Raises
    ------
    ValueError
        As :func:`check_levels`.
    """
    levels = levels or {}
    check_levels(samples, levels)
    out = samples.copy()
    for column in list(levels) + [c for c in categorical if c not in levels]:
        if column not in out.columns:
            raise ValueError(f"column {column!r} is not in the sample sheet")
        values = out[column]
        if column in levels:
            order = [level_label(v) for v in levels[column]]
        elif isinstance(values.dtype, pd.CategoricalDtype):
            continue
        elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            order = [level_label(v) for v in sorted(values.dropna().unique())]
        else:
            continue  # text and booleans are factors already, in R's order
        out[column] = pd.Categorical(values.map(level_label, na_action="ignore"), categories=order)
    return out


def _level_sort_key(values: pd.Series):
    """Numeric columns sort their level labels by value (R's factor() order), others as text."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return lambda label: float(label)
    return None


def _prepare_frame(
    samples: pd.DataFrame, columns: list[str], levels: dict | None = None, categorical=()
) -> pd.DataFrame:
    """Copy the needed columns; strings and booleans become sorted categoricals.

    A column named in ``levels`` becomes a categorical with exactly that level order; a numeric
    column named in ``categorical`` becomes a categorical of its values in numeric order.
    """
    levels = levels or {}
    frame = pd.DataFrame(index=samples.index)
    for column in columns:
        if column not in samples.columns:
            raise ValueError(f"formula refers to column {column!r}, not in the sample sheet")
        values = samples[column]
        if values.isna().any():
            raise ValueError(f"column {column!r} has missing values; drop or fill those samples")
        if column in levels:
            check_levels(samples[[column]], {column: levels[column]})
            order = [level_label(v) for v in levels[column]]
            frame[column] = pd.Categorical(values.map(level_label), categories=order)
        elif isinstance(values.dtype, pd.CategoricalDtype):
            frame[column] = values.cat.remove_unused_categories()
        elif pd.api.types.is_bool_dtype(values):
            frame[column] = pd.Categorical(values.map({False: "FALSE", True: "TRUE"}))
        elif pd.api.types.is_numeric_dtype(values) and column in categorical:
            labels = values.map(level_label)
            order = [level_label(v) for v in sorted(values.unique())]
            frame[column] = pd.Categorical(labels, categories=order)
        elif pd.api.types.is_numeric_dtype(values):
            frame[column] = values.astype(float)
        else:
            as_text = values.astype(str)
            frame[column] = pd.Categorical(as_text, categories=sorted(as_text.unique()))
    return frame


def _quote_columns(expr: str, columns: list[str]) -> str:
    """Backquote column names that are not Python identifiers (e.g. ``a.b``) for formulaic."""

    def repl(match: re.Match) -> str:
        token = match.group(0)
        if token.startswith("`") or token.isidentifier() or token not in columns:
            return token
        return f"`{token}`"

    return _IDENTIFIER.sub(repl, expr)


# formulaic's model matrices of this process, by formula and sheet content (see _model_matrix).
_MODEL_MATRICES: dict[tuple, object] = {}
_MODEL_MATRIX_CACHE_SIZE = 32


def _frame_key(frame: pd.DataFrame) -> tuple:
    """What a model matrix depends on: the columns, their dtypes and level orders, and the values."""
    dtypes = tuple(
        (str(column), str(dtype), tuple(map(str, dtype.categories)) if isinstance(dtype, pd.CategoricalDtype) else ())
        for column, dtype in frame.dtypes.items()
    )
    values = pd.util.hash_pandas_object(frame, index=True, categorize=False).to_numpy().tobytes()
    return dtypes, values


def _model_matrix(expr: str, frame: pd.DataFrame):
    """formulaic's model matrix of ``expr`` on ``frame``, built once per process for the same content.

    A stage builds the same design several times (the coefficients, the term map, the DE's fits
    with and without the batch), and formulaic takes 0.05-0.15 s per call; the matrices are only
    read by the callers, so the same object is handed out again.
    """
    import formulaic

    quoted = _quote_columns(expr, list(frame.columns))
    key = (quoted, _frame_key(frame))
    if key in _MODEL_MATRICES:
        return _MODEL_MATRICES[key]
    try:
        matrix = formulaic.model_matrix(quoted, frame, na_action="raise")
    except Exception as error:  # formulaic raises several types; report them uniformly
        raise ValueError(f"cannot build the design for {expr!r}: {error}") from error
    if len(_MODEL_MATRICES) >= _MODEL_MATRIX_CACHE_SIZE:
        _MODEL_MATRICES.pop(next(iter(_MODEL_MATRICES)))
    _MODEL_MATRICES[key] = matrix
    return matrix


def _full_rank_columns(matrix: np.ndarray, tol: float = 1e-7) -> list[int]:
    """Indices of columns kept by a left-to-right rank check (what R's pivoting QR keeps)."""
    kept: list[int] = []
    basis = np.zeros((matrix.shape[0], 0))
    for j in range(matrix.shape[1]):
        column = matrix[:, j]
        norm = np.linalg.norm(column)
        if norm == 0:
            continue
        residual = column - basis @ (basis.T @ column) if basis.shape[1] else column
        if np.linalg.norm(residual) > tol * norm:
            basis = np.column_stack([basis, residual / np.linalg.norm(residual)])
            kept.append(j)
    return kept


def _fixed_model_matrix(formula: str, samples: pd.DataFrame, levels: dict | None = None, categorical=()):
    parsed = parse_formula(formula)
    fixed_cols = [c for c in formula_columns("~ " + parsed.fixed)] if parsed.fixed != "1" else []
    frame = _prepare_frame(samples, fixed_cols, levels, categorical)
    if parsed.fixed.strip() in ("1",):
        mm = None
        matrix = np.ones((len(samples), 1))
        names = ["Intercept"]
        term_map = {"Intercept": ["Intercept"]}
        return matrix, names, term_map
    mm = _model_matrix(parsed.fixed, frame)
    matrix = np.array(mm.to_numpy(), dtype=float)  # a copy: mm is shared (_model_matrix)
    names = [_r_column_name(c) for c in mm.columns]
    term_map: dict[str, list[str]] = {}
    for term, indices in mm.model_spec.term_indices.items():
        term_name = "Intercept" if str(term) == "1" else str(term).replace("`", "")
        term_map[term_name] = [names[i] for i in indices]
    return matrix, names, term_map


def fixed_design(
    formula: str, samples: pd.DataFrame, *, levels: dict | None = None, categorical=()
) -> tuple[np.ndarray, list[str]]:
    """Fixed-effect design matrix X of a mixed-model formula.

    Parameters
    ----------
    formula : str
        lme4-style formula; only its fixed part is used.
    samples : pandas.DataFrame
        Sample sheet, one row per sample (in the order of the expression columns).
    levels : dict, optional
        ``{column: [reference, other, ...]}``: the level order of a factor, and so its
        reference level and coefficient names (see :func:`check_levels` for the errors).
    categorical : sequence of str, optional
        Columns that are factors even when numeric (the batch column: batches coded 1–4
        give three contrasts, not a slope).

    Returns
    -------
    X : numpy.ndarray
        ``n × p`` full-rank design. Aliased columns are dropped left to right, as
        lme4 does, with a :class:`UserWarning` naming them.
    names : list of str
        Coefficient names in R's style, sanitised for column names
        (``Intercept``, ``InfectionSARS_CoV_2``, ``Days``).
    """
    matrix, names, _ = _fixed_model_matrix(formula, samples, levels, categorical)
    kept = _full_rank_columns(matrix)
    if len(kept) < matrix.shape[1]:
        dropped = [names[j] for j in range(matrix.shape[1]) if j not in kept]
        warnings.warn(
            f"fixed-effect model matrix is rank deficient; dropping column(s) {dropped}",
            UserWarning,
            stacklevel=2,
        )
    return matrix[:, kept], [sanitize_name(names[j]) for j in kept]


def fixed_term_columns(
    formula: str, samples: pd.DataFrame, *, levels: dict | None = None, categorical=()
) -> dict[str, list[str]]:
    """Map each fixed *term* (e.g. ``Infection``) to its coefficient names in X.

    Used for variance fractions, which sum a factor's dummy columns as
    variancePartition does. Names are sanitised as in :func:`fixed_design`;
    aliased (dropped) columns are left out. ``levels`` and ``categorical`` as in
    :func:`fixed_design`.
    """
    _, names, term_map = _fixed_model_matrix(formula, samples, levels, categorical)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, kept_names = fixed_design(formula, samples, levels=levels, categorical=categorical)
    result = {}
    for term, cols in term_map.items():
        kept = [sanitize_name(c) for c in cols if sanitize_name(c) in kept_names]
        if kept:
            result[sanitize_name(term)] = kept
    return result


@dataclass
class RandomBlock:
    """The columns of Z contributed by one random term.

    Attributes
    ----------
    group : str
        Grouping factor name (``g1:g2`` for an interaction).
    terms : list of str
        Names of the term's ``s`` columns (``Intercept``, ``Days``).
    levels : list of str
        The grouping factor's levels, in Z's order.
    Z : numpy.ndarray
        ``n × (len(levels) * s)``, level-major: the columns of level ``j`` are
        ``j*s … j*s + s - 1``.
    """

    group: str
    terms: list[str]
    levels: list[str]
    Z: np.ndarray

    @property
    def n_terms(self) -> int:
        return len(self.terms)

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def n_theta(self) -> int:
        s = len(self.terms)
        return s * (s + 1) // 2


@dataclass
class RandomDesign:
    """All random terms of a formula: blocks of Z and the θ layout."""

    blocks: list[RandomBlock]

    @property
    def Z(self) -> np.ndarray:
        return np.column_stack([b.Z for b in self.blocks]) if self.blocks else np.zeros((0, 0))

    @property
    def n_theta(self) -> int:
        return sum(b.n_theta for b in self.blocks)


def _group_codes(samples: pd.DataFrame, group: str, levels: dict | None = None) -> tuple[np.ndarray, list[str]]:
    columns = group.split(":")
    frame = _prepare_frame(samples, columns, levels)
    labels = frame[columns[0]].astype(str)
    for column in columns[1:]:
        labels = labels + ":" + frame[column].astype(str)
    if len(columns) == 1 and isinstance(frame[columns[0]].dtype, pd.CategoricalDtype):
        order = [str(c) for c in frame[columns[0]].cat.categories]
    elif len(columns) == 1 and pd.api.types.is_numeric_dtype(frame[columns[0]]):
        # numbers as group labels: numeric order, printed as R prints them (6, not 6.0)
        unique = sorted(frame[columns[0]].unique())
        order = [_format_number(v) for v in unique]
        labels = frame[columns[0]].map(_format_number)
    else:
        order = sorted(labels.unique())
    codes = pd.Categorical(labels, categories=order).codes
    return np.asarray(codes), order


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def kinship_factor(K: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """A factor ``L`` (n × r) with ``L Lᵀ = K`` for a symmetric PSD ``K``: eigenvectors × √eigenvalues.

    Eigenvalues below ``rtol`` × the largest are dropped (r is the numerical rank), so the random
    effect ``b ~ N(0, σ_k² I_r)`` with ``Z = L`` has covariance ``σ_k² K``.
    """
    K = np.asarray(K, dtype=float)
    d, U = np.linalg.eigh(0.5 * (K + K.T))
    keep = d > rtol * max(float(d.max(initial=0.0)), 1e-300)
    if not keep.any():
        raise ValueError("the kinship matrix is zero on these samples")
    # largest first, and a sign convention (largest |entry| positive) so the factor is reproducible
    U, d = U[:, keep][:, ::-1], d[keep][::-1]
    idx = np.argmax(np.abs(U), axis=0)
    U = U * np.sign(U[idx, np.arange(U.shape[1])])
    return U * np.sqrt(d)


def _kinship_block(samples: pd.DataFrame) -> RandomBlock:
    """The block of ``(1 | kinship)``: Z a factor of the kinship submatrix of these samples."""
    columns = [f"{KINSHIP_PREFIX}{i}" for i in samples.index]
    missing_cols = [c for c in columns if c not in samples.columns]
    if missing_cols:
        raise ValueError(
            f"the term (1 | {KINSHIP}) needs the kinship matrix (config covariance: {{kinship: path}}, "
            f"attached with batchmix.lmm.kinship.attach_kinship); none for {len(missing_cols)} sample(s), "
            f"e.g. {missing_cols[0][len(KINSHIP_PREFIX) :]!r}"
        )
    Z = kinship_factor(samples[columns].to_numpy(dtype=float))
    levels = [f"pc{j + 1}" for j in range(Z.shape[1])]
    return RandomBlock(group=KINSHIP, terms=["Intercept"], levels=levels, Z=Z)


def random_design(formula: str, samples: pd.DataFrame, *, levels: dict | None = None, categorical=()) -> RandomDesign:
    """Random-effects design of a formula: one :class:`RandomBlock` per bar term.

    Parameters
    ----------
    formula : str
        lme4-style formula.
    samples : pandas.DataFrame
        Sample sheet, one row per sample.
    levels : dict, optional
        Level order of factors (see :func:`fixed_design`): of a grouping factor it sets the
        order of its levels in Z and the BLUPs; of a factor in a slope term, its contrasts.
    categorical : sequence of str, optional
        Numeric columns used as factors in slope terms (see :func:`fixed_design`).

    Returns
    -------
    RandomDesign
    """
    parsed = parse_formula(formula)
    blocks = []
    for term in parsed.random:
        if term.group == KINSHIP:
            blocks.append(_kinship_block(samples))
            continue
        codes, group_levels = _group_codes(samples, term.group, levels)
        expr_cols = formula_columns("~ " + term.expr) if term.expr.strip() not in ("1", "0 + 1") else []
        frame = _prepare_frame(samples, expr_cols, levels, categorical)
        if not expr_cols:
            matrix = np.ones((len(samples), 1))
            names = ["Intercept"]
        else:
            mm = _model_matrix(term.expr, frame)
            matrix = np.array(mm.to_numpy(), dtype=float)  # a copy: mm is shared (_model_matrix)
            names = [sanitize_name(_r_column_name(c)) for c in mm.columns]
        n, s = matrix.shape
        Z = np.zeros((n, len(group_levels) * s))
        for j in range(s):
            Z[np.arange(n), codes * s + j] = matrix[:, j]
        blocks.append(RandomBlock(group=term.group, terms=names, levels=group_levels, Z=Z))
    return RandomDesign(blocks)
