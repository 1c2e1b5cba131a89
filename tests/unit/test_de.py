"""batchmix.de: the OLS columns against limma 3.54 (tests/data/limma_de/), the LMM columns, change and summary."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix import de, lmm, moderate
from batchmix.de import CHANGE_CLASSES, DE_COLUMNS, de_coefficients, de_summary, differential_expression, limma_fit
from batchmix.io import read_matrix, read_result_table

DATA = Path(__file__).resolve().parents[1] / "data" / "limma_de"
MODEL = "~ strain + (1|experiment.number)"


def _bh_reference(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg written out (step-up, running minimum from the largest p down)."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    m = p.size
    ranked = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    q = np.empty(m)
    q[order] = q_sorted
    return q


@pytest.fixture(scope="module")
def data():
    expression = read_matrix(DATA / "bottomly_logcpm.tsv.gz")
    samples = read_result_table(DATA / "bottomly_samples.tsv").set_index("sample_id")
    fitted = (DATA / "fitted_genes.txt").read_text().split()
    # the genes generate.R left out of lmFit are the ones batchmix would have filtered
    status = pd.Series("filtered:low_counts", index=expression.index)
    status[fitted] = "ok"
    return expression, samples, fitted, status


def _gene_fits(expression, samples, status, formula, *, trend=False, robust=False):
    fit = lmm.fit(expression, samples, formula, gene_status=status)
    return moderate.moderate_gene_fits(
        fit.gene_fits, trend=trend, robust=robust, mean_expression=expression.mean(axis=1)
    )


@pytest.fixture(scope="module")
def strain_fits(data):
    expression, samples, _, status = data
    return _gene_fits(expression, samples, status, MODEL)


def _reference(name):
    return read_result_table(DATA / name).set_index("gene_id")


@pytest.mark.parametrize("case", ["plain", "trend", "robust"])
def test_ols_columns_equal_limma(data, case):
    expression, samples, fitted, status = data
    gene_fits = _gene_fits(expression, samples, status, MODEL, trend=case == "trend", robust=case == "robust")
    tables = differential_expression(
        gene_fits,
        expression,
        samples,
        formula=MODEL,
        batch="experiment.number",
        moderate={"enabled": True, "trend": case == "trend", "robust": case == "robust"},
    )
    assert list(tables) == ["strainDBA_2J"]
    table = tables["strainDBA_2J"].set_index("gene_id")
    ref = _reference(f"strain_{case}.tsv.gz")
    got = table.loc[fitted]
    assert np.max(np.abs(got["ols_t"] - ref["t_strainDBA_2J"])) < 1e-6
    assert np.max(np.abs(got["ols_p"] - ref["p_strainDBA_2J"])) < 1e-6
    assert np.max(np.abs(got["ols_logfc"] - ref["coef_strainDBA_2J"])) < 1e-8
    assert np.max(np.abs(got["ols_df"] - ref["df_total"])) < 1e-6
    assert np.max(np.abs(got["ols_q"] - ref["q_strainDBA_2J"])) < 1e-6
    # ave_expr is limma's Amean (mean over the observed samples), for every gene
    assert np.max(np.abs(got["ave_expr"] - ref["amean"])) < 1e-9
    filtered = table.loc[table["status"].str.startswith("filtered")]
    assert len(filtered) == len(table) - len(fitted)
    assert filtered[["ols_t", "ols_p", "ols_q", "t", "p", "q"]].isna().all().all()
    assert filtered["ave_expr"].notna().all()


def test_every_input_gene_once_in_order_with_the_lmm_columns(data, strain_fits):
    expression, samples, fitted, _ = data
    table = differential_expression(strain_fits, expression, samples, formula=MODEL, batch="experiment.number")[
        "strainDBA_2J"
    ]
    assert list(table.columns) == DE_COLUMNS
    assert list(table["gene_id"]) == list(expression.index)
    ok = table["status"].isin(["ok", "singular"]).to_numpy()
    assert ok.sum() == len(fitted)
    fits = strain_fits.set_index("gene_id").loc[table["gene_id"]]
    np.testing.assert_array_equal(table["logfc"].to_numpy()[ok], fits["coef_strainDBA_2J"].to_numpy()[ok])
    np.testing.assert_array_equal(table["t"].to_numpy()[ok], fits["t_mod_strainDBA_2J"].to_numpy()[ok])
    np.testing.assert_array_equal(table["df"].to_numpy()[ok], fits["df_total"].to_numpy()[ok])
    np.testing.assert_array_equal(table["p"].to_numpy()[ok], fits["p_mod_strainDBA_2J"].to_numpy()[ok])
    np.testing.assert_allclose(table["q"].to_numpy()[ok], _bh_reference(table["p"].to_numpy()[ok]), rtol=1e-12)
    # change follows the two q-values at the FDR
    sig_lmm, sig_ols = table["q"] <= 0.05, table["ols_q"] <= 0.05
    expected = np.select([sig_lmm & sig_ols, sig_lmm, sig_ols], ["both", "lmm_only", "ols_only"], "neither")
    assert list(table["change"][ok]) == list(expected[ok])
    assert table["change"][~ok].isna().all()
    assert set(table["change"].dropna()) <= set(CHANGE_CLASSES)


def test_without_moderation_uses_satterthwaite_and_ordinary_t(data):
    expression, samples, fitted, status = data
    fit = lmm.fit(expression, samples, MODEL, gene_status=status)
    table = differential_expression(
        fit.gene_fits, expression, samples, formula=MODEL, batch="experiment.number", moderate={"enabled": False}
    )["strainDBA_2J"].set_index("gene_id")
    ref = _reference("strain_plain.tsv.gz")
    got = table.loc[fitted]
    assert np.max(np.abs(got["ols_t"] - ref["t_ord_strainDBA_2J"])) < 1e-6
    assert np.max(np.abs(got["ols_p"] - ref["p_ord_strainDBA_2J"])) < 1e-6
    fits = fit.gene_fits.set_index("gene_id").loc[fitted]
    np.testing.assert_array_equal(got["p"], fits["p_strainDBA_2J"])
    np.testing.assert_array_equal(got["df"], fits["df_strainDBA_2J"])


def test_levels_change_the_coefficient_name_and_sign(data, strain_fits):
    expression, samples, fitted, status = data
    formula = "~ strain + lane.number + (1|experiment.number)"
    levels = {"strain": ["DBA/2J", "C57BL/6J"]}
    relevelled = samples.copy()
    relevelled["strain"] = pd.Categorical(samples["strain"], categories=levels["strain"])
    gene_fits = _gene_fits(expression, relevelled, status, formula)
    tables = differential_expression(
        gene_fits, expression, samples, formula=formula, batch="experiment.number", levels=levels
    )
    assert list(tables) == ["strainC57BL_6J", "lane.number"]
    ref = _reference("relevel_plain.tsv.gz")
    for name in tables:
        got = tables[name].set_index("gene_id").loc[fitted]
        assert np.max(np.abs(got["ols_t"] - ref[f"t_{name}"])) < 1e-6
        assert np.max(np.abs(got["ols_p"] - ref[f"p_{name}"])) < 1e-6
    # with only the strain in the model, the relevelled OLS effect is the default one with the sign flipped
    default = differential_expression(strain_fits, expression, samples, formula=MODEL, batch="experiment.number")[
        "strainDBA_2J"
    ]
    flipped = differential_expression(
        strain_fits.rename(columns=lambda c: c.replace("DBA_2J", "C57BL_6J")),
        expression,
        samples,
        formula=MODEL,
        batch="experiment.number",
        levels=levels,
    )["strainC57BL_6J"]
    ok = default["status"].isin(["ok", "singular"])
    np.testing.assert_allclose(flipped["ols_logfc"][ok], -default["ols_logfc"][ok], atol=1e-12)
    np.testing.assert_allclose(flipped["ols_p"][ok], default["ols_p"][ok], rtol=1e-10)


def test_batch_as_fixed_effect_is_left_out_of_ols_and_not_tested(data):
    expression, samples, fitted, status = data
    formula = "~ strain + experiment.number"
    as_text = samples.assign(**{"experiment.number": samples["experiment.number"].map(lambda v: str(v))})
    gene_fits = _gene_fits(expression, as_text, status, formula)
    tables = differential_expression(gene_fits, expression, samples, formula=formula, batch="experiment.number")
    assert list(tables) == ["strainDBA_2J"]
    got = tables["strainDBA_2J"].set_index("gene_id").loc[fitted]
    ref = _reference("strain_plain.tsv.gz")
    assert np.max(np.abs(got["ols_t"] - ref["t_strainDBA_2J"])) < 1e-6


def test_summary_counts_and_sentence():
    table = pd.DataFrame(
        {
            "gene_id": ["g1", "g2", "g3", "g4", "g5", "g6"],
            "p": [0.001, 0.2, 0.002, 0.5, np.nan, 0.003],
            "ols_p": [0.001, 0.001, 0.3, 0.5, np.nan, 0.4],
            "change": ["both", "ols_only", "lmm_only", "neither", None, "lmm_only"],
        }
    )
    summary = de_summary({"conditiontreated": table}, fdr=0.05)["conditiontreated"]
    assert summary["n_tested"] == 5
    assert (summary["n_significant_lmm"], summary["n_significant_ols"], summary["n_both"]) == (3, 2, 1)
    assert (summary["n_lost"], summary["n_gained"]) == (1, 2)
    assert summary["lost_genes"] == ["g2"]
    assert summary["gained_genes"] == ["g3", "g6"]
    assert summary["sentence"] == "Accounting for batch, 1 gene loses and 2 gain significance for conditiontreated."


def test_unknown_coefficient_is_refused(data, strain_fits):
    expression, samples, _, _ = data
    with pytest.raises(ValueError, match="coef_nosuch"):
        differential_expression(strain_fits, expression, samples, formula=MODEL, coefficients=["nosuch"])


def test_fdr_sets_the_calls_and_no_batch_uses_the_whole_fixed_part(data, strain_fits):
    expression, samples, fitted, _ = data
    strict = differential_expression(strain_fits, expression, samples, formula=MODEL, fdr=1e-6)["strainDBA_2J"]
    loose = differential_expression(strain_fits, expression, samples, formula=MODEL, fdr=0.2)["strainDBA_2J"]
    assert (strict["change"] == "neither").sum() > (loose["change"] == "neither").sum()
    assert ((strict["q"] <= 1e-6) == strict["change"].isin(["both", "lmm_only"])).all()
    # the batch is only a random term here, so batch=None gives the same OLS
    ref = _reference("strain_plain.tsv.gz")
    got = strict.set_index("gene_id").loc[fitted]
    assert np.max(np.abs(got["ols_t"] - ref["t_strainDBA_2J"])) < 1e-6


def test_de_coefficients_come_from_the_design_alone(data):
    _, samples, _, _ = data
    assert de_coefficients(MODEL, samples, batch="experiment.number") == ["strainDBA_2J"]
    assert de_coefficients(
        "~ strain + lane.number + experiment.number",
        samples,
        batch="experiment.number",
        levels={"strain": ["DBA/2J", "C57BL/6J"]},
    ) == ["strainC57BL_6J", "lane.number"]


def test_limma_fit_by_blocks_is_the_whole_fit():
    # every number of a gene depends on that gene alone (the moderation pools the vectors after), so
    # blocks of genes, which bound the de job's memory, give the whole fit's numbers: bit for bit
    # while the blocks' matrix products take BLAS's kernels for large matrices (the default blocks
    # hold 2^25 values), to the last bits otherwise (tiny blocks here)
    rng = np.random.default_rng(11)
    n, genes = 24, 203
    X = np.column_stack([np.ones(n), np.repeat([0.0, 1.0], n // 2), rng.normal(size=n)])
    Y = rng.normal(size=(genes, n)) + (X @ rng.normal(size=(3, genes))).T  # genes x samples
    Y[rng.random(Y.shape) < 0.05] = np.nan  # many missingness patterns
    Y[7] = np.nan  # a gene with nothing observed
    Y[8, 3:] = np.nan  # too few samples for every coefficient
    rows = rng.permutation(genes)[:150]
    whole = limma_fit(Y, X, rows=rows)
    np.testing.assert_array_equal(limma_fit(Y[rows], X)["p"], whole["p"])
    for block in (1, 7, 64):
        blocked = limma_fit(Y, X, rows=rows, block_genes=block)
        for key, value in whole.items():
            np.testing.assert_allclose(blocked[key], value, rtol=1e-12, atol=0, err_msg=f"{key}, block {block}")
    assert np.isnan(whole["coef"][list(rows).index(7)]).all()


@pytest.mark.parametrize("block_values", [None, 300 * 21])
def test_de_from_blocks_of_genes_gives_the_tables_of_the_whole_matrix(data, strain_fits, monkeypatch, block_values):
    # the de stage hands differential_expression the stabilised matrix as GeneBlocks (a block of genes
    # at a time): the tables are the whole matrix's, bit for bit with the default blocks (here one
    # block), to the last bits with blocks of 300 genes (small matrix products take BLAS's other kernels)
    from batchmix import de

    expression, samples, _, _ = data
    whole = differential_expression(strain_fits, expression, samples, formula=MODEL, batch="experiment.number")
    if block_values is not None:
        monkeypatch.setattr(de, "LM_BLOCK_GENES", 1)
        monkeypatch.setattr(de, "LM_BLOCK_VALUES", block_values)
    reads = []

    def read(n):
        reads.append(n)
        for start in range(0, len(expression), n):
            yield expression.iloc[start : start + n]

    blocks = de.GeneBlocks(index=expression.index, columns=expression.columns, read=read)
    streamed = differential_expression(strain_fits, blocks, samples, formula=MODEL, batch="experiment.number")
    assert list(streamed) == list(whole) and len(reads) == 1
    for name, table in whole.items():
        if block_values is None:
            pd.testing.assert_frame_equal(streamed[name], table, check_exact=True)
        else:
            assert reads == [300]
            pd.testing.assert_frame_equal(streamed[name], table, check_exact=False, rtol=1e-12, atol=0)
    # rows in another order than gene_fits: read whole and looked up
    shuffled = expression.iloc[::-1]
    blocks = de.GeneBlocks(
        index=shuffled.index,
        columns=shuffled.columns,
        read=lambda n: (shuffled.iloc[s : s + n] for s in range(0, len(shuffled), n)),
    )
    again = differential_expression(strain_fits, blocks, samples, formula=MODEL, batch="experiment.number")
    for name, table in whole.items():
        pd.testing.assert_frame_equal(again[name], table, check_exact=False, rtol=1e-12, atol=0)


@pytest.mark.parametrize("order", ["C", "F"])
def test_row_means_are_numpy_nanmean_bit_for_bit(order):
    rng = np.random.default_rng(3)
    for shape in [(40, 500), (3, 1), (5, 0), (0, 6)]:
        values = np.asarray(rng.normal(8, 2, shape) * 10.0 ** rng.integers(-3, 3, (shape[0], 1)), order=order)
        holes = values.copy(order=order)
        if holes.size:
            holes[1, 0], holes[2, -1] = np.nan, np.inf
            holes[0, :] = np.nan  # a gene with nothing observed: NaN, as limma
        for table in (values, holes):
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                finite = np.nanmean(np.where(np.isfinite(table), table, np.nan), axis=1)
                nan_only = np.nanmean(table, axis=1)
            np.testing.assert_array_equal(de.row_means(table, finite_only=True).view(np.uint64), finite.view(np.uint64))
            np.testing.assert_array_equal(
                de.row_means(table, finite_only=False).view(np.uint64), nan_only.view(np.uint64)
            )
