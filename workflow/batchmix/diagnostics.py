"""Batch diagnostics of the samples: PCA of the most variable genes, the batch R² of the top components,
and the batch silhouette width, before and after batch correction.

The ``diagnostics`` stage (:mod:`batchmix.pipeline.summary`) runs these and writes
``results/diagnostics/pca.json`` and ``pca_scores.tsv``; the verdict quotes the batch R² and the report
draws the stored scores. Nothing here draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "PCA_TOP_GENES",
    "DIAGNOSTIC_COMPONENTS",
    "PCAResult",
    "pca",
    "batch_variance_share",
    "silhouette_widths",
    "batch_diagnostics",
]

# Genes used for PCA: the most variable ones, as DESeq2's plotPCA (ntop = 500).
PCA_TOP_GENES = 500
# Principal components summarised by the batch share of variance and the silhouette width.
DIAGNOSTIC_COMPONENTS = 10


@dataclass
class PCAResult:
    """Principal components of samples.

    Attributes
    ----------
    scores : pandas.DataFrame
        Samples × components (``PC1``, ``PC2``, …), the centred data projected on the components.
    variance_ratio : pandas.Series
        Share of the total variance (of the genes used) carried by each component.
    genes : list of str
        The genes used.
    """

    scores: pd.DataFrame
    variance_ratio: pd.Series
    genes: list[str] = field(default_factory=list)


def pca(expression: pd.DataFrame, genes: list[str] | None = None, n_top: int = PCA_TOP_GENES) -> PCAResult:
    """Principal component analysis of the samples, as DESeq2's ``plotPCA``.

    Each gene is centred (not scaled) and the samples are projected on the right singular
    vectors. Each component's sign is fixed so that its largest absolute gene loading is
    positive, which makes the result independent of the SVD implementation.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes × samples on a log-like scale.
    genes : list of str, optional
        Genes to use. Default: the ``n_top`` genes of largest variance among those with no
        missing value (ties broken by input order).
    n_top : int
        Number of most variable genes when ``genes`` is not given.

    Returns
    -------
    PCAResult
    """
    if genes is None:
        complete = expression.dropna(axis=0, how="any")
        variance = complete.var(axis=1, ddof=1)
        order = np.argsort(-variance.to_numpy(), kind="stable")[:n_top]
        genes = list(complete.index[order])
    data = expression.loc[genes].to_numpy(dtype=float)
    if not np.isfinite(data).all():
        raise ValueError("pca: the genes used have missing or infinite values")
    centred = data - data.mean(axis=1, keepdims=True)
    # Samples in rows: the left singular vectors scaled by the singular values are the scores.
    u, s, vt = np.linalg.svd(centred.T, full_matrices=False)
    n_comp = int(np.sum(s > s.max() * 1e-10)) if s.size and s.max() > 0 else 0
    u, s, vt = u[:, :n_comp], s[:n_comp], vt[:n_comp]
    for k in range(n_comp):
        if vt[k, np.argmax(np.abs(vt[k]))] < 0:
            u[:, k] *= -1
            vt[k] *= -1
    names = [f"PC{k + 1}" for k in range(n_comp)]
    scores = pd.DataFrame(u * s, index=expression.columns, columns=names)
    total = float(np.sum(centred**2))
    ratio = pd.Series(s**2 / total if total > 0 else np.zeros(n_comp), index=names)
    return PCAResult(scores=scores, variance_ratio=ratio, genes=list(genes))


def batch_variance_share(scores: pd.DataFrame, batch: pd.Series) -> pd.Series:
    """Share of each component's variance explained by the batch.

    The R² of a one-way ANOVA of the scores on the batch: between-batch sum of squares
    over total sum of squares, per column.

    Parameters
    ----------
    scores : pandas.DataFrame
        Samples × components.
    batch : pandas.Series
        Sample id → batch label (aligned on ``scores.index``).

    Returns
    -------
    pandas.Series
        One value in [0, 1] per component (NaN for a constant component).
    """
    labels = batch.reindex(scores.index).astype(str)
    values = scores.to_numpy(dtype=float)
    centred = values - values.mean(axis=0)
    total = np.sum(centred**2, axis=0)
    group_means = scores.groupby(labels.to_numpy(), sort=True).transform("mean").to_numpy()
    between = np.sum((group_means - values.mean(axis=0)) ** 2, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, between / total, np.nan)
    return pd.Series(share, index=scores.columns, name="batch_r2")


def silhouette_widths(points: np.ndarray, labels: np.ndarray | pd.Series) -> np.ndarray:
    """Silhouette width of every point for the given clusters (Rousseeuw 1987), Euclidean.

    ``s(i) = (b(i) - a(i)) / max(a(i), b(i))`` with ``a(i)`` the mean distance from ``i`` to
    the other members of its cluster and ``b(i)`` the smallest mean distance from ``i`` to
    the members of another cluster. A point alone in its cluster gets 0, as in R's
    ``cluster::silhouette`` and scikit-learn.

    Parameters
    ----------
    points : numpy.ndarray
        ``n × d`` coordinates (e.g. principal component scores).
    labels : array-like
        ``n`` cluster labels (e.g. batches); at least two distinct labels.

    Returns
    -------
    numpy.ndarray
        ``n`` widths in [-1, 1]; their mean is the average silhouette width.
    """
    points = np.asarray(points, dtype=float)
    labels = np.asarray(labels).astype(str)
    if points.ndim != 2 or points.shape[0] != labels.size:
        raise ValueError("silhouette_widths: points must be n x d with one label per row")
    levels, codes = np.unique(labels, return_inverse=True)
    if levels.size < 2:
        raise ValueError("silhouette_widths: needs at least two clusters")
    # imported here: the report imports this module for PCAResult and never computes a silhouette
    from scipy.spatial.distance import cdist

    distance = cdist(points, points)
    n = points.shape[0]
    sizes = np.bincount(codes, minlength=levels.size)
    # Sum of distances from each point to each cluster.
    sums = np.zeros((n, levels.size))
    for k in range(levels.size):
        sums[:, k] = distance[:, codes == k].sum(axis=1)
    own = sizes[codes]
    with np.errstate(invalid="ignore", divide="ignore"):
        a = sums[np.arange(n), codes] / (own - 1)
        mean_other = sums / sizes
    mean_other[np.arange(n), codes] = np.inf
    b = mean_other.min(axis=1)
    denominator = np.maximum(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        width = np.where(denominator > 0, (b - a) / denominator, 0.0)
    width[own == 1] = 0.0
    return width


def batch_diagnostics(
    expression: pd.DataFrame,
    batch: pd.Series,
    genes: list[str] | None = None,
    n_components: int = DIAGNOSTIC_COMPONENTS,
    *,
    components: PCAResult | None = None,
) -> dict[str, object]:
    """PCA, batch share of variance of the top components, and batch silhouette width.

    Parameters
    ----------
    expression : pandas.DataFrame
        Genes × samples.
    batch : pandas.Series
        Sample id → batch label.
    genes : list of str, optional
        Genes for the PCA (default: the most variable, see :func:`pca`).
    n_components : int
        Number of leading components summarised (fewer if the data have fewer).
    components : PCAResult, optional
        ``pca(expression, genes)`` when the caller has it already (the diagnostics stage computes
        it to choose the genes): not computed a second time.

    Returns
    -------
    dict
        ``pca`` (:class:`PCAResult`), ``share`` (batch R² per component, top components),
        ``weighted_share`` (the batch share of the variance of the top components: R² weighted
        by each component's variance), ``silhouette`` (the mean silhouette width of the batches
        in the space of the top components) and ``n_components``.
    """
    result = components if components is not None else pca(expression, genes=genes)
    k = min(n_components, result.scores.shape[1])
    top = result.scores.iloc[:, :k]
    share = batch_variance_share(top, batch)
    weights = result.variance_ratio.iloc[:k]
    weighted = float(np.nansum(share * weights) / weights.sum()) if weights.sum() > 0 else float("nan")
    labels = batch.reindex(top.index).astype(str).to_numpy()
    silhouette = float(np.mean(silhouette_widths(top.to_numpy(), labels))) if k > 0 else float("nan")
    return {"pca": result, "share": share, "weighted_share": weighted, "silhouette": silhouette, "n_components": k}
