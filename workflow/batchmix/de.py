"""Differential expression with and without the batch: the mixed model against OLS ignoring the batch.

For every fixed-effect coefficient of the model except the intercept (and except the batch's own
contrasts when the batch is a fixed effect), :func:`differential_expression` gives one table with a
row per input gene:

* ``gene_id``, ``status`` (as in ``gene_fits.tsv``), ``ave_expr`` (limma's ``Amean``: the gene's mean
  over its observed samples);
* ``logfc``, ``se``, ``t``, ``df``, ``p``, ``q``: the per-gene mixed model that accounts for the batch,
  with limma-style moderation (``coef_``, ``se_mod_``, ``t_mod_``, ``p_mod_``, ``df_total`` of
  ``gene_fits``; without moderation the Satterthwaite ``se_``, ``t_``, ``df_``, ``p_``); ``q`` is
  Benjamini–Hochberg over the fitted genes (status ``ok`` or ``singular``);
* ``ols_logfc``, ``ols_se``, ``ols_t``, ``ols_df``, ``ols_p``, ``ols_q``: ordinary least squares on the
  fixed part of the model *without the batch*, over the same fitted genes, exactly as limma's
  ``lmFit`` then ``eBayes`` (``trend`` and ``robust`` from ``moderate``; without moderation, lmFit's
  ordinary t on the residual df);
* ``change``: ``both``, ``lmm_only`` (significant only when the batch is accounted for: gained),
  ``ols_only`` (significant only when it is ignored: lost) or ``neither``, at q ≤ ``fdr``; empty for
  genes not fitted.

:func:`de_summary` counts the calls per coefficient and writes the sentence
"Accounting for batch, N genes lose and M gain significance for <coef>".
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from batchmix.design import fixed_design, fixed_term_columns, parse_formula
from batchmix.distributions import bh_qvalues, t_sf

logger = logging.getLogger(__name__)

__all__ = [
    "CHANGE_CLASSES",
    "FITTED_STATUSES",
    "DE_COLUMNS",
    "limma_fit",
    "lm_series",
    "ebayes",
    "concatenate_fits",
    "GeneBlocks",
    "LM_BLOCK_GENES",
    "LM_BLOCK_VALUES",
    "lm_block_genes",
    "missingness_patterns",
    "de_coefficients",
    "differential_expression",
    "de_summary",
    "bh",
]

#: The values of ``change``.
CHANGE_CLASSES = ("both", "lmm_only", "ols_only", "neither")
#: Statuses of the genes that take part in the tests (and in the BH adjustment).
FITTED_STATUSES = ("ok", "singular")
#: The columns of a DE table, in order.
DE_COLUMNS = [
    "gene_id",
    "status",
    "ave_expr",
    "logfc",
    "se",
    "t",
    "df",
    "p",
    "q",
    "ols_logfc",
    "ols_se",
    "ols_t",
    "ols_df",
    "ols_p",
    "ols_q",
    "change",
]


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values of the finite entries of ``p`` (NaN stays NaN):
    :func:`batchmix.distributions.bh_qvalues`."""
    return bh_qvalues(p)


def missingness_patterns(observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of a genes × samples boolean mask and each gene's row among them.

    The same as ``numpy.unique(observed, axis=0, return_inverse=True)`` (patterns in the same sorted
    order), without its cost on wide masks: complete data is one pattern, and otherwise the rows are
    packed to bytes (8 samples a byte, most significant bit first, so that the bytes sort as the
    rows do) before they are compared.

    Parameters
    ----------
    observed : numpy.ndarray
        genes × samples, ``True`` where a value is observed.

    Returns
    -------
    patterns : numpy.ndarray
        The distinct rows, sorted.
    inverse : numpy.ndarray
        For each gene, the index of its row in ``patterns``.
    """
    observed = np.asarray(observed, dtype=bool)
    n_genes, n_samples = observed.shape
    if n_genes and n_samples and observed.all():
        return observed[:1].copy(), np.zeros(n_genes, dtype=np.intp)
    if not n_genes or not n_samples:
        patterns, inverse = np.unique(observed, axis=0, return_inverse=True)
        return patterns, inverse.reshape(-1)
    packed = np.ascontiguousarray(np.packbits(observed, axis=1))
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).reshape(-1)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return observed[first], inverse.reshape(-1)


# Genes per block of limma_fit's least squares: memory holds a block's copies, not the whole table's.
# A block holds at least LM_BLOCK_VALUES values (256 MB), so that its matrix products are large
# enough for BLAS to take the same kernel as for the whole table: OpenBLAS multiplies small
# matrices with other kernels, whose last bits differ. With fewer samples a block is simply larger.
LM_BLOCK_GENES = 4096
LM_BLOCK_VALUES = 1 << 25


def lm_block_genes(n_samples: int) -> int:
    """Genes per block of the least squares for ``n_samples`` samples: :data:`LM_BLOCK_VALUES` values'
    worth, at least :data:`LM_BLOCK_GENES` genes."""
    return max(LM_BLOCK_GENES, LM_BLOCK_VALUES // max(1, n_samples))


@dataclass(frozen=True)
class GeneBlocks:
    """A genes × samples matrix that is read a block of genes at a time, in its row order.

    :func:`differential_expression` then holds a block, not the table: the de stage hands it the
    stabilised Parquet matrix this way (row groups of genes).

    Attributes
    ----------
    index : pandas.Index
        The gene ids, in row order.
    columns : pandas.Index
        The sample ids.
    read : callable
        ``read(n)`` yields the rows in order as DataFrames of about ``n`` genes each (index gene ids,
        columns ``columns``, float64 values in column-major order, as a whole-table read gives them).
    """

    index: pd.Index
    columns: pd.Index
    read: Callable[[int], Iterable[pd.DataFrame]]


def row_means(values: np.ndarray, *, finite_only: bool) -> np.ndarray:
    """Each row's mean over its observed values, NaN for a row with none: limma's ``Amean``.

    ``finite_only``: infinities count as missing too (``lm.series``), else NaN only. The doubles of
    ``numpy.nanmean`` as these fits always called it; when nothing is missing (the usual stabilised
    matrix) they come from ``values.mean`` directly, which sums the same array the same way and
    divides by the same count, without the two full copies nanmean makes (80 MB each at 20,000 x 500,
    fresh memory whose first touch costs more than the sums).
    """
    missing = ~np.isfinite(values) if finite_only else np.isnan(values)
    if values.shape[1] and not missing.any():
        return values.mean(axis=1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-missing genes: NaN mean, as limma
        return np.nanmean(np.where(missing, np.nan, values) if finite_only else values, axis=1)


def lm_series(expression: np.ndarray, design: np.ndarray) -> dict[str, np.ndarray]:
    """limma's ``lmFit`` (``lm.series``) of every gene of a genes × samples array, missing values allowed.

    Each gene is fitted on its observed samples, genes sharing a pattern of missing samples together.
    Every number of a gene depends on that gene alone, so blocks of genes give the rows of the whole.

    Returns
    -------
    dict of numpy.ndarray
        ``coef`` and ``unscaled`` (the standard errors' factors; genes × p, NaN where a coefficient is
        not estimable on the gene's observed samples), ``sigma``, ``df_residual`` and ``amean`` (genes).
    """
    Y = np.asarray(expression, dtype=float)
    X = np.asarray(design, dtype=float)
    G, n = Y.shape
    p = X.shape[1]
    coef = np.full((G, p), np.nan)
    unscaled = np.full((G, p), np.nan)
    sigma = np.full(G, np.nan)
    df_residual = np.zeros(G)
    observed = np.isfinite(Y)
    amean = row_means(Y, finite_only=True)
    patterns, inverse = missingness_patterns(observed)
    for k, mask in enumerate(patterns):
        members = np.flatnonzero(inverse == k)
        if not mask.any():
            continue
        Xo = X[mask]
        keep = _estimable_columns(Xo)
        Xk = Xo[:, keep]
        Yo = Y[np.ix_(members, np.flatnonzero(mask))]
        q, r = np.linalg.qr(Xk)
        rinv = np.linalg.inv(r)
        beta = Yo @ q @ rinv.T
        coef[np.ix_(members, keep)] = beta
        unscaled[np.ix_(members, keep)] = np.sqrt(np.sum(rinv**2, axis=1))[None, :]
        dfr = int(mask.sum()) - len(keep)
        df_residual[members] = dfr
        if dfr > 0:
            resid = Yo - beta @ Xk.T
            sigma[members] = np.sqrt(np.einsum("gi,gi->g", resid, resid) / dfr)
    return {"coef": coef, "unscaled": unscaled, "sigma": sigma, "df_residual": df_residual, "amean": amean}


def limma_fit(
    expression: np.ndarray,
    design: np.ndarray,
    *,
    moderate: bool = True,
    trend: bool = False,
    robust: bool = False,
    rows: np.ndarray | None = None,
    block_genes: int | None = None,
) -> dict[str, np.ndarray]:
    """limma's ``lmFit`` + ``eBayes`` on a genes × samples array (missing values allowed).

    Parameters
    ----------
    expression : numpy.ndarray
        genes × samples, NaN where missing; each gene is fitted on its observed samples (as
        ``lm.series``), genes sharing a pattern of missing samples together.
    design : numpy.ndarray
        samples × p design matrix of full column rank.
    moderate : bool
        eBayes (True) or lmFit's ordinary t on the residual df (False).
    trend, robust : bool
        ``eBayes(trend = TRUE)`` (prior variance trended on ``amean``) and ``robust = TRUE``.
    rows : numpy.ndarray, optional
        The genes (row positions of ``expression``) to fit, in this order; default all.
    block_genes : int, optional
        Genes per block of the least squares (:func:`lm_series`); the moderation then pools all.
        Default: :func:`lm_block_genes`.

    Returns
    -------
    dict of numpy.ndarray
        ``coef``, ``se``, ``t``, ``p`` (genes × p), ``df`` (genes; df.total with moderation, else
        df.residual), ``amean``, ``sigma``, ``df_residual``, ``s2_post`` (genes) and ``df_prior``.
        A coefficient not estimable on a gene's observed samples is NaN.
    """
    values = np.asarray(expression)
    rows = np.arange(values.shape[0]) if rows is None else np.asarray(rows, dtype=np.intp)
    if block_genes is None:
        block_genes = lm_block_genes(values.shape[1])
    # a block is copied out as C-ordered rows, as values[rows] would be: each gene's sums then run in
    # the same order whatever the blocks
    parts = [
        lm_series(values[rows[start : start + block_genes]], design)
        for start in range(0, max(rows.size, 1), max(1, int(block_genes)))
    ]
    return ebayes(concatenate_fits(parts), moderate=moderate, trend=trend, robust=robust)


def concatenate_fits(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The :func:`lm_series` fits of consecutive blocks of genes as one fit."""
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def ebayes(
    fit: dict[str, np.ndarray], *, moderate: bool = True, trend: bool = False, robust: bool = False
) -> dict[str, np.ndarray]:
    """limma's ``eBayes`` (or lmFit's ordinary t) of an :func:`lm_series` fit of every gene.

    The moderation pools the genes' variances, so it runs on the whole fit, after the blocks.
    Returns the dictionary of :func:`limma_fit`.
    """
    coef, unscaled, sigma, df_residual, amean = (
        fit[key] for key in ("coef", "unscaled", "sigma", "df_residual", "amean")
    )
    # imported here, not at the top: the stages that only read FITTED_STATUSES or bh() do not need it
    from batchmix.moderate import squeeze_var

    out = {"coef": coef, "amean": amean, "sigma": sigma, "df_residual": df_residual}
    if not moderate:
        with np.errstate(invalid="ignore", divide="ignore"):
            se = unscaled * sigma[:, None]
            t = coef / se
        df = np.where(df_residual > 0, df_residual, np.nan)
        out.update(se=se, t=t, df=df, p=2 * t_sf(np.abs(t), df[:, None]), s2_post=sigma**2, df_prior=np.nan)
        return out
    var = np.where(df_residual > 0, sigma**2, np.nan)
    squeezed = squeeze_var(var, df_residual, covariate=amean if trend else None, robust=robust)
    s2_post = squeezed.var_post
    df_total = np.minimum(df_residual + squeezed.df_prior, np.nansum(df_residual))
    with np.errstate(invalid="ignore", divide="ignore"):
        se = unscaled * np.sqrt(s2_post)[:, None]
        t = coef / se
    out.update(
        se=se,
        t=t,
        df=df_total,
        p=2 * t_sf(np.abs(t), df_total[:, None]),
        s2_post=s2_post,
        df_prior=squeezed.df_prior,
    )
    return out


def _estimable_columns(X: np.ndarray, tol: float = 1e-7) -> list[int]:
    """Columns kept by a left-to-right rank check, as R's ``lm.fit`` keeps them (aliased ones are NA)."""
    kept: list[int] = []
    basis = np.zeros((X.shape[0], 0))
    for j in range(X.shape[1]):
        column = X[:, j]
        norm = np.linalg.norm(column)
        if norm == 0:
            continue
        residual = column - basis @ (basis.T @ column)
        if np.linalg.norm(residual) > tol * norm:
            basis = np.column_stack([basis, residual / np.linalg.norm(residual)])
            kept.append(j)
    return kept


def _ols_design(formula: str, samples: pd.DataFrame, batch: str | None, levels: dict | None):
    """The fixed part of the model without the batch's terms: design matrix and coefficient names."""
    categorical = (batch,) if batch else ()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X, names = fixed_design(formula, samples, levels=levels, categorical=categorical)
        batch_coefs: set[str] = set()
        if batch:
            for term, cols in fixed_term_columns(formula, samples, levels=levels, categorical=categorical).items():
                if batch in term.split(":") or term == batch:
                    batch_coefs.update(cols)
    keep = [j for j, name in enumerate(names) if name not in batch_coefs]
    return X[:, keep], [names[j] for j in keep], sorted(batch_coefs)


def de_coefficients(
    formula: str, samples: pd.DataFrame, *, batch: str | None = None, levels: dict | None = None
) -> list[str]:
    """The coefficients :func:`differential_expression` gives a table for, from the design alone (no fit).

    Every fixed-effect coefficient of ``formula`` except the intercept and the batch's own terms, in
    model order: the names of the ``results/de/<coef>.tsv`` files, known before any job runs.
    """
    _, names, _ = _ols_design(formula, samples, batch, levels)
    return [name for name in names if name != "Intercept"]


def differential_expression(
    gene_fits: pd.DataFrame,
    expression: pd.DataFrame | GeneBlocks,
    samples: pd.DataFrame,
    *,
    formula: str,
    coefficients: list[str] | None = None,
    batch: str | None = None,
    moderate: dict | None = None,
    fdr: float = 0.05,
    levels: dict | None = None,
) -> dict[str, pd.DataFrame]:
    """Per coefficient, the mixed model's test against OLS ignoring the batch, for every input gene.

    Parameters
    ----------
    gene_fits : pandas.DataFrame
        ``results/lmm/gene_fits.tsv``: one row per input gene, ``gene_id``, ``status`` and the columns
        ``coef_<c>``, ``se_mod_<c>``, ``t_mod_<c>``, ``p_mod_<c>``, ``df_total`` (moderated) or
        ``se_<c>``, ``t_<c>``, ``df_<c>``, ``p_<c>`` (when ``moderate`` is not enabled).
    expression : pandas.DataFrame or GeneBlocks
        genes × samples on the scale the models were fitted on (``results/vst/expression.parquet``),
        index the gene ids; as :class:`GeneBlocks` it is read a block of genes at a time (in
        gene_fits' order; otherwise it is read whole).
    samples : pandas.DataFrame
        Sample sheet, index the sample ids (reordered to the expression's columns).
    formula : str
        The model; its fixed part without the batch's terms is the OLS design.
    coefficients : list of str, optional
        The model's coefficient names (``ModelMetadata.coefficients``); default: the ``coef_`` columns.
        The intercept and the batch's own contrasts are skipped.
    batch : str, optional
        The batch column: categorical, and its fixed-effect terms are left out of the OLS design.
    moderate : dict, optional
        The config's ``moderate`` block: ``enabled`` (default True), ``trend``, ``robust``.
    fdr : float
        The q-value threshold of ``change``.
    levels : dict, optional
        The config's ``levels`` (the same coefficient names as the model).

    Returns
    -------
    dict of str to pandas.DataFrame
        Coefficient name to its table (columns :data:`DE_COLUMNS`), genes in ``gene_fits`` order.

    Raises
    ------
    ValueError
        When a coefficient has no column in ``gene_fits`` or is not in the OLS design, or when the
        expression lacks a gene or a sample.
    """
    mcfg = {"enabled": True, "trend": False, "robust": False, **(moderate or {})}
    moderated = bool(mcfg["enabled"])
    gene_ids = gene_fits["gene_id"].astype(str)
    # positions of gene_fits' genes in the table: the table itself is not copied (a block of genes
    # at a time is, below)
    positions = pd.Index(expression.index.astype(str)).get_indexer(gene_ids)
    missing_genes = gene_ids[positions < 0]
    if len(missing_genes):
        raise ValueError(
            f"the expression table lacks {len(missing_genes)} gene(s) of gene_fits, e.g. {missing_genes.iloc[0]!r}"
        )
    samples = samples.copy()
    samples.index = samples.index.astype(str)
    absent = [s for s in expression.columns.astype(str) if s not in samples.index]
    if absent:
        raise ValueError(f"the sample sheet lacks sample(s) {absent[:5]} of the expression table")
    samples = samples.loc[expression.columns.astype(str)]
    parsed = parse_formula(formula)
    del parsed  # parsing validates the formula before any work
    X, ols_names, batch_coefs = _ols_design(formula, samples, batch, levels)
    if coefficients is None:
        coefficients = [c[len("coef_") :] for c in gene_fits.columns if c.startswith("coef_")]
    tested = [c for c in coefficients if c != "Intercept" and c not in batch_coefs]
    status = gene_fits["status"].astype(str).to_numpy()
    fitted = np.isin(status, FITTED_STATUSES)
    for name in tested:
        # with no fitted gene, gene_fits has no estimate columns at all: every row keeps its status, NA values
        if fitted.any() and f"coef_{name}" not in gene_fits.columns:
            raise ValueError(f"gene_fits has no column coef_{name}")
        if name not in ols_names:
            raise ValueError(f"coefficient {name!r} is not in the fixed design without the batch ({ols_names})")

    G = len(gene_ids)
    options = {"moderate": moderated, "trend": bool(mcfg["trend"]), "robust": bool(mcfg["robust"])}
    if isinstance(expression, GeneBlocks) and np.array_equal(positions, np.arange(G)):
        ave_expr, ols = _ols_by_blocks(expression, fitted, X, options)
    else:
        if isinstance(expression, GeneBlocks):  # not in gene_fits' order: the rows are looked up
            expression = pd.concat(list(expression.read(LM_BLOCK_GENES)))
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-missing genes: NaN mean, as limma
            # a block of rows taken as the whole would be (the table's memory order): the same sums
            ave_expr = np.concatenate(
                [
                    np.nanmean(expression.iloc[positions[start : start + LM_BLOCK_GENES]].to_numpy(dtype=float), axis=1)
                    for start in range(0, G, LM_BLOCK_GENES)
                ]
                or [np.zeros(0)]
            )
        ols = None
        if fitted.sum() >= 1:
            ols = limma_fit(expression.to_numpy(dtype=float), X, rows=positions[fitted], **options)
    tables = {}
    for name in tested:
        lmm_cols = (
            (f"se_mod_{name}", f"t_mod_{name}", "df_total", f"p_mod_{name}")
            if moderated
            else (f"se_{name}", f"t_{name}", f"df_{name}", f"p_{name}")
        )
        absent_cols = [c for c in lmm_cols if c not in gene_fits.columns]
        if absent_cols and fitted.any():
            raise ValueError(f"gene_fits lacks {absent_cols} (is moderate.enabled as in the LMM run?)")
        frame = pd.DataFrame({"gene_id": gene_ids.to_numpy(), "status": status, "ave_expr": ave_expr})

        def column(col: str) -> np.ndarray:
            if col not in gene_fits.columns:
                return np.full(G, np.nan)
            vals = pd.to_numeric(gene_fits[col], errors="coerce").to_numpy(dtype=float)
            return np.where(fitted, vals, np.nan)

        frame["logfc"] = column(f"coef_{name}")
        frame["se"], frame["t"], frame["df"], frame["p"] = (column(c) for c in lmm_cols)
        frame["q"] = bh(frame["p"].to_numpy())
        j = ols_names.index(name)
        for key, out in (("coef", "ols_logfc"), ("se", "ols_se"), ("t", "ols_t"), ("p", "ols_p")):
            full = np.full(G, np.nan)
            if ols is not None:
                full[fitted] = ols[key][:, j]
            frame[out] = full
        ols_df = np.full(G, np.nan)
        if ols is not None:
            ols_df[fitted] = ols["df"]
        frame.insert(frame.columns.get_loc("ols_p"), "ols_df", ols_df)
        frame["ols_q"] = bh(frame["ols_p"].to_numpy())
        sig_lmm = frame["q"].to_numpy() <= fdr
        sig_ols = frame["ols_q"].to_numpy() <= fdr
        testable = np.isfinite(frame["q"].to_numpy()) & np.isfinite(frame["ols_q"].to_numpy())
        change = np.where(
            sig_lmm & sig_ols, "both", np.where(sig_lmm, "lmm_only", np.where(sig_ols, "ols_only", "neither"))
        ).astype(object)
        change[~testable] = None
        frame["change"] = change
        tables[name] = frame[DE_COLUMNS]
        logger.info(
            "DE %s: %d genes, %d significant with the batch, %d without",
            name,
            int(testable.sum()),
            int(sig_lmm.sum()),
            int(sig_ols.sum()),
        )
    return tables


def _ols_by_blocks(
    expression: GeneBlocks, fitted: np.ndarray, X: np.ndarray, options: dict
) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """``ave_expr`` of every gene and the OLS fit of the fitted ones, from blocks of the matrix's rows.

    The blocks hold at least :data:`LM_BLOCK_VALUES` values, as :func:`limma_fit`'s do, so the
    numbers are those of the whole table read at once.
    """
    block_genes = lm_block_genes(len(expression.columns))
    means, parts, start = [], [], 0
    for block in expression.read(block_genes):
        values = block.to_numpy(dtype=float)
        means.append(row_means(values, finite_only=False))
        rows = np.flatnonzero(fitted[start : start + len(block)])
        if rows.size:
            parts.append(lm_series(values[rows], X))
        start += len(block)
    if start != fitted.size:
        raise ValueError(f"the expression blocks hold {start} genes, gene_fits {fitted.size}")
    ave_expr = np.concatenate(means) if means else np.zeros(0)
    return ave_expr, (ebayes(concatenate_fits(parts), **options) if parts else None)


def de_summary(tables: dict[str, pd.DataFrame], *, fdr: float = 0.05, max_genes: int = 20) -> dict[str, dict]:
    """Counts of the calls per coefficient, the genes that change call, and one sentence.

    Parameters
    ----------
    tables : dict of str to pandas.DataFrame
        From :func:`differential_expression`.
    fdr : float
        The threshold used there (recorded).
    max_genes : int
        How many of the genes that change call are listed in each direction (the most significant
        first: by the LMM's p for gained genes, by the OLS p for lost ones); the tables hold all.

    Returns
    -------
    dict of str to dict
        Per coefficient: ``fdr``, ``n_tested``, ``n_significant_lmm``, ``n_significant_ols``, ``n_both``,
        ``n_lost`` (``ols_only``), ``n_gained`` (``lmm_only``), ``lost_genes``, ``gained_genes`` and
        ``sentence``.
    """
    summary = {}
    for name, table in tables.items():
        change = table["change"]
        lost = table[change == "ols_only"].sort_values(["ols_p", "gene_id"], kind="mergesort")
        gained = table[change == "lmm_only"].sort_values(["p", "gene_id"], kind="mergesort")
        n_lost, n_gained = len(lost), len(gained)
        summary[name] = {
            "fdr": fdr,
            "n_tested": int(change.notna().sum()),
            "n_significant_lmm": int((change.isin(["both", "lmm_only"])).sum()),
            "n_significant_ols": int((change.isin(["both", "ols_only"])).sum()),
            "n_both": int((change == "both").sum()),
            "n_lost": n_lost,
            "n_gained": n_gained,
            "lost_genes": lost["gene_id"].head(max_genes).tolist(),
            "gained_genes": gained["gene_id"].head(max_genes).tolist(),
            "sentence": (
                f"Accounting for batch, {n_lost} {'gene loses' if n_lost == 1 else 'genes lose'} and "
                f"{n_gained} gain{'s' if n_gained == 1 else ''} significance for {name}."
            ),
        }
    return summary
