"""The report's conclusions: the verdict, the design check, DE with and without batch, and the gene search.

Each function turns what a stage wrote (``results/summary.json``, ``results/design/design.json``,
``results/de/``) into the context of one part of the page; nothing is computed here that a stage
did not compute, except the compact gene table of the search box (:func:`gene_search_table`).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from batchmix.de import FITTED_STATUSES
from batchmix.design import formula_columns, level_label, parse_formula, sanitize_name
from batchmix.plots.de import plot_volcano
from batchmix.report.render import Figures, table

__all__ = [
    "BATCH_EFFECT_TEXT",
    "DESIGN_TEXT",
    "verdict_section",
    "design_section",
    "de_section",
    "gene_search_table",
    "gene_search_section",
]

#: How each batch-effect class reads on the page, and its card style.
BATCH_EFFECT_TEXT = {
    "none": ("none", "ok"),
    "weak": ("weak", "ok"),
    "moderate": ("moderate", "warn"),
    "strong": ("strong", "bad"),
    "not_assessed": ("not assessed", ""),
}
#: How each design class reads on the page, and its card style.
DESIGN_TEXT = {
    "ok": ("ok", "ok"),
    "confounded": ("confounded", "bad"),
    "not_identifiable": ("not identifiable", "bad"),
    "few_batches": ("too few batches", "warn"),
}
_SEVERITY_ORDER = ("error", "warning", "note")


def _pct(value) -> str:
    return "NA" if value is None else f"{100 * value:.1f}%"


def verdict_section(config: dict, tables: dict) -> dict:
    """The "Verdict" section: three cards, the paragraph, the recommendation and the numbers behind them."""
    summary = tables.get("summary")
    if summary is None:
        return {"available": False}
    verdict, figures = summary["verdict"], summary["figures"]
    before, after = figures.get("batch_r2_before") or [], figures.get("batch_r2_after") or []
    rows = [
        ("batch column", figures.get("batch") or "none"),
        ("batches", figures.get("n_batches")),
        ("fitted genes", f"{figures.get('n_fitted', 0):,}"),
        ("median batch share of variance", _pct(figures.get("batch_fraction_median"))),
        ("90th percentile of the batch share", _pct(figures.get("batch_fraction_p90"))),
        ("genes whose batch LRT has q < 0.05", _pct(figures.get("lrt_share_q05"))),
        ("singular fits", _pct(figures.get("singular_share"))),
        ("batch R² of PC1, PC2 before correction", ", ".join(_pct(v) for v in before[:2]) or "NA"),
        ("batch R² of PC1, PC2 after correction", ", ".join(_pct(v) for v in after[:2]) or "NA"),
    ]
    confounded = "; ".join(f"{c['factor']} in {', '.join(map(str, c['batches']))}" for c in figures["confounded"])
    if confounded:
        rows.append(("confounded (factor in batches)", confounded))
    effect_text, effect_style = BATCH_EFFECT_TEXT.get(verdict["batch_effect"], (verdict["batch_effect"], ""))
    design_text, design_style = DESIGN_TEXT.get(verdict["design"], (verdict["design"], ""))
    return {
        "available": True,
        "batch_effect": effect_text,
        "batch_effect_style": effect_style,
        "design": design_text,
        "design_style": design_style,
        "recommendation": verdict["recommendation"],
        "recommendation_meaning": verdict.get("recommendation_meaning", ""),
        "text": verdict["text"],
        "rows": rows,
        "de": [
            _with_contrast(name, entry["sentence"], config, tables) for name, entry in summary.get("de", {}).items()
        ],
    }


def _with_contrast(name: str, sentence: str, config: dict, tables: dict) -> str:
    """The DE sentence with what its coefficient compares, when the sheet and the model say."""
    samples = tables.get("samples")
    contrast = contrast_text(name, samples, config["model"]) if samples is not None and "model" in config else ""
    return f"{sentence.rstrip('.')} ({contrast})." if contrast else sentence


def design_section(config: dict, tables: dict) -> dict:
    """The "Design check" section: findings by severity, crosstabs with Cramér's V, random terms."""
    design = tables.get("design")
    if design is None:
        return {"available": False}
    findings = sorted(design["findings"], key=lambda f: _SEVERITY_ORDER.index(f["severity"]))
    crosstabs = []
    for factor in design["factors"]:
        frame = pd.DataFrame(factor["crosstab"]).T.reindex(columns=factor["levels"])
        frame.index.name = design["batch"]
        frame = frame.reset_index()
        single = set(factor["single_level_batches"])
        v = factor["cramers_v"]
        crosstabs.append(
            {
                "column": factor["column"],
                "cramers_v": "NA" if v is None else f"{v:.2f}",
                "confounded": factor["confounded"],
                "single": sorted(single),
                "table": table(
                    frame,
                    f"crosstab_{factor['column']}",
                    f"Samples per {design['batch']} and {factor['column']}",
                    shown=None,
                ),
            }
        )
    random_rows = pd.DataFrame(
        [
            {
                "grouping": t["group"],
                "terms": ", ".join(t["terms"]),
                "levels": t["n_levels"],
                "min obs/level": t["obs_per_level"]["min"],
                "median obs/level": t["obs_per_level"]["median"],
                "max obs/level": t["obs_per_level"]["max"],
                "identifiable": "yes" if t["identifiable"] else f"no ({t.get('reason') or ''})",
            }
            for t in design["random_terms"]
        ]
    )
    return {
        "available": True,
        "findings": findings,
        "n_by_severity": {s: sum(f["severity"] == s for f in findings) for s in _SEVERITY_ORDER},
        "crosstabs": crosstabs,
        "random": table(random_rows, "random_terms", "Random terms", shown=None) if len(random_rows) else None,
        "residual_df": design["residual_df"],
        "n_samples": design["n_samples"],
        "batch": design["batch"],
    }


def contrast_text(coefficient: str, samples: pd.DataFrame, formula: str) -> str:
    """What a coefficient compares, in words: ``"trt against the reference level untrt of dex"``.

    Factor levels are in the order the models used (the sheet as read by
    :func:`batchmix.pipeline.validate.load_samples`: ``levels`` and the batch categorical, other text
    sorted); a numeric column is a slope. Empty when the coefficient is not a main effect.
    """
    fixed = parse_formula(formula).fixed
    columns = formula_columns("~ " + fixed) if fixed.strip() != "1" else []
    for column in columns:
        values = samples[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            levels = [str(c) for c in values.cat.remove_unused_categories().cat.categories]
        elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            if sanitize_name(column) == coefficient:
                return f"the slope per unit of {column}"
            continue
        else:
            levels = sorted({level_label(v) for v in values.dropna()})
        for level in levels[1:]:
            if sanitize_name(column + level) == coefficient:
                return f"{level} against the reference level {levels[0]} of {column}"
    return ""


def de_section(config: dict, tables: dict, figures: Figures) -> dict:
    """The "Differential expression with and without batch" section, one block per coefficient."""
    de_summary = tables.get("de_summary")
    if de_summary is None:
        return {"available": False, "coefficients": []}
    fdr = de_summary["fdr"]
    blocks = []
    for i, (name, entry) in enumerate(de_summary["coefficients"].items(), start=1):
        frame = tables["de_tables"].get(name)
        block = {
            "name": name,
            "contrast": contrast_text(name, tables["samples"], config["model"]),
            "sentence": entry["sentence"],
            "counts": [
                ("tested (fitted genes)", entry["n_tested"]),
                ("significant without the batch (OLS)", entry["n_significant_ols"]),
                ("significant with the batch (mixed model)", entry["n_significant_lmm"]),
                ("significant in both", entry["n_both"]),
                ("lost when the batch is accounted for", entry["n_lost"]),
                ("gained when the batch is accounted for", entry["n_gained"]),
            ],
            "lost": entry["lost_genes"],
            "gained": entry["gained_genes"],
            "n_lost": entry["n_lost"],
            "n_gained": entry["n_gained"],
            "figure": None,
            "changed": None,
        }
        if frame is not None and frame["change"].notna().any():
            fig = plot_volcano(frame, name, fdr=fdr)
            caption = (
                f"Volcano plots of {name}: each fitted gene's log fold change and p-value under OLS ignoring the "
                f"batch (left) and under the mixed model accounting for it (right), coloured by its call at "
                f"q ≤ {fdr:g} (Benjamini–Hochberg over the fitted genes)."
            )
            block["figure"] = figures.add(f"volcano_{i}", fig, caption, f"Volcano plots of {name}")
            changed = frame[frame["change"].isin(["lmm_only", "ols_only"])].copy()
            changed = changed.sort_values(["change", "p"], kind="mergesort")
            changed["change"] = changed["change"].map({"lmm_only": "gained", "ols_only": "lost"})
            block["changed"] = table(
                changed[["gene_id", "change", "logfc", "q", "ols_logfc", "ols_q", "ave_expr"]],
                f"de_changed_{i}",
                f"Genes whose call for {name} changes when the batch is accounted for",
                download_rows=10_000,
                full_path=f"results/de/{name}.tsv",
                sortable=True,
            )
        blocks.append(block)
    return {"available": True, "fdr": fdr, "coefficients": blocks}


#: The gene search's embedded table stops adding coefficients' DE rows beyond this many bytes.
SEARCH_TABLE_BUDGET = 4_500_000


def _rounded(values, digits: int) -> list:
    """Numbers to ``digits`` decimals (integers when ``digits`` is 0); missing values ``None``."""
    values = np.asarray(values, dtype=float)
    # Python's round on Python floats (correctly rounded, as before), over plain lists: a loop over
    # numpy scalars cost the report a tenth of a second.
    pairs = zip(values.tolist(), np.isfinite(values).tolist())
    if digits == 0:
        return [round(v) if finite else None for v, finite in pairs]
    return [round(v, digits) if finite else None for v, finite in pairs]


def _minus_log10(values) -> list:
    """p- and q-values as −log10, 2 decimals (the page shows 10^−x to 2 significant digits)."""
    values = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = -np.log10(np.clip(values, 1e-300, 1.0))
    return _rounded(np.where(np.isfinite(values), scores, np.nan), 2)


def _size(obj) -> int:
    return len(json.dumps(obj, separators=(",", ":"), allow_nan=False))


def gene_search_table(
    gene_fits: pd.DataFrame,
    de_tables: dict,
    *,
    fraction_labels: dict[str, str],
    budget: int = SEARCH_TABLE_BUDGET,
) -> dict:
    """The compact table behind the gene search box: fitted genes only, rounded values, column-wise.

    Parameters
    ----------
    gene_fits : pandas.DataFrame
        ``results/lmm/gene_fits.tsv``.
    de_tables : dict of str to pandas.DataFrame
        ``results/de/<coef>.tsv`` by coefficient.
    fraction_labels : dict of str to str
        Variance-fraction column → its label on the page (``frac_Batch`` → ``Batch``).
    budget : int
        Bytes (as JSON) beyond which no further coefficient's DE rows are added; the coefficients
        left out are listed in ``omitted``, and the page says so.

    Returns
    -------
    dict
        ``genes`` (ids of the fitted genes), ``status`` (0 ok, 1 singular), ``fractions`` (label →
        per mille, integers), ``lrt`` (−log10 of the batch LRT p-value, 2 decimals), ``de``
        (coefficient → ``logfc`` and ``ols_logfc`` to 2 decimals, ``q`` and ``ols_q`` as −log10 to 2
        decimals, ``change`` as an index into ``change_codes``), ``omitted`` and ``not_fitted``
        (status → gene ids), so that every input gene is found.
    """
    status = gene_fits["status"].astype(str)
    fitted = gene_fits[status.isin(FITTED_STATUSES)]
    ids = fitted["gene_id"].astype(str).tolist()
    out: dict = {
        "genes": ids,
        "status": [0 if s == "ok" else 1 for s in fitted["status"]],
        "fractions": {
            label: _rounded(1000 * fitted[column].to_numpy(dtype=float), 0)
            for column, label in fraction_labels.items()
            if column in fitted
        },
        "lrt": _minus_log10(fitted["lrt_p"]) if "lrt_p" in fitted else None,
        "change_codes": ["both", "lmm_only", "ols_only", "neither"],
        "de": {},
        "omitted": [],
        "not_fitted": {},
    }
    for state, group in gene_fits[~status.isin(FITTED_STATUSES)].groupby("status", sort=True):
        out["not_fitted"][str(state)] = group["gene_id"].astype(str).tolist()
    size = _size(out)
    for name, frame in de_tables.items():
        rows = frame.set_index(frame["gene_id"].astype(str)).reindex(ids)
        codes = rows["change"].map({c: i for i, c in enumerate(out["change_codes"])})
        block = {
            "logfc": _rounded(rows["logfc"], 2),
            "q": _minus_log10(rows["q"]),
            "ols_logfc": _rounded(rows["ols_logfc"], 2),
            "ols_q": _minus_log10(rows["ols_q"]),
            "change": [None if pd.isna(c) else int(c) for c in codes],
        }
        extra = _size({name: block})
        if size + extra > budget:
            out["omitted"].append(name)
            continue
        out["de"][name] = block
        size += extra
    return out


def gene_search_section(gene_fits: pd.DataFrame, de_tables: dict, *, fraction_labels: dict[str, str]) -> dict:
    """The search box's embedded data (JSON safe inside ``<script>``) and its size, stated on the page."""
    data = gene_search_table(gene_fits, de_tables, fraction_labels=fraction_labels)
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    example = data["genes"][0] if data["genes"] else ""
    return {
        "json": text,
        "n_genes": len(data["genes"]),
        "bytes": len(text.encode()),
        "example": example,
        "omitted": data["omitted"],
    }
