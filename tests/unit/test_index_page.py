"""The index page (batchmix.report.index) built from small hand-made compare outputs."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from batchmix.report.index import SHOWN_GENES, build_index, group_sentences

MODELS = {"random": "~ condition + (1|batch)", "fixed": "~ condition + batch", "plain": "~ condition"}


def _row(name: str, model: str, *, batch_effect: str, text: str, reversals, lrt) -> dict:
    return {
        "name": name,
        "group": "stabilise-abc",
        "data": "data/counts.tsv",
        "samples": "data/samples.tsv",
        "model": model,
        "reml": True,
        "batch": "batch",
        "report": f"{name}/report.html",
        "genes": {"in": 120, "fitted": 100, "singular": 3, "filtered": 20, "failed": 0},
        "verdict": {
            "batch_effect": batch_effect,
            "design": "ok",
            "recommendation": "model_batch_as_random",
            "text": text,
        },
        "batch_fraction_median": 0.4321,
        "lrt_share_q05": lrt,
        "de": {"conditiontreated": {"n_tested": 100, "n_significant_lmm": 17, "n_significant_ols": 9}},
        "de_fdr": 0.05,
        "simpson_reversals": reversals,
    }


def _group(aic_wins: dict, bic_wins: dict, *, close: int = 0, ties: int = 0) -> dict:
    return {
        "name": "stabilise-abc",
        "data": "data/counts.tsv",
        "samples": "data/samples.tsv",
        "analyses": list(MODELS),
        "models": dict(MODELS),
        "compared": True,
        "fdr": 0.05,
        "not_fitted": {"random": 20, "fixed": 20, "plain": 20},
        "notes": [],
        "n_genes": 120,
        "n_compared": 100,
        "n_not_fitted": 20,
        "aic": {"wins": aic_wins, "ties": ties, "close": close, "median_delta": 4.2},
        "bic": {"wins": bic_wins, "ties": ties, "close": 0, "median_delta": 6.0},
    }


@pytest.fixture()
def outputs():
    analyses = [
        _row("random", MODELS["random"], batch_effect="strong", text="Strong, sentinel-R.", reversals=4, lrt=0.8),
        _row("fixed", MODELS["fixed"], batch_effect="moderate", text="Moderate, sentinel-F.", reversals=None, lrt=None),
        _row("plain", MODELS["plain"], batch_effect="not_assessed", text="None, sentinel-P.", reversals=None, lrt=None),
    ]
    lonely = {
        "name": "stabilise-zzz",
        "data": "other/counts.tsv",
        "samples": "other/samples.tsv",
        "analyses": ["other"],
        "models": {"other": "~ x"},
        "compared": False,
        "notes": ["only one analysis of this data: no model comparison"],
    }
    summary = {
        "analyses": analyses,
        "groups": [_group({"random": 60, "fixed": 30, "plain": 10}, {"random": 71, "fixed": 9, "plain": 20}), lonely],
        "files": {"best_models": "compare/best_models.tsv", "index": "index.html"},
    }
    genes = [f"g{i}" for i in range(120)]
    winners = ["random"] * 60 + ["fixed"] * 30 + ["plain"] * 10
    best = pd.DataFrame(
        {
            "group": "stabilise-abc",
            "gene_id": genes,
            "status": ["ok"] * 100 + ["not_fitted:random,fixed,plain"] * 20,
            "best_aic": winners + [None] * 20,
            "delta_aic": [float(i % 17) for i in range(100)] + [None] * 20,
            "best_bic": winners + [None] * 20,
            "delta_bic": [float(i % 13) for i in range(100)] + [None] * 20,
        }
    )
    only = [f"d{i}" for i in range(SHOWN_GENES + 5)]
    agreement = pd.DataFrame(
        [
            ["stabilise-abc", "random", "fixed", "conditiontreated", 0.05, 120, 100, 12, len(only), 1, 72, 20,
             ",".join(only), "e1"],
            ["stabilise-abc", "random", "plain", "conditiontreated", 0.05, 120, 100, 9, 8, 0, 83, 20, "", ""],
        ],
        columns=["group", "analysis_a", "analysis_b", "coefficient", "fdr", "n_genes", "n_tested_both", "n_both",
                 "n_only_a", "n_only_b", "n_neither", "n_not_tested", "genes_only_a", "genes_only_b"],
    )  # fmt: skip
    return summary, best, agreement


def _page(tmp_path, outputs) -> str:
    html = tmp_path / "results" / "index.html"
    build_index(*outputs, html)
    return html.read_text()


def test_the_index_has_a_row_and_a_report_link_per_analysis(tmp_path, outputs):
    page = _page(tmp_path, outputs)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for name in MODELS:
        row = re.search(rf'<tr id="analysis-{name}">(.*?)</tr>', page, re.S)
        assert row, name
        assert f'<a href="{name}/report.html">' in row.group(1)
    random_row = re.search(r'<tr id="analysis-random">(.*?)</tr>', page, re.S).group(1)
    assert "~ condition + (1|batch)" in random_row
    assert ">100<br>" in random_row and "of 120" in random_row  # genes fitted
    assert ">strong<" in random_row and "model batch as random" in random_row
    assert ">43%<" in random_row and ">80%<" in random_row  # median batch fraction, LRT share
    assert "conditiontreated: 17" in random_row and ">4<" in random_row
    fixed_row = re.search(r'<tr id="analysis-fixed">(.*?)</tr>', page, re.S).group(1)
    assert "not run" in fixed_row and ">NA<" in fixed_row  # no Simpson scan, no LRT with a fixed batch
    for sentinel in ("sentinel-R", "sentinel-F", "sentinel-P"):
        assert sentinel in page  # each analysis's verdict text


def test_the_index_says_what_to_conclude(tmp_path, outputs):
    page = _page(tmp_path, outputs)
    # 71 of the 100 genes compared, from the hand-made counts
    assert "BIC prefers ~ condition + (1|batch) (random) for 71% of the 100 genes every analysis fitted" in page
    assert "AIC prefers ~ condition + (1|batch) (random) for 60%" in page
    assert "20 genes are left out" in page
    assert (
        "random and fixed make the same DE call (q ≤ 0.05) on conditiontreated for 84% of the genes: "
        "15 genes called only by random, 1 only by fixed." in page
    )
    assert "random and plain make the same DE call (q ≤ 0.05) on conditiontreated for 92% of the genes" in page
    # the first SHOWN_GENES genes of a disagreement, and how many more
    assert ", ".join(f"d{i}" for i in range(SHOWN_GENES)) + " … (5 more)" in page
    assert f"d{SHOWN_GENES}," not in page
    # the group with one analysis has no comparison section
    assert 'id="group-stabilise-abc"' in page and 'id="group-stabilise-zzz"' not in page


def test_the_index_is_self_contained(tmp_path, outputs):
    page = _page(tmp_path, outputs)
    images = re.findall(r'<img src="([^"]+)"', page)
    text = re.sub(r"data:[a-z/+-]+;base64,[A-Za-z0-9+/=]+", "DATA", page)
    assert not re.search(r"https?:|//[a-z]|url\(", text, re.I), "the page must not load anything from the network"
    assert len(images) == 2 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "<link" not in page and "<script src" not in page
    hrefs = re.findall(r'href="([^"#][^"]*)"', page)
    assert hrefs and all(not h.startswith("/") for h in hrefs)  # relative links only


def test_sentences_when_aic_and_bic_disagree():
    group = _group({"random": 10, "fixed": 80, "plain": 10}, {"random": 15, "fixed": 5, "plain": 80}, close=25)
    sentences = group_sentences(group)
    assert sentences[0].startswith("AIC prefers ~ condition + batch (fixed) for 80%")
    assert sentences[1].startswith("BIC prefers ~ condition (plain) for 80%")
    assert any(s.startswith("AIC and BIC disagree") for s in sentences)
    assert any("For 25% of the genes the best model wins by less than 2 AIC units" in s for s in sentences)


def test_sentences_without_compared_genes():
    group = _group({"random": 0, "fixed": 0, "plain": 0}, {"random": 0, "fixed": 0, "plain": 0})
    group["n_compared"] = 0
    assert group_sentences(group) == [
        "No gene was fitted by every analysis of this data, so no model could be compared."
    ]


def test_shares_near_0_and_100_percent_keep_a_decimal():
    group = _group({"random": 0, "fixed": 995, "plain": 5}, {"random": 0, "fixed": 1000, "plain": 0})
    group["n_compared"] = 1000
    sentences = group_sentences(group)
    assert sentences[0] == (
        "AIC prefers ~ condition + batch (fixed) for 99.5% of the 1,000 genes every analysis fitted; "
        "~ condition (plain) for 0.5%."
    )
    assert sentences[1].startswith("BIC prefers ~ condition + batch (fixed) for 100% of the 1,000 genes")
