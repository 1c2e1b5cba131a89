"""The index page of a config's analyses (``results/index.html``): one row per analysis, the model comparison.

:func:`build_index` renders what the ``compare`` stage computed (``compare/summary.json``,
``compare/best_models.tsv``, ``compare/de_agreement.tsv``; :mod:`batchmix.pipeline.compare`) with the
Jinja2 template ``templates/index.html``: a table of the analyses with a relative link to each
report, and per group of analyses on the same data the AIC/BIC win counts, two figures
(:mod:`batchmix.plots.compare`), sentences that say what to conclude, and the agreement of the DE
calls. Like the report it is one file: figures as PNG ``data:`` URIs, the CSS inline, no network
resource, so it opens offline.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from batchmix.plots.compare import plot_delta_distribution, plot_model_wins
from batchmix.plots.style import png_bytes
from batchmix.report.render import TEMPLATES, data_uri, template_environment

__all__ = ["INDEX_TEMPLATE", "SHOWN_GENES", "agreement_sentences", "build_index", "index_context", "group_sentences"]

log = logging.getLogger(__name__)

#: The page's template, next to the report's.
INDEX_TEMPLATE = "index.html"
#: Genes of each disagreement listed in the page (the TSV holds all).
SHOWN_GENES = 10


def _pct(x: float) -> str:
    """A share as a percentage: whole percents, one decimal where rounding would hide a few genes (0.5%, 99.5%)."""
    return f"{100 * x:.1f}%" if 0 < x < 0.01 or 0.99 < x < 1 else f"{100 * x:.0f}%"


def _share(value) -> str:
    return "NA" if value is None or (isinstance(value, float) and not np.isfinite(value)) else _pct(float(value))


def _figure(name: str, fig, caption: str, alt: str) -> dict:
    return {"name": name, "src": data_uri(png_bytes(fig), "image/png"), "caption": caption, "alt": alt}


def _leader(counts: dict, criterion: str) -> tuple[str | None, int]:
    wins = counts[criterion]["wins"]
    if not wins or max(wins.values()) == 0:
        return None, 0
    name = max(wins, key=lambda k: (wins[k], -list(wins).index(k)))
    return name, wins[name]


def group_sentences(group: dict) -> list[str]:
    """What to conclude from one group's comparison, in words (from its counts in ``compare/summary.json``).

    Parameters
    ----------
    group : dict
        One entry of ``groups`` of ``compare/summary.json`` with ``compared`` true.

    Returns
    -------
    list of str
        Which model AIC and BIC prefer and for what share of the genes compared, whether they
        agree, how many wins are close (Δ < 2), and how many genes were left out.
    """
    models = group["models"]
    n = group["n_compared"]
    if n == 0:
        return ["No gene was fitted by every analysis of this data, so no model could be compared."]
    out = []
    leaders = {}
    for criterion in ("aic", "bic"):
        name, wins = _leader(group, criterion)
        leaders[criterion] = name
        label = criterion.upper()
        if name is None:
            out.append(f"{label} picks no single model: every gene is a tie.")
            continue
        others = sorted(
            ((w, k) for k, w in group[criterion]["wins"].items() if k != name and w > 0), key=lambda t: (-t[0], t[1])
        )
        rest = "; ".join(f"{models[k]} ({k}) for {_pct(w / n)}" for w, k in others)
        out.append(
            f"{label} prefers {models[name]} ({name}) for {_pct(wins / n)} of the {n:,} genes every analysis "
            f"fitted" + (f"; {rest}" if rest else "") + "."
        )
    if leaders["aic"] and leaders["bic"] and leaders["aic"] != leaders["bic"]:
        out.append(
            "AIC and BIC disagree: BIC charges log(n) per parameter instead of 2, so it favours the model with "
            "fewer parameters; prefer the model that both rank well, or the one the question needs."
        )
    elif leaders["aic"]:
        out.append("AIC and BIC agree on the model most genes prefer.")
    for criterion in ("aic", "bic"):
        close = group[criterion]["close"]
        if close:
            out.append(
                f"For {_pct(close / n)} of the genes the best model wins by less than 2 {criterion.upper()} units: "
                "no clear preference for those."
            )
            break
    ties = group["aic"]["ties"]
    if ties:
        out.append(f"{ties:,} genes have the same AIC under several analyses (the same model fitted twice).")
    if group["n_not_fitted"]:
        out.append(
            f"{group['n_not_fitted']:,} genes are left out because some analysis did not fit them "
            "(filtered or failed; the status column of best_models.tsv names the analyses)."
        )
    return out


def _de_cell(de: dict) -> list[str]:
    """One line per coefficient: its DE genes under the analysis's model."""
    if not de:
        return ["NA"]
    return [f"{coef}: {entry['n_significant_lmm']:,}" for coef, entry in de.items()]


def _analysis_rows(analyses: list[dict]) -> list[dict]:
    rows = []
    for a in analyses:
        verdict = a.get("verdict") or {}
        genes = a.get("genes") or {}
        reversals = a.get("simpson_reversals")
        rows.append(
            {
                "name": a["name"],
                "report": a["report"],
                "data": a["data"],
                "model": a["model"],
                "method": "REML" if a.get("reml") else "ML",
                "genes_fitted": f"{genes['fitted']:,}" if genes else "NA",
                "genes_in": f"of {genes['in']:,}" if genes else "",
                "batch_effect": verdict.get("batch_effect") or "NA",
                "recommendation": (verdict.get("recommendation") or "NA").replace("_", " "),
                "verdict_text": verdict.get("text") or "",
                "batch_fraction": _share(a.get("batch_fraction_median")),
                "lrt_share": _share(a.get("lrt_share_q05")),
                "de": _de_cell(a.get("de") or {}),
                "reversals": "not run" if reversals is None else f"{reversals:,}",
            }
        )
    return rows


def agreement_sentences(agreement: pd.DataFrame, group: str) -> list[str]:
    """One sentence per pair of analyses: how far their DE calls agree over the shared coefficients,
    and the coefficient where they differ most (the table below the sentences has every coefficient)."""
    rows = agreement[agreement["group"] == group]
    out = []
    for (a, b), pair in rows.groupby(["analysis_a", "analysis_b"], sort=False):
        tested = pair["n_tested_both"].astype(int)
        differ = pair["n_only_a"].astype(int) + pair["n_only_b"].astype(int)
        shares = 1.0 - differ / tested.where(tested > 0)
        worst = pair.loc[differ.idxmax()]
        fdr = float(pair["fdr"].iloc[0])
        span = (
            _share(shares.min()) if shares.min() == shares.max() else f"{_share(shares.min())}–{_share(shares.max())}"
        )
        only = f"{int(worst['n_only_a']):,} genes called only by {a}, {int(worst['n_only_b']):,} only by {b}"
        if len(pair) == 1:
            sentence = (
                f"{a} and {b} make the same DE call (q ≤ {fdr:g}) on {worst['coefficient']} for {span} of the genes"
            )
            out.append(
                sentence + (f": {only}." if int(differ.max()) else ": no gene is called by one and not the other.")
            )
            continue
        sentence = (
            f"{a} and {b} make the same DE call (q ≤ {fdr:g}) for {span} of the genes, over each of the "
            f"{len(pair)} shared coefficients"
        )
        if int(differ.max()) == 0:
            out.append(sentence + ": no gene is called by one and not the other.")
            continue
        out.append(sentence + f"; they differ most on {worst['coefficient']}: {only}.")
    return out


def _agreement_rows(agreement: pd.DataFrame, group: str) -> list[dict]:
    rows = []
    for r in agreement[agreement["group"] == group].itertuples(index=False):
        lists = {}
        for side in ("a", "b"):
            text = getattr(r, f"genes_only_{side}")
            genes = [] if pd.isna(text) or text == "" else str(text).split(",")
            shown = ", ".join(genes[:SHOWN_GENES]) + (
                f" … ({len(genes) - SHOWN_GENES:,} more)" if len(genes) > SHOWN_GENES else ""
            )
            lists[side] = shown
        tested = int(r.n_tested_both)
        agree = int(r.n_both) + int(r.n_neither)
        rows.append(
            {
                "a": r.analysis_a,
                "b": r.analysis_b,
                "coefficient": r.coefficient,
                "n_tested": f"{tested:,}",
                "n_both": f"{int(r.n_both):,}",
                "n_only_a": f"{int(r.n_only_a):,}",
                "n_only_b": f"{int(r.n_only_b):,}",
                "n_neither": f"{int(r.n_neither):,}",
                "agree": _share(agree / tested) if tested else "NA",
                "genes_only_a": lists["a"],
                "genes_only_b": lists["b"],
            }
        )
    return rows


def _group_context(group: dict, best: pd.DataFrame, agreement: pd.DataFrame) -> dict:
    context = {
        "name": group["name"],
        "data": group["data"],
        "analyses": group["analyses"],
        "models": group["models"],
        "compared": bool(group.get("compared")),
        "notes": list(group.get("notes", [])),
        "figures": [],
        "wins": [],
        "sentences": [],
        "agreement": [],
        "agreement_sentences": [],
    }
    if not context["compared"]:
        return context
    labels = {name: f"{name}: {group['models'][name]}" for name in group["analyses"]}
    context["n_compared"] = f"{group['n_compared']:,}"
    context["n_genes"] = f"{group['n_genes']:,}"
    context["wins"] = [
        {
            "name": name,
            "model": group["models"][name],
            "aic": f"{group['aic']['wins'][name]:,}",
            "bic": f"{group['bic']['wins'][name]:,}",
        }
        for name in group["analyses"]
    ]
    context["ties"] = {"aic": f"{group['aic']['ties']:,}", "bic": f"{group['bic']['ties']:,}"}
    context["sentences"] = group_sentences(group)
    wins = {c.upper(): group[c]["wins"] for c in ("aic", "bic")}
    ties = {c.upper(): group[c]["ties"] for c in ("aic", "bic")}
    context["figures"].append(
        _figure(
            f"{group['name']}-wins",
            plot_model_wins(labels, wins, ties),
            "Genes for which each model has the lowest AIC and the lowest BIC (all models fitted by maximum "
            "likelihood, so that models with different fixed effects are comparable).",
            "Bar chart of the genes won by each model under AIC and BIC",
        )
    )
    rows = best[(best["group"] == group["name"]) & ~best["status"].astype(str).str.startswith("not_fitted")]
    if len(rows):
        context["figures"].append(
            _figure(
                f"{group['name']}-delta-aic",
                plot_delta_distribution(
                    rows["delta_aic"].to_numpy(dtype=float), rows["best_aic"].astype(str).tolist(), labels
                ),
                "By how much each gene's best model wins: the runner-up's AIC minus the lowest, coloured by the "
                "winning model. Left of the dashed line (ΔAIC < 2) the preference is weak.",
                "Histogram of the AIC margin of the best model per gene",
            )
        )
    context["agreement"] = _agreement_rows(agreement, group["name"])
    context["agreement_sentences"] = agreement_sentences(agreement, group["name"])
    return context


def index_context(summary: dict, best: pd.DataFrame, agreement: pd.DataFrame) -> dict:
    """Everything ``templates/index.html`` shows, from the compare stage's outputs.

    Parameters
    ----------
    summary : dict
        ``compare/summary.json``.
    best : pandas.DataFrame
        ``compare/best_models.tsv``.
    agreement : pandas.DataFrame
        ``compare/de_agreement.tsv`` (disagreeing genes joined by ``,``).

    Returns
    -------
    dict
        ``title``, ``analyses`` (the rows), ``groups`` (per group: counts, figures, sentences,
        agreement rows) and ``files`` (links to the compare tables, relative to the page).
    """
    return {
        "title": "batchmix: comparison of the analyses",
        "analyses": _analysis_rows(summary["analyses"]),
        "groups": [_group_context(g, best, agreement) for g in summary["groups"]],
        "files": summary.get("files", {}),
    }


def build_index(summary: dict, best: pd.DataFrame, agreement: pd.DataFrame, html_path: str | Path) -> None:
    """Render the index page into ``html_path`` (self-contained; links to the reports are relative).

    Parameters
    ----------
    summary, best, agreement
        As :func:`index_context` takes them.
    html_path : str or Path
        The page (``results/index.html``): the reports' links in ``summary`` are relative to its folder.
    """
    env = template_environment()
    context = index_context(summary, best, agreement)
    page = env.get_template(INDEX_TEMPLATE).render(css=(TEMPLATES / "report.css").read_text(), **context)
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(page)
    log.info("wrote %s: %d analyses, %d groups", html_path, len(context["analyses"]), len(context["groups"]))
