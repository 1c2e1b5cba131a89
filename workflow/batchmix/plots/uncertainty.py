"""Figures of the Uncertainty section: a gene's posterior, its parametric-bootstrap band, the h² distribution.

The functions take what :mod:`batchmix.uncertainty` computed (draws, fits, summaries) and return
:class:`matplotlib.figure.Figure` objects; they never read files nor touch pyplot's global state.
Save them with :func:`batchmix.plots.style.save_png`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["plot_bootstrap_band", "plot_heritability", "plot_posterior", "plot_posterior_intervals"]


def plot_posterior(
    draws: pd.DataFrame,
    coef_names: list[str],
    summary: pd.DataFrame | None = None,
    *,
    gene_id: str = "",
    sd_name: str = "sd_b",
):
    """Marginal posteriors of one gene: fixed effects, σ, σ_b and the ICC.

    Parameters
    ----------
    draws : pandas.DataFrame
        Exact posterior draws of that gene (:func:`batchmix.uncertainty.posterior_draws`:
        columns ``b_<coef>``, ``sigma``, ``sd``, ``ICC``), behind the histograms.
    coef_names : list of str
        Fixed-effect names (``PosteriorResult.grids[gene_id][1]``).
    summary : pandas.DataFrame, optional
        That gene's rows of ``PosteriorResult.summary``: the 2.5/50/97.5% quantiles are drawn
        as vertical lines and the mean printed.
    gene_id : str
        Title.
    sd_name : str
        Label of σ_b (e.g. ``sd_Subject__Intercept``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    params = [f"b_{c}" for c in coef_names] + ["sigma", "sd", "ICC"]
    labels = {"sd": sd_name}
    ncol = min(3, len(params))
    nrow = int(math.ceil(len(params) / ncol))
    fig = Figure(figsize=(4.0 * ncol, 2.8 * nrow), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    rows = summary.set_index("param") if summary is not None and len(summary) else None
    for ax, p in zip(axes, params):
        v = draws[p].to_numpy()
        lo, hi = np.quantile(v, [0.0005, 0.9995])
        ax.hist(v, bins=80, range=(lo, hi), density=True, color="#8fb3d9", edgecolor="none")
        key = sd_name if p == "sd" else p
        if rows is not None and key in rows.index and np.isfinite(rows.loc[key, "q50"]):
            r = rows.loc[key]
            for c, style in (("q2.5", ":"), ("q50", "-"), ("q97.5", ":")):
                if c in r:
                    ax.axvline(r[c], color="#1f3b73", linestyle=style, linewidth=1.2)
            ax.set_title(
                f"{labels.get(p, p)}: mean {r['mean']:.4g}, 95% [{r['q2.5']:.4g}, {r['q97.5']:.4g}]", fontsize=9
            )
        else:
            ax.set_title(labels.get(p, p), fontsize=9)
        ax.set_yticks([])
    for ax in axes[len(params) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"{gene_id}: exact grid posterior (one variance component)" if gene_id else "exact grid posterior", fontsize=10
    )
    return fig


def _numeric_fixed_covariate(formula: str, samples: pd.DataFrame, coef_names: list[str]) -> str | None:
    for c in coef_names:
        if c in samples.columns and pd.api.types.is_numeric_dtype(samples[c]):
            return c
    return None


def _plot_level_band(yv, g_labels, levels, b, b0, beta, prepared, draws, alpha, level, group, gene_id):
    """Band figure without a numeric covariate: values adjusted for the other fixed effects, by level."""
    from matplotlib.figure import Figure

    names = list(prepared.fixed_names)
    X = prepared.X
    other = X @ beta - (b0 * X[:, names.index("Intercept")] if "Intercept" in names else 0.0)
    adjusted = yv - other if len(other) == len(yv) else yv
    fig = Figure(figsize=(max(6.0, 0.45 * len(levels) + 3), 4.8), layout="constrained")
    ax = fig.subplots()
    d0 = draws["b_Intercept"].to_numpy() if "b_Intercept" in draws else np.full(len(draws), np.nan)
    if np.isfinite(d0).any():
        lo, hi = np.nanquantile(d0, [alpha, 1 - alpha])
        ax.axhspan(
            lo,
            hi,
            color="#e6a04d",
            alpha=0.35,
            label=f"{100 * level:g}% bootstrap band of the intercept ({np.isfinite(d0).sum()} refits)",
        )
    ax.axhline(b0, color="#b35900", linewidth=2, label="population intercept β̂₀")
    rng = np.random.default_rng(0)
    for j, lv in enumerate(levels):
        sel = g_labels == lv
        if not sel.any():
            continue
        ax.scatter(
            j + rng.uniform(-0.15, 0.15, sel.sum()),
            adjusted[sel],
            s=8,
            color="#777777",
            alpha=0.6,
            label="values adjusted for the other fixed effects" if j == 0 else None,
        )
        ax.plot(
            [j - 0.3, j + 0.3],
            [adjusted[sel].mean()] * 2,
            color="#d62728",
            linestyle="--",
            label=f"{group} mean (OLS, fixed {group})" if j == 0 else None,
        )
        ax.plot(
            [j - 0.3, j + 0.3],
            [b0 + b[j, 0]] * 2,
            color="#1f77b4",
            linewidth=2,
            label="BLUP β̂₀ + b" if j == 0 else None,
        )
    ax.set_xticks(np.arange(len(levels)), levels, rotation=90, fontsize=7)
    ax.set_xlabel(group)
    ax.set_ylabel(gene_id or "value")
    ax.legend(fontsize=8)
    ax.set_title(
        f"{gene_id}: per-{group} means (OLS) against BLUPs, intercept with its bootstrap band"
        if gene_id
        else "per-level means against BLUPs",
        fontsize=10,
    )
    return fig


def plot_bootstrap_band(
    y: pd.Series,
    samples: pd.DataFrame,
    draws: pd.DataFrame,
    fit: dict,
    *,
    x: str | None = None,
    level: float = 0.95,
    gene_id: str = "",
    max_panels: int = 24,
):
    """The population fit with its bootstrap band, and per-group OLS lines against BLUP lines.

    Parameters
    ----------
    y : pandas.Series
        The gene's values, indexed by sample id.
    samples : pandas.DataFrame
        Sample sheet indexed by sample id.
    draws : pandas.DataFrame
        The gene's bootstrap replicates (``BootstrapResult.draws[gene_id]``).
    fit : dict
        Its original fit (``BootstrapResult.fits[gene_id]``: ``beta``, ``b``, ``fixed_names``,
        ``prepared``).
    x : str, optional
        Numeric covariate on the x axis (default: the first numeric fixed effect, e.g. ``Days``).
        Without one, a single panel shows the values adjusted for the other fixed effects by
        level, each level's OLS mean against its BLUP, and the intercept's bootstrap band.
    level : float
        Band coverage (percentile band of the replicates' population line).
    gene_id : str
        Title.
    max_panels : int
        At most this many groups get a small panel (the first levels in order).

    Returns
    -------
    matplotlib.figure.Figure
        Left: data, population line ``Xβ̂`` (other covariates at 0 / their reference level) and the
        percentile band of the bootstrap replicates' lines. Right: one panel per level of the
        first grouping factor with its data, its own OLS line (dashed) and its BLUP line (solid,
        population + conditional modes), the population line in grey.
    """
    from matplotlib.figure import Figure

    prepared = fit["prepared"]
    names = list(fit["fixed_names"])
    beta = np.asarray(fit["beta"], dtype=float)
    block = prepared.random.blocks[0]
    group = block.group
    obs = [s for s in y.index if s in samples.index and np.isfinite(y[s])]
    yv = y[obs].to_numpy(dtype=float)
    sheet = samples.loc[obs]
    if x is None:
        x = _numeric_fixed_covariate("", sheet, names)
    g_labels = (
        sheet[group.split(":")[0]]
        .map(lambda v: str(int(v)) if isinstance(v, float) and float(v).is_integer() else str(v))
        .to_numpy()
    )
    levels = list(block.levels)
    b = np.asarray(fit["b"], dtype=float)[: block.n_levels * block.n_terms].reshape(block.n_levels, block.n_terms)
    alpha = (1.0 - level) / 2.0
    b0 = beta[names.index("Intercept")] if "Intercept" in names else 0.0
    if x is None:
        return _plot_level_band(yv, g_labels, levels, b, b0, beta, prepared, draws, alpha, level, group, gene_id)
    fig = Figure(figsize=(12, 5.2), layout="constrained")
    sub = fig.subfigures(1, 2, width_ratios=[1, 1.5])
    ax = sub[0].subplots()
    xv = sheet[x].to_numpy(dtype=float)
    bx = beta[names.index(x)]
    grid_x = np.linspace(xv.min(), xv.max(), 50)
    d0 = draws["b_Intercept"].to_numpy() if "Intercept" in names else np.zeros(len(draws))
    dx = draws[f"b_{x}"].to_numpy()
    ok = np.isfinite(d0) & np.isfinite(dx)
    lines = d0[ok, None] + dx[ok, None] * grid_x[None, :]
    lo, hi = np.quantile(lines, [alpha, 1 - alpha], axis=0)
    ax.scatter(xv, yv, s=10, color="#777777", alpha=0.6, label="data")
    ax.fill_between(
        grid_x, lo, hi, color="#e6a04d", alpha=0.35, label=f"{100 * level:g}% bootstrap band ({ok.sum()} refits)"
    )
    ax.plot(grid_x, b0 + bx * grid_x, color="#b35900", linewidth=2, label="population fit Xβ̂")
    ax.set_xlabel(x)
    ax.set_ylabel(gene_id or "value")
    ax.legend(fontsize=8)
    ax.set_title("population fit and parametric-bootstrap band", fontsize=10)
    shown = levels[:max_panels]
    ncol = int(math.ceil(math.sqrt(len(shown) * 1.5)))
    nrow = int(math.ceil(len(shown) / ncol))
    axes = sub[1].subplots(nrow, ncol, sharex=True, sharey=True, squeeze=False).ravel()
    terms = list(block.terms)
    for a, lv in zip(axes, shown):
        sel = g_labels == lv
        j = levels.index(lv)
        xs = sheet[x].to_numpy(dtype=float)[sel]
        a.scatter(xs, yv[sel], s=8, color="#555555")
        gx = np.array([grid_x.min(), grid_x.max()])
        a.plot(gx, b0 + bx * gx, color="#bbbbbb", linewidth=1)
        if sel.sum() >= 2 and np.ptp(xs) > 0:
            slope, icpt = np.polyfit(xs, yv[sel], 1)
            a.plot(gx, icpt + slope * gx, color="#d62728", linestyle="--", linewidth=1)
        bi = b[j, terms.index("Intercept")] if "Intercept" in terms else 0.0
        bs = b[j, terms.index(x)] if x in terms else 0.0
        a.plot(gx, (b0 + bi) + (bx + bs) * gx, color="#1f77b4", linewidth=1.3)
        a.set_title(lv, fontsize=7, pad=2)
        a.tick_params(labelsize=6)
    for a in axes[len(shown) :]:
        a.set_visible(False)
    extra = f" (first {len(shown)} of {len(levels)})" if len(levels) > len(shown) else ""
    sub[1].suptitle(f"per-{group} OLS (red, dashed) against BLUP (blue) lines{extra}", fontsize=10)
    if gene_id:
        fig.suptitle(gene_id, fontsize=11)
    return fig


def plot_posterior_intervals(rows: pd.DataFrame, *, gene_id: str = "") -> "Figure":  # noqa: F821
    """One gene's posterior summaries as intervals (the importance-sampling engine has no draws to show).

    Parameters
    ----------
    rows : pandas.DataFrame
        That gene's rows of the posterior table (``param``, ``mean``, ``q2.5``, ``q50``, ``q97.5``).
    gene_id : str
        Title.

    Returns
    -------
    matplotlib.figure.Figure
        Three panels: fixed effects; σ and the random-effect SDs; correlations and variance
        fractions (on [−1, 1]). Dot: posterior median; cross: mean; bar: the 95 % interval.
    """
    from matplotlib.figure import Figure

    from .style import GRID_COLOUR

    groups = [
        ("fixed effects", rows[rows["param"].str.startswith("b_")]),
        ("SDs", rows[(rows["param"] == "sigma") | rows["param"].str.startswith("sd_")]),
        (
            "correlations and variance fractions",
            rows[rows["param"].str.startswith(("cor_", "frac_")) | (rows["param"] == "ICC")],
        ),
    ]
    groups = [(title, g) for title, g in groups if len(g)]
    fig = Figure(figsize=(4.2 * len(groups), 0.45 * max(len(g) for _, g in groups) + 1.6), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (title, g) in zip(axes, groups):
        y = np.arange(len(g))[::-1]
        ax.hlines(y, g["q2.5"], g["q97.5"], color="tab:blue", lw=2)
        ax.plot(g["q50"], y, "o", color="tab:blue", label="median")
        ax.plot(g["mean"], y, "x", color="black", label="mean")
        ax.set_yticks(y, list(g["param"]))
        ax.set_title(title)
        ax.grid(axis="x", color=GRID_COLOUR)
        if title.startswith("correlations"):
            ax.set_xlim(-1.05, 1.05)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"{gene_id}: posterior medians, means and 95% intervals" if gene_id else "posterior")
    return fig


def plot_heritability(h2: np.ndarray, se_h2: np.ndarray | None = None, *, lrt_p: np.ndarray | None = None):
    """Distribution of the per-gene heritability h² of a ``(1 | kinship)`` model.

    Parameters
    ----------
    h2 : numpy.ndarray
        Per-gene h² (the ``h2`` column of ``results/lmm/gene_fits.tsv``; NaN ignored).
    se_h2 : numpy.ndarray, optional
        Their standard errors: a second panel shows h² against its SE.
    lrt_p : numpy.ndarray, optional
        The kinship LRT p-values: genes with p < 0.05 are stacked in another colour.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    from .style import GRID_COLOUR

    h2 = np.asarray(h2, dtype=float)
    keep = np.isfinite(h2)
    ncol = 2 if se_h2 is not None else 1
    fig = Figure(figsize=(4.6 * ncol, 3.4), layout="constrained")
    axes = fig.subplots(1, ncol, squeeze=False)[0]
    bins = np.linspace(0.0, 1.0, 26)
    ax = axes[0]
    if lrt_p is not None:
        sig = keep & (np.asarray(lrt_p, dtype=float) < 0.05)
        ax.hist(
            [h2[keep & ~sig], h2[sig]],
            bins=bins,
            stacked=True,
            color=["0.6", "tab:blue"],
            label=["kinship LRT p ≥ 0.05", "p < 0.05"],
        )
        ax.legend(fontsize=8)
    else:
        ax.hist(h2[keep], bins=bins, color="tab:blue")
    ax.set_xlabel("h² = σ²_kinship / (σ²_kinship + σ² + other random variances)")
    ax.set_ylabel("genes")
    ax.set_title(
        f"heritability of {int(keep.sum())} genes (median {np.median(h2[keep]) if keep.any() else np.nan:.2f})"
    )
    ax.grid(axis="y", color=GRID_COLOUR)
    if se_h2 is not None:
        se = np.asarray(se_h2, dtype=float)
        ok = keep & np.isfinite(se)
        axes[1].plot(h2[ok], se[ok], ".", ms=3, alpha=0.5, color="tab:blue")
        axes[1].set_xlabel("h²")
        axes[1].set_ylabel("standard error of h²")
        axes[1].set_xlim(-0.02, 1.02)
        axes[1].grid(color=GRID_COLOUR)
    return fig
