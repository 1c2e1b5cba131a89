"""Comparison of several analyses of the same data: information criteria, the best model per gene, DE agreement.

Analyses of one expression table under different models (``~ condition + (1|batch)``,
``~ condition + batch``, ``~ condition``) are compared gene by gene:

* :func:`information_criteria` refits one model to every gene by **maximum likelihood** and gives
  lme4's ``logLik``, its ``df`` (fixed coefficients + variance parameters + the residual variance),
  ``AIC`` and ``BIC``. REML criteria of models with different fixed effects are not comparable (the
  REML likelihood is that of residual contrasts which depend on X); ML ones are. A model without a
  random term is an ordinary least-squares fit, as R's ``lm`` with ``logLik(fit)`` (ML).
* :func:`best_models` picks, per gene, the analysis whose model has the lowest AIC and the lowest
  BIC, with the difference to the runner-up; ties and genes that some analysis did not fit get a
  status saying so. :func:`win_counts` counts the wins.
* :func:`de_agreement` compares the DE calls (the mixed model's ``q`` of ``results/de/<coef>.tsv``)
  of every pair of analyses, for every coefficient both test.

Nothing here reads or writes files, and nothing draws: the ``compare`` stage
(:mod:`batchmix.pipeline.compare`) reads the analyses' outputs and writes these tables.
"""

from __future__ import annotations

import logging
import time
from itertools import combinations

import numpy as np
import pandas as pd

from batchmix import lmm
from batchmix.de import FITTED_STATUSES
from batchmix.design import categorize

__all__ = [
    "IC_COLUMNS",
    "BEST_COLUMNS",
    "AGREEMENT_COLUMNS",
    "TIE_TOLERANCE",
    "CLOSE_DELTA",
    "REFIT_BLOCK_GENES",
    "information_criteria",
    "best_models",
    "win_counts",
    "de_agreement",
]

logger = logging.getLogger(__name__)

#: Columns of :func:`information_criteria`.
IC_COLUMNS = ["gene_id", "status", "loglik_ml", "n_params", "aic", "bic"]
#: Columns of :func:`best_models`.
BEST_COLUMNS = ["gene_id", "status", "best_aic", "delta_aic", "best_bic", "delta_bic"]
#: Columns of :func:`de_agreement` (``genes_only_a`` and ``genes_only_b`` are lists).
AGREEMENT_COLUMNS = [
    "analysis_a",
    "analysis_b",
    "coefficient",
    "fdr",
    "n_genes",
    "n_tested_both",
    "n_both",
    "n_only_a",
    "n_only_b",
    "n_neither",
    "n_not_tested",
    "genes_only_a",
    "genes_only_b",
]
#: Criteria closer than this (absolute, in AIC/BIC units) are a tie: the same model fitted twice.
TIE_TOLERANCE = 1e-6
#: A difference of the criterion below this is "no clear preference" (Burnham & Anderson's ΔAIC < 2).
CLOSE_DELTA = 2.0
#: Genes refitted per call (progress is logged after each block; the fits do not depend on it).
REFIT_BLOCK_GENES = 2000


def information_criteria(
    expression: pd.DataFrame,
    samples: pd.DataFrame,
    formula: str,
    *,
    levels: dict | None = None,
    categorical: tuple[str, ...] | list[str] = (),
    gene_status: pd.Series | None = None,
    label: str | None = None,
    block_genes: int = REFIT_BLOCK_GENES,
) -> pd.DataFrame:
    """ML log-likelihood, number of parameters, AIC and BIC of one model for every gene.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes × samples (the stabilised expression), index gene ids. Missing values are allowed
        (:func:`batchmix.lmm.fit` fits each gene on its observed samples).
    samples : pandas.DataFrame
        Sample sheet indexed by sample id, with the formula's columns.
    formula : str
        lme4-style formula, e.g. ``"~ condition + (1|batch)"`` or ``"~ condition + batch"`` (no
        random term: ordinary least squares, R's ``lm``).
    levels : dict, optional
        Level order of categorical columns (the config's ``levels``); it sets the coefficients' names,
        not the likelihood.
    categorical : sequence of str
        Columns to treat as factors even when numeric (the config's batch).
    gene_status : pandas.Series, optional
        Gene id to the status an analysis gave it (``gene_fits.tsv``): genes whose status is not
        ``ok`` or ``singular`` are not refitted and keep it.
    label : str, optional
        How the progress messages name the fit (e.g. the analysis).
    block_genes : int
        Genes per call of the fitter; progress is logged after each block.

    Returns
    -------
    pandas.DataFrame
        One row per gene of ``expression``, in its order, columns :data:`IC_COLUMNS`: ``status``
        (the ML refit's: ``ok``, ``singular``, ``failed:<reason>``; or the status the gene had in
        ``gene_status`` when it was not fitted there), ``loglik_ml`` (lme4's ``logLik(fit)`` of
        ``lmer(..., REML = FALSE)``, or ``logLik(lm(...))``), ``n_params`` (its ``df``: fixed
        coefficients + variance parameters + 1), ``aic`` = −2 logLik + 2 df and ``bic`` = −2 logLik +
        log(n) df; NaN for genes not fitted.
    """
    samples = categorize(samples, levels=levels, categorical=list(categorical))
    status_in = None
    if gene_status is not None:
        prior = gene_status.reindex(expression.index).fillna("missing").astype(str)
        # lmm.fit fits the genes whose status is "ok": a singular fit under the analysis's own
        # criterion is refitted like any other
        status_in = prior.where(~prior.isin(FITTED_STATUSES), "ok")
    name = label or formula
    n_genes = len(expression)
    started = time.perf_counter()
    parts = []
    for g0 in range(0, max(n_genes, 1), block_genes):
        block = expression.iloc[g0 : g0 + block_genes]
        fit = lmm.fit(
            block,
            samples,
            formula,
            reml=False,
            gene_status=None if status_in is None else status_in.iloc[g0 : g0 + block_genes],
        )
        parts.append(fit.gene_fits)
        logger.info(
            "ML refit of %s: %d of %d genes (%.1f s)",
            name,
            min(n_genes, g0 + block_genes),
            n_genes,
            time.perf_counter() - started,
        )
    fits = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["gene_id", "status"])
    out = pd.DataFrame({"gene_id": fits["gene_id"].to_numpy(dtype=object), "status": fits["status"].astype(str)})
    for column in ("loglik", "aic", "bic"):
        values = fits[column] if column in fits.columns else pd.Series(np.nan, index=fits.index)
        out[{"loglik": "loglik_ml"}.get(column, column)] = pd.to_numeric(values, errors="coerce").to_numpy()
    fitted = out["status"].isin(FITTED_STATUSES).to_numpy() & np.isfinite(out["aic"].to_numpy())
    # lmm.fit's AIC is -2 logLik + 2 df, with df = p + m + 1 of the design the gene was fitted with
    df = np.rint((out["aic"].to_numpy() + 2.0 * out["loglik_ml"].to_numpy()) / 2.0)
    out["n_params"] = pd.array(np.where(fitted, df, np.nan), dtype="Int64")
    for column in ("loglik_ml", "aic", "bic"):
        out.loc[~fitted, column] = np.nan
    return out[IC_COLUMNS]


def _fitted(table: pd.DataFrame) -> pd.Series:
    return table["status"].isin(FITTED_STATUSES) & np.isfinite(table["aic"]) & np.isfinite(table["bic"])


def _pick(values: np.ndarray, names: list[str], tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the names within ``tolerance`` of the minimum (joined by ``|``), whether tied, the margin."""
    order = np.argsort(values, axis=1, kind="stable")
    lowest = np.take_along_axis(values, order[:, :1], axis=1)[:, 0]
    second = np.take_along_axis(values, order[:, 1:2], axis=1)[:, 0]
    near = values <= (lowest + tolerance)[:, None]
    best = np.array(["|".join(n for n, keep in zip(names, row) if keep) for row in near], dtype=object)
    return best, near.sum(axis=1) > 1, second - lowest


def best_models(ic_by_analysis: dict[str, pd.DataFrame], *, tolerance: float = TIE_TOLERANCE) -> pd.DataFrame:
    """Which analysis's model has the lowest AIC and the lowest BIC, gene by gene.

    Parameters
    ----------
    ic_by_analysis : dict of str to pandas.DataFrame
        Analysis name to its :func:`information_criteria` table (``gene_id``, ``status``, ``aic``,
        ``bic``), at least two, all on the same data.
    tolerance : float
        Criteria within this of the lowest tie (the same model in two analyses).

    Returns
    -------
    pandas.DataFrame
        One row per gene of any table (in the first table's order, then the genes only the others
        have), columns :data:`BEST_COLUMNS`:

        - ``status``: ``ok``; ``tie:aic``, ``tie:bic`` or ``tie:aic,bic`` when several models share
          the lowest criterion; ``not_fitted:<a>,<b>`` naming the analyses that did not fit the gene
          (or do not have it), which leaves the other columns empty;
        - ``best_aic``, ``best_bic``: the analysis with the lowest criterion (tied ones joined by ``|``);
        - ``delta_aic``, ``delta_bic``: the runner-up's criterion minus the lowest (≥ 0; 0 for a tie).

    Raises
    ------
    ValueError
        With fewer than two analyses.
    """
    names = list(ic_by_analysis)
    if len(names) < 2:
        raise ValueError(f"best_models compares at least two analyses; got {names}")
    genes = pd.Index(pd.unique(np.concatenate([t["gene_id"].to_numpy(dtype=object) for t in ic_by_analysis.values()])))
    aic = np.full((len(genes), len(names)), np.nan)
    bic = np.full_like(aic, np.nan)
    ok = np.zeros(aic.shape, dtype=bool)
    for j, name in enumerate(names):
        table = ic_by_analysis[name]
        if table["gene_id"].duplicated().any():
            raise ValueError(f"analysis {name!r}: gene ids repeat in its information criteria")
        rows = genes.get_indexer(table["gene_id"])
        aic[rows, j] = table["aic"].to_numpy(dtype=float)
        bic[rows, j] = table["bic"].to_numpy(dtype=float)
        ok[rows, j] = _fitted(table).to_numpy()
    complete = ok.all(axis=1)
    out = pd.DataFrame(
        {
            "gene_id": genes.to_numpy(dtype=object),
            "status": "ok",
            "best_aic": None,
            "delta_aic": np.nan,
            "best_bic": None,
            "delta_bic": np.nan,
        }
    )
    missing = ["not_fitted:" + ",".join(n for n, good in zip(names, row) if not good) for row in ok[~complete]]
    out.loc[~complete, "status"] = missing
    if complete.any():
        best_a, tie_a, delta_a = _pick(aic[complete], names, tolerance)
        best_b, tie_b, delta_b = _pick(bic[complete], names, tolerance)
        status = np.where(tie_a & tie_b, "tie:aic,bic", np.where(tie_a, "tie:aic", np.where(tie_b, "tie:bic", "ok")))
        out.loc[complete, "status"] = status
        out.loc[complete, "best_aic"] = best_a
        out.loc[complete, "delta_aic"] = np.where(tie_a, 0.0, delta_a)
        out.loc[complete, "best_bic"] = best_b
        out.loc[complete, "delta_bic"] = np.where(tie_b, 0.0, delta_b)
    return out[BEST_COLUMNS]


def win_counts(best: pd.DataFrame, analyses: list[str], *, close: float = CLOSE_DELTA) -> dict:
    """Genes won by each analysis under AIC and BIC, from a :func:`best_models` table.

    Parameters
    ----------
    best : pandas.DataFrame
        From :func:`best_models`.
    analyses : list of str
        The analyses compared, in the order to report them.
    close : float
        A win by less than this (ΔAIC or ΔBIC to the runner-up) is counted as close as well.

    Returns
    -------
    dict
        ``n_genes`` (rows), ``n_compared`` (genes every analysis fitted), ``n_not_fitted``, and per
        criterion (``aic``, ``bic``): ``wins`` (analysis to genes where it alone has the lowest
        criterion, every analysis listed), ``ties`` (genes with a tie for the lowest), ``close``
        (wins by less than ``close``), ``median_delta`` (median margin of the wins, None without wins).
    """
    compared = ~best["status"].astype(str).str.startswith("not_fitted")
    out: dict = {
        "n_genes": int(len(best)),
        "n_compared": int(compared.sum()),
        "n_not_fitted": int((~compared).sum()),
    }
    for criterion in ("aic", "bic"):
        winner = best.loc[compared, f"best_{criterion}"].astype(str)
        delta = best.loc[compared, f"delta_{criterion}"].astype(float)
        tied = winner.str.contains("|", regex=False)
        counts = winner[~tied].value_counts()
        wins_delta = delta[~tied]
        out[criterion] = {
            "wins": {name: int(counts.get(name, 0)) for name in analyses},
            "ties": int(tied.sum()),
            "close": int((wins_delta < close).sum()),
            "median_delta": round(float(wins_delta.median()), 6) if len(wins_delta) else None,
        }
    return out


def _calls(table: pd.DataFrame, fdr: float) -> pd.DataFrame:
    """Per gene id: tested (fitted, finite q), called (q ≤ fdr) and q."""
    q = pd.to_numeric(table["q"], errors="coerce")
    tested = table["status"].isin(FITTED_STATUSES) & q.notna()
    return pd.DataFrame(
        {"tested": tested.to_numpy(), "called": (tested & (q <= fdr)).to_numpy(), "q": q.to_numpy()},
        index=pd.Index(table["gene_id"].astype(str), name="gene_id"),
    )


def _ordered(genes: pd.Index, q: pd.Series) -> list[str]:
    """``genes`` by ascending q, then gene id."""
    frame = pd.DataFrame({"gene_id": genes, "q": q.reindex(genes).to_numpy()})
    return frame.sort_values(["q", "gene_id"], kind="mergesort")["gene_id"].tolist()


def de_agreement(de_tables_by_analysis: dict[str, dict[str, pd.DataFrame]], fdr: float) -> pd.DataFrame:
    """The agreement of the DE calls of every pair of analyses, for every coefficient both test.

    Parameters
    ----------
    de_tables_by_analysis : dict of str to dict of str to pandas.DataFrame
        Analysis name to its DE tables by coefficient (``results/<name>/de/<coef>.tsv``: ``gene_id``,
        ``status``, ``q``, the mixed model's Benjamini–Hochberg q-value; :mod:`batchmix.de`).
    fdr : float
        A gene is called when its status is ``ok`` or ``singular`` and ``q ≤ fdr``.

    Returns
    -------
    pandas.DataFrame
        One row per pair (in the analyses' order) and shared coefficient (in the first analysis's
        order), columns :data:`AGREEMENT_COLUMNS`: ``n_genes`` (genes of either table),
        ``n_tested_both`` (tested in both: fitted with a q-value), of which ``n_both`` called in both,
        ``n_only_a`` / ``n_only_b`` in one only and ``n_neither`` in neither; ``n_not_tested``: genes
        not tested in at least one; ``genes_only_a`` / ``genes_only_b``: the disagreements, most
        significant first (by the calling analysis's q, then gene id).
    """
    rows = []
    names = list(de_tables_by_analysis)
    for a, b in combinations(names, 2):
        tables_a, tables_b = de_tables_by_analysis[a], de_tables_by_analysis[b]
        for coefficient in [c for c in tables_a if c in tables_b]:
            ca, cb = _calls(tables_a[coefficient], fdr), _calls(tables_b[coefficient], fdr)
            genes = ca.index.append(cb.index[~cb.index.isin(ca.index)])
            ca = ca.reindex(genes).fillna({"tested": False, "called": False})
            cb = cb.reindex(genes).fillna({"tested": False, "called": False})
            tested = ca["tested"].astype(bool) & cb["tested"].astype(bool)
            call_a = ca["called"].astype(bool) & tested
            call_b = cb["called"].astype(bool) & tested
            only_a, only_b = genes[(call_a & ~call_b).to_numpy()], genes[(call_b & ~call_a).to_numpy()]
            rows.append(
                {
                    "analysis_a": a,
                    "analysis_b": b,
                    "coefficient": coefficient,
                    "fdr": float(fdr),
                    "n_genes": int(len(genes)),
                    "n_tested_both": int(tested.sum()),
                    "n_both": int((call_a & call_b).sum()),
                    "n_only_a": int(len(only_a)),
                    "n_only_b": int(len(only_b)),
                    "n_neither": int((tested & ~call_a & ~call_b).sum()),
                    "n_not_tested": int((~tested).sum()),
                    "genes_only_a": _ordered(only_a, ca["q"]),
                    "genes_only_b": _ordered(only_b, cb["q"]),
                }
            )
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
