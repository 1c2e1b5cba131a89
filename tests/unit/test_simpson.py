"""Tests of batchmix.simpson's pooled within-batch test (``within_test="pooled"``) and of what both
tests share, against brute-force references (scipy pairwise correlations, explicit sums,
statsmodels' multipletests) and planted truth.  The random-effects test: test_simpson_random_effects.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix import simpson
from batchmix.defaults import DEFAULT_SEED
from scipy import stats
from statsmodels.stats.multitest import multipletests

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- data


def planted_data(
    seed: int,
    n_genes: int = 300,
    n_planted: int = 20,
    n_batches: int = 6,
    per_batch: int = 20,
    batch_sd: float = 1.5,
):
    """Null genes: independent within batch, random batch means.  Planted pairs
    (genes 2k, 2k+1): batch means move together (or opposite), within-batch
    correlation of the opposite sign.  Returns (frame, batch, planted set)."""
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(n_batches), per_batch)
    n = codes.size
    values = rng.standard_normal((n_genes, n)) + batch_sd * rng.standard_normal((n_genes, n_batches))[:, codes]
    planted = set()
    for k in range(n_planted):
        sign = 1.0 if k % 2 == 0 else -1.0  # half pooled-positive, half pooled-negative
        means = 2.0 * rng.standard_normal(n_batches)
        # fix the realised spread of the batch means, so that every planted pair
        # has a strong between-batch part whatever the draw
        means = 2.0 * (means - means.mean()) / means.std()
        noise = rng.standard_normal((2, n))
        values[2 * k] = means[codes] + noise[0]
        values[2 * k + 1] = sign * means[codes] - sign * (0.7 * noise[0] + 0.7 * noise[1])
        planted.add((f"g{2 * k:03d}", f"g{2 * k + 1:03d}"))
    samples = [f"s{i:03d}" for i in range(n)]
    frame = pd.DataFrame(values, index=[f"g{i:03d}" for i in range(n_genes)], columns=samples)
    batch = pd.Series([f"batch{c}" for c in codes], index=samples, name="batch")
    return frame, batch, planted


def brute_force(frame: pd.DataFrame, batch: pd.Series, covariates: np.ndarray | None = None):
    """Every pair, one gene at a time with scipy.stats.pearsonr; p from the
    documented formula with scipy.stats.norm.  Returns a DataFrame of all pairs."""
    values = frame.to_numpy(float)
    n = values.shape[1]
    labels = batch.reindex(frame.columns)
    indicators = pd.get_dummies(labels).to_numpy(float)
    if covariates is None:
        # batch-centred values, written out as a groupby (independent of the QR route)
        within = (frame.T - frame.T.groupby(labels.to_numpy()).transform("mean")).T.to_numpy(float)
        pooled = values
        df_pooled, df_within = n - 3, n - indicators.shape[1] - 2
    else:
        design_pooled = np.column_stack([np.ones(n), covariates])
        design_within = np.column_stack([indicators, covariates])
        pooled = values - (np.linalg.lstsq(design_pooled, values.T, rcond=None)[0].T @ design_pooled.T)
        within = values - (np.linalg.lstsq(design_within, values.T, rcond=None)[0].T @ design_within.T)
        df_pooled = n - np.linalg.matrix_rank(design_pooled) - 2
        df_within = n - np.linalg.matrix_rank(design_within) - 2
    genes = frame.index
    rows = []
    for i in range(len(genes) - 1):
        r_t = np.atleast_1d(stats.pearsonr(pooled[i][None, :], pooled[i + 1 :], axis=1).statistic)
        r_w = np.atleast_1d(stats.pearsonr(within[i][None, :], within[i + 1 :], axis=1).statistic)
        for offset, (a, b) in enumerate(zip(r_t, r_w)):
            rows.append((genes[i], genes[i + 1 + offset], a, b))
    table = pd.DataFrame(rows, columns=["gene_a", "gene_b", "r_pooled", "r_within"])
    z_t = np.arctanh(table.r_pooled) * math.sqrt(df_pooled)
    z_w = np.arctanh(table.r_within) * math.sqrt(df_within)
    pos_neg = np.maximum(stats.norm.sf(z_t), stats.norm.cdf(z_w))
    neg_pos = np.maximum(stats.norm.cdf(z_t), stats.norm.sf(z_w))
    table["p"] = np.minimum(1.0, 2.0 * np.minimum(pos_neg, neg_pos))
    return table


def pair_keys(table: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(table.gene_a, table.gene_b))


# --------------------------------------------------------------------------- scan vs brute force


@pytest.fixture(scope="module")
def reference():
    frame, batch, planted = planted_data(seed=11)
    return frame, batch, planted, brute_force(frame, batch)


@pytest.mark.parametrize("method,fdr", [("bh", 0.05), ("bh", 0.6), ("by", 0.05), ("by", 0.6)])
def test_blocked_scan_agrees_with_brute_force_on_every_pair(reference, method, fdr):
    frame, batch, _, truth = reference
    truth = truth.copy()
    truth["q"] = multipletests(truth.p.to_numpy(), alpha=fdr, method=f"fdr_{method}")[1]
    expected = truth[truth.q <= fdr].set_index(["gene_a", "gene_b"]).sort_index()
    # an odd block size so that blocks are uneven and pairs straddle block borders
    result = simpson.scan(frame, batch, fdr=fdr, method=method, block_size=37, within_test="pooled")
    got = result.reversals.set_index(["gene_a", "gene_b"]).sort_index()
    assert result.n_genes == 300
    assert result.n_pairs == len(truth) == 300 * 299 // 2
    assert len(expected) >= 15
    assert list(got.index) == list(expected.index)
    for column in ["r_pooled", "r_within"]:
        np.testing.assert_allclose(got[column], expected[column], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.p, expected.p, rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(got.q, expected.q, rtol=1e-9, atol=1e-300)
    # the cheap bound keeps exactly the pairs with p <= fdr / c(M)
    factor = np.sum(1.0 / np.arange(1, len(truth) + 1)) if method == "by" else 1.0
    assert result.n_candidates == int((truth.p <= fdr / factor).sum())


def test_reported_columns_against_explicit_sums(reference):
    frame, batch, _, _ = reference
    result = simpson.scan(frame, batch, fdr=0.05, within_test="pooled")
    table = result.reversals
    assert list(table.columns) == simpson.REVERSAL_COLUMNS
    assert len(table) > 10
    labels = batch.reindex(frame.columns).to_numpy()
    batches = list(dict.fromkeys(labels))
    for row in table.itertuples(index=False):
        x, y = frame.loc[row.gene_a].to_numpy(), frame.loc[row.gene_b].to_numpy()
        s_total = np.sum((x - x.mean()) * (y - y.mean()))
        s_between = 0.0
        between_xx = between_yy = 0.0
        per_batch = []
        for b in batches:
            m = labels == b
            dx, dy = x[m].mean() - x.mean(), y[m].mean() - y.mean()
            s_between += m.sum() * dx * dy
            between_xx += m.sum() * dx * dx
            between_yy += m.sum() * dy * dy
            per_batch.append(stats.pearsonr(x[m], y[m]).statistic)
        assert row.between_share == pytest.approx(s_between / s_total, rel=1e-9)
        assert row.r_between == pytest.approx(s_between / math.sqrt(between_xx * between_yy), rel=1e-9)
        # a reversal's between part overshoots the pooled covariance
        assert row.between_share > 1.0
        assert row.n_batches_within_sign == sum(np.sign(r) == np.sign(row.r_within) for r in per_batch)
        assert row.per_batch_r == ";".join(f"{b}:{r:.2f}" for b, r in zip(batches, per_batch))
    # sorted by p, then by consistency (usable batches agreeing with the random-effects sign)
    assert table.sort_values(["p", "n_agree"], ascending=[True, False], kind="stable").index.tolist() == (
        table.index.tolist()
    )
    assert (table.q <= 0.05).all()


def test_covariate_adjustment_agrees_with_lstsq_reference():
    frame, batch, _ = planted_data(seed=5, n_genes=80, n_planted=8)
    rng = np.random.default_rng(3)
    n = frame.shape[1]
    covariates = np.column_stack([rng.standard_normal(n), (rng.random(n) < 0.5).astype(float)])
    # a biological factor with a real effect on half the genes
    frame = frame + np.outer(rng.standard_normal(80), covariates[:, 1])
    truth = brute_force(frame, batch, covariates)
    truth["q"] = multipletests(truth.p.to_numpy(), method="fdr_bh")[1]
    expected = truth[truth.q <= 0.2].set_index(["gene_a", "gene_b"]).sort_index()
    got = simpson.scan(frame, batch, fdr=0.2, covariates=covariates, block_size=13, within_test="pooled")
    got = got.reversals.set_index(["gene_a", "gene_b"]).sort_index()
    assert len(expected) >= 5
    assert list(got.index) == list(expected.index)
    np.testing.assert_allclose(got.r_within, expected.r_within, atol=1e-10)
    np.testing.assert_allclose(got.r_pooled, expected.r_pooled, atol=1e-10)
    np.testing.assert_allclose(got.q, expected.q, rtol=1e-8)


def test_result_does_not_depend_on_block_size_or_sample_order(reference):
    frame, batch, _, _ = reference
    baseline = simpson.scan(frame, batch, fdr=0.1, block_size=2048).reversals
    small_blocks = simpson.scan(frame, batch, fdr=0.1, block_size=5).reversals
    shuffled = frame[np.random.default_rng(0).permutation(frame.columns)]
    reordered = simpson.scan(shuffled, batch, fdr=0.1).reversals
    pd.testing.assert_frame_equal(baseline, small_blocks)
    pd.testing.assert_frame_equal(
        baseline.drop(columns="per_batch_r"), reordered.drop(columns="per_batch_r"), rtol=1e-10
    )


@pytest.mark.parametrize("test", ["pooled", "random_effects"])
def test_flipping_one_gene_keeps_the_reversal(test):
    frame, batch, planted = planted_data(seed=2, n_genes=40, n_planted=4)
    flipped = frame.copy()
    flipped.loc["g000"] *= -1.0
    before = simpson.scan(frame, batch, within_test=test).reversals.set_index(["gene_a", "gene_b"])
    after = simpson.scan(flipped, batch, within_test=test).reversals.set_index(["gene_a", "gene_b"])
    pair = ("g000", "g001")
    assert pair in before.index and pair in after.index
    assert after.loc[pair, "r_pooled"] == pytest.approx(-before.loc[pair, "r_pooled"], abs=1e-12)
    assert after.loc[pair, "r_within"] == pytest.approx(-before.loc[pair, "r_within"], abs=1e-12)
    assert after.loc[pair, "p"] == pytest.approx(before.loc[pair, "p"], rel=1e-9)
    assert after.loc[pair, "mu_r"] == pytest.approx(-before.loc[pair, "mu_r"], abs=1e-12)


# --------------------------------------------------------------------------- planted truth


def test_recall_and_false_discovery_proportion_on_planted_reversals():
    recalls, proportions = [], []
    for seed in (101, 102, 103):
        frame, batch, planted = planted_data(seed=seed, n_genes=400, n_planted=40)
        found = set(pair_keys(simpson.scan(frame, batch, fdr=0.05, within_test="pooled").reversals))
        recalls.append(len(found & planted) / len(planted))
        proportions.append(len(found - planted) / max(len(found), 1))
    assert min(recalls) >= 0.95, recalls
    assert np.mean(proportions) <= 0.05, proportions


def test_pure_batch_effects_give_no_reversals():
    # no within-batch correlation anywhere: every pooled correlation is batch-driven
    frame, batch, _ = planted_data(seed=8, n_genes=200, n_planted=0, batch_sd=3.0)
    result = simpson.scan(frame, batch, fdr=0.05, within_test="pooled")
    assert result.n_candidates > 0  # the bound lets some null pairs through ...
    assert len(result.reversals) == 0  # ... and BH over all pairs removes them


def test_permutation_check_reports_a_small_empirical_fdr_and_is_seeded():
    frame, batch, planted = planted_data(seed=21, n_genes=200, n_planted=20)
    check = simpson.permutation_check(frame, batch, n_permutations=3, seed=7)
    again = simpson.permutation_check(frame, batch, n_permutations=3, seed=7)
    assert check == again
    assert check.n_permutations == 3 and check.seed == 7
    assert simpson.permutation_check(frame, batch, n_permutations=1).seed == DEFAULT_SEED
    assert check.discoveries_observed == len(simpson.scan(frame, batch).reversals)
    assert check.discoveries_observed >= 19
    assert check.empirical_fdr == pytest.approx(check.mean_discoveries_null / check.discoveries_observed)
    assert check.empirical_fdr <= 0.05


def test_permutation_null_destroys_within_correlation_but_keeps_batch_means():
    # Strong within-batch reversals everywhere: a permutation that kept the
    # within-batch correlations (one shared permutation) would find them again.
    frame, batch, planted = planted_data(seed=4, n_genes=60, n_planted=30)
    check = simpson.permutation_check(frame, batch, n_permutations=4, seed=3)
    assert check.discoveries_observed >= 28
    assert check.mean_discoveries_null <= 1.0


def test_permuted_values_are_the_sequential_permutations_whatever_the_block():
    # The permutation null as first written: one generator, permutation after permutation and batch
    # after batch, each drawing one uniform per (gene, sample of the batch) for all genes at once.
    frame, batch, _ = planted_data(seed=5, n_genes=70, n_planted=10)
    data = simpson.prepare(frame, batch)
    rng = np.random.default_rng(11)
    fitted = data.values - data.within
    for permutation in range(3):
        permuted = data.within.copy()
        for columns in data.batch_columns:
            order = np.argsort(rng.random((permuted.shape[0], columns.size)), axis=1)
            permuted[:, columns] = np.take_along_axis(data.within[:, columns], order, axis=1)
        expected = fitted + permuted
        whole = simpson.permuted_values(data, permutation, seed=11)
        np.testing.assert_array_equal(whole.view(np.uint64), expected.view(np.uint64))
        blocks = [simpson.permuted_values(data, permutation, seed=11, rows=slice(a, a + 16)) for a in range(0, 70, 16)]
        np.testing.assert_array_equal(np.concatenate(blocks).view(np.uint64), expected.view(np.uint64))
        # every (gene, batch) keeps its values: only their order within the batch changes
        for columns in data.batch_columns:
            np.testing.assert_array_equal(
                np.sort(permuted[:, columns], axis=1), np.sort(data.within[:, columns], axis=1)
            )
        assert not np.array_equal(permuted, data.within)
    with pytest.raises(ValueError, match="consecutive"):
        simpson.permuted_values(data, 0, seed=11, rows=slice(0, 70, 2))


@pytest.mark.parametrize("within_test", ["random_effects", "pooled"])
def test_the_saved_permutation_check_is_the_in_memory_one(tmp_path, within_test):
    frame, batch, _ = planted_data(seed=21, n_genes=120, n_planted=12)
    options = dict(n_permutations=3, seed=7, within_test=within_test, fdr=0.2)
    expected = simpson.permutation_check(frame, batch, **options)
    data = simpson.prepare(frame, batch)
    saved = simpson.permutation_check_saved(data, batch, tmp_path, **options)
    assert saved == expected and expected.discoveries_observed >= 10
    given = simpson.permutation_check_saved(data, batch, tmp_path, observed=expected.discoveries_observed, **options)
    assert given == expected
    assert list(tmp_path.iterdir()) == []  # each permutation's folder removed


# --------------------------------------------------------------------------- Benjamini-Yekutieli constant


def test_harmonic_constant_exact_and_asymptotic():
    m = 10_000_000
    exact = np.sum(1.0 / np.arange(1, m + 2))
    assert simpson.harmonic_number(m + 1) == pytest.approx(exact, rel=1e-12)  # asymptotic branch
    assert simpson.harmonic_number(10) == pytest.approx(7381 / 2520, rel=1e-15)  # exact branch


# --------------------------------------------------------------------------- bookkeeping


def test_excluded_genes_are_reported_with_a_reason():
    frame, batch, _ = planted_data(seed=9, n_genes=30, n_planted=2)
    frame.loc["g020", "s005"] = np.nan
    codes = batch.reindex(frame.columns).to_numpy()
    frame.loc["g021"] = pd.Series(codes).factorize()[0].astype(float)  # constant within each batch
    frame.loc["g022"] = 0.0
    variance = frame.drop(index=["g020", "g021", "g022"]).var(axis=1, ddof=1)
    top = set(variance.sort_values(ascending=False).index[:10])
    result = simpson.scan(frame, batch, genes=10)
    reasons = result.genes_excluded
    assert result.n_genes == 10 and result.n_pairs == 45
    assert len(reasons) == 20
    assert reasons["g020"] == "missing or non-finite values"
    assert reasons["g021"] == "zero within-batch variance"
    assert reasons["g022"] == "zero within-batch variance"
    assert set(frame.index) - set(reasons.index) == top
    assert (reasons.drop(index=["g020", "g021", "g022"]) == "not among the top 10 most variable genes").all()
    scanned = set(result.reversals.gene_a) | set(result.reversals.gene_b)
    assert scanned <= top


def test_gene_labels_are_kept_as_given():
    frame, batch, _ = planted_data(seed=2, n_genes=40, n_planted=4)
    frame.index = range(1000, 1040)  # integer gene ids
    table = simpson.scan(frame, batch).reversals
    assert (1000, 1001) in pair_keys(table)
    assert isinstance(table.gene_a.iloc[0], int)


def test_invalid_input_is_refused():
    frame, batch, _ = planted_data(seed=1, n_genes=10, n_planted=1)
    with pytest.raises(ValueError, match="no batch label"):
        simpson.scan(frame, batch.iloc[1:])
    with pytest.raises(ValueError, match="fdr"):
        simpson.scan(frame, batch, fdr=1.0)
    with pytest.raises(ValueError, match="method"):
        simpson.scan(frame, batch, method="holm")
    with pytest.raises(ValueError, match="unique"):
        simpson.scan(pd.concat([frame, frame.iloc[:1]]), batch)
    with pytest.raises(ValueError, match="within_test"):
        simpson.scan(frame, batch, within_test="fixed")
    with pytest.raises(ValueError, match="min_batches"):
        simpson.scan(frame, batch, min_batches=0)


# --------------------------------------------------------------------------- real data


def test_gse147507_ccl2_aldh3b1_is_a_reversal():
    counts = pd.read_csv(REPO / "resources/example/counts.tsv.gz", sep="\t", index_col=0)
    samples = pd.read_csv(REPO / "resources/example/samples.tsv", sep="\t", index_col=0)
    # DESeq2 median-of-ratios size factors over genes expressed in every sample
    expressed = counts[(counts > 0).all(axis=1)]
    log_counts = np.log(expressed)
    size_factors = np.exp(log_counts.sub(log_counts.mean(axis=1), axis=0).median(axis=0))
    log_expression = np.log2(counts / size_factors + 1.0)
    # the 298 most variable genes plus the pair of interest: 300 genes
    others = log_expression.drop(index=["CCL2", "ALDH3B1"]).var(axis=1).sort_values(ascending=False).index[:298]
    subset = log_expression.loc[list(others) + ["CCL2", "ALDH3B1"]]
    result = simpson.scan(subset, samples["Batch"], fdr=0.05, within_test="pooled")
    assert result.n_genes == 300
    table = result.reversals
    hit = table[(table.gene_a == "CCL2") & (table.gene_b == "ALDH3B1")]
    assert len(hit) == 1
    row = hit.iloc[0]
    assert 0.8 <= row.r_pooled <= 0.9
    assert row.r_within < -0.5
    assert row.q <= 0.05
    assert row.n_batches_within_sign == 10  # negative inside each of the 10 series
    assert len(row.per_batch_r.split(";")) == 10
