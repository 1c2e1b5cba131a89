"""The report's conclusions: the verdict and design sections, and the gene search's embedded table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from batchmix.report.conclusions import design_section, gene_search_section, gene_search_table, verdict_section

SUMMARY = {
    "verdict": {
        "batch_effect": "strong",
        "design": "confounded",
        "recommendation": "do_not_correct_confounded",
        "recommendation_meaning": "do not batch-correct",
        "text": "Batch effect: strong. Design: confounded.",
    },
    "figures": {
        "batch": "Batch",
        "n_batches": 4,
        "n_fitted": 1234,
        "batch_fraction_median": 0.5,
        "batch_fraction_p90": 0.9,
        "lrt_share_q05": 0.25,
        "singular_share": 0.0,
        "batch_r2_before": [0.9, 0.5, 0.1],
        "batch_r2_after": [0.01, 0.02],
        "confounded": [{"factor": "Infection", "batches": ["Series1", "Series2"]}],
    },
    "de": {"InfectionX": {"sentence": "Accounting for batch, 3 genes lose and 4 gain significance for InfectionX."}},
}


def test_verdict_section_shows_the_classes_the_numbers_and_the_confounded_batches():
    section = verdict_section({}, {"summary": SUMMARY})
    assert (section["batch_effect"], section["batch_effect_style"]) == ("strong", "bad")
    assert section["design"] == "confounded"
    rows = dict(section["rows"])
    assert rows["fitted genes"] == "1,234"
    assert rows["median batch share of variance"] == "50.0%"
    assert rows["batch R² of PC1, PC2 after correction"] == "1.0%, 2.0%"
    assert rows["confounded (factor in batches)"] == "Infection in Series1, Series2"
    assert section["de"] == ["Accounting for batch, 3 genes lose and 4 gain significance for InfectionX."]
    assert verdict_section({}, {"summary": None}) == {"available": False}


def test_design_section_orders_findings_by_severity_and_keeps_the_crosstab():
    design = {
        "batch": "Batch",
        "n_samples": 8,
        "residual_df": 4,
        "findings": [
            {"code": "nested_in_batch", "severity": "note", "message": "n"},
            {"code": "confounded", "severity": "warning", "message": "w"},
        ],
        "factors": [
            {
                "column": "Infection",
                "levels": ["Mock", "SARS"],
                "crosstab": {"b1": {"Mock": 4, "SARS": 0}, "b2": {"Mock": 2, "SARS": 2}},
                "cramers_v": 0.57735,
                "single_level_batches": ["b1"],
                "confounded": True,
            }
        ],
        "random_terms": [
            {
                "group": "Batch",
                "terms": ["Intercept"],
                "n_levels": 2,
                "obs_per_level": {"min": 4, "median": 4.0, "max": 4},
                "identifiable": True,
                "reason": None,
            }
        ],
    }
    section = design_section({}, {"design": design})
    assert [f["code"] for f in section["findings"]] == ["confounded", "nested_in_batch"]
    (crosstab,) = section["crosstabs"]
    assert crosstab["cramers_v"] == "0.58" and crosstab["single"] == ["b1"]
    assert crosstab["table"]["columns"] == ["Batch", "Mock", "SARS"]
    assert crosstab["table"]["rows"][0] == ["b1", "4", "0"]
    assert section["random"]["rows"][0][:3] == ["Batch", "Intercept", "2"]


def _synthetic(n_genes: int, n_coefficients: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    status = np.where(rng.random(n_genes) < 0.7, "ok", "filtered:low_counts")
    status[:50] = "singular"
    frac = rng.dirichlet([1, 1, 1], size=n_genes)
    fits = pd.DataFrame(
        {
            "gene_id": ids,
            "status": status,
            "frac_Condition": frac[:, 0],
            "frac_Batch": frac[:, 1],
            "frac_residual": frac[:, 2],
            "lrt_p": rng.random(n_genes) ** 3,
        }
    )
    tables = {}
    for k in range(n_coefficients):
        fitted = np.isin(status, ["ok", "singular"])
        tables[f"Condition{k}"] = pd.DataFrame(
            {
                "gene_id": ids,
                "logfc": np.where(fitted, rng.normal(size=n_genes), np.nan),
                "q": np.where(fitted, rng.random(n_genes), np.nan),
                "ols_logfc": np.where(fitted, rng.normal(size=n_genes), np.nan),
                "ols_q": np.where(fitted, rng.random(n_genes), np.nan),
                "change": np.where(fitted, rng.choice(["both", "lmm_only", "ols_only", "neither"], n_genes), None),
            }
        )
    return fits, tables


LABELS = {"frac_Condition": "Condition", "frac_Batch": "Batch", "frac_residual": "Residuals"}


def test_gene_search_table_holds_fitted_genes_rounded_and_lists_the_others_by_status():
    fits, tables = _synthetic(300, 1)
    data = gene_search_table(fits, tables, fraction_labels=LABELS)
    fitted = fits[fits["status"].isin(["ok", "singular"])]
    assert data["genes"] == fitted["gene_id"].tolist()
    assert data["status"][:50] == [1] * 50
    i = 60
    assert data["fractions"]["Batch"][i] == round(1000 * float(fitted["frac_Batch"].iloc[i]))
    assert abs(10 ** -data["lrt"][i] / fitted["lrt_p"].iloc[i] - 1) < 0.012  # -log10 to 2 decimals
    row = tables["Condition0"].set_index("gene_id").loc[data["genes"][i]]
    assert data["de"]["Condition0"]["logfc"][i] == round(row["logfc"], 2)
    assert data["change_codes"][data["de"]["Condition0"]["change"][i]] == row["change"]
    assert data["omitted"] == []
    assert sorted(data["not_fitted"]["filtered:low_counts"]) == sorted(
        fits.loc[fits["status"] == "filtered:low_counts", "gene_id"]
    )


def test_the_embedded_table_of_60000_genes_stays_under_5_mb():
    fits, tables = _synthetic(60_000, 2)
    section = gene_search_section(fits, tables, fraction_labels=LABELS)
    json.loads(section["json"].replace("<\\/", "</"))
    print(f"embedded gene table, 60,000 genes (70% fitted), 2 coefficients: {section['bytes'] / 1e6:.2f} MB")
    assert section["bytes"] < 5_000_000 and section["omitted"] == []
    assert "</" not in section["json"]


def test_beyond_the_budget_coefficients_are_left_out_and_named():
    fits, tables = _synthetic(60_000, 6)
    fits["status"] = "ok"
    section = gene_search_section(fits, tables, fraction_labels=LABELS)
    print(f"embedded gene table, 60,000 fitted genes, 6 coefficients: {section['bytes'] / 1e6:.2f} MB")
    assert section["bytes"] < 5_000_000
    data = json.loads(section["json"].replace("<\\/", "</"))
    assert 1 <= len(data["de"]) < 6
    assert section["omitted"] == [f"Condition{k}" for k in range(len(data["de"]), 6)]


def test_contrast_text_names_the_level_and_the_reference_in_the_models_order():
    from batchmix.design import categorize
    from batchmix.report.conclusions import contrast_text

    sheet = pd.DataFrame({"dex": ["trt", "untrt", "trt", "untrt"], "dose": [1.0, 2.0, 3.0, 4.0]})
    formula = "~ dex + dose + (1|b)"
    assert contrast_text("dexuntrt", sheet, formula) == "untrt against the reference level trt of dex"
    assert contrast_text("dose", sheet, formula) == "the slope per unit of dose"
    relevelled = categorize(sheet, levels={"dex": ["untrt", "trt"]})
    assert contrast_text("dextrt", relevelled, formula) == "trt against the reference level untrt of dex"
    assert contrast_text("dexuntrt", relevelled, formula) == ""
