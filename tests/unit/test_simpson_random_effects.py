"""The random-effects within-batch test of batchmix.simpson (the default), its sign-flip calibration and
the lurking factor, against brute force written out here: scipy.stats.pearsonr per batch, the
DerSimonian-Laird formulas as loops, statsmodels' multipletests over all pairs, and planted truth
from tests/data/simpson/generate.py."""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix import simpson
from batchmix.defaults import DEFAULT_SEED
from scipy import stats
from statsmodels.stats.multitest import multipletests

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("simpson_generate", REPO / "tests/data/simpson/generate.py")
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)

BATCH_SIZES = [3, 4, 5, 6, 8, 10, 12, 15]  # the batch of 3 has w_b = 0: never usable


def mixed_data(seed: int, n_genes: int = 150):
    """Genes with batch effects, planted consistent reversals, heterogeneous pairs, a gene constant in a
    batch and a gene nearly constant (SD < 0.1) in another: every branch of the usable mask."""
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(len(BATCH_SIZES)), BATCH_SIZES)
    n, n_batches = codes.size, len(BATCH_SIZES)
    values = rng.standard_normal((n_genes, n)) + 1.5 * rng.standard_normal((n_genes, n_batches))[:, codes]
    for k in range(12):
        means = rng.standard_normal(n_batches)
        means = 2.0 * (means - means.mean()) / means.std()
        noise = rng.standard_normal((2, n))
        sign = 1.0 if k % 2 else -1.0
        values[2 * k] = means[codes] + noise[0]
        # within-batch correlation of varying strength per batch: tau2 > 0 for many pairs
        strength = rng.uniform(0.2, 1.2, n_batches)[codes]
        values[2 * k + 1] = sign * means[codes] - sign * (strength * noise[0] + 0.7 * noise[1])
    values[10, codes == 5] = 7.25  # a planted gene exactly constant in batch 5
    values[11, codes == 6] = 3.0 + 0.01 * rng.standard_normal(int((codes == 6).sum()))  # SD ~ 0.01
    values[32] = values[33] + 1e-3 * rng.standard_normal(n)  # nearly identical genes: |r_b| near 1
    quiet = np.isin(codes, [1, 2, 3, 4, 5])
    # the last 10 genes are quiet (SD 0.02) in five batches: their pairs have k < 3, p = 1
    values[-10:, quiet] = 5.0 + 0.02 * rng.standard_normal((10, int(quiet.sum())))
    samples = [f"s{i:03d}" for i in range(n)]
    frame = pd.DataFrame(values, index=[f"g{i:03d}" for i in range(n_genes)], columns=samples)
    batch = pd.Series([f"b{c}" for c in codes], index=samples, name="batch")
    return frame, batch


def brute_force_random_effects(frame, batch, covariates=None, min_sd=0.1, min_batches=3):
    """Every pair: scipy correlations per batch and the DerSimonian-Laird formulas as plain loops."""
    labels = batch.reindex(frame.columns).to_numpy()
    batches = list(dict.fromkeys(labels))
    values = frame.to_numpy(float)
    n = values.shape[1]
    cov = np.zeros((n, 0)) if covariates is None else covariates
    residuals, weight = {}, {}
    usable = np.zeros((len(frame), len(batches)), dtype=bool)
    for k, b in enumerate(batches):
        m = labels == b
        design = np.column_stack([np.ones(m.sum()), cov[m]])
        rank = np.linalg.matrix_rank(design)
        weight[k] = m.sum() - rank - 2
        fit = np.linalg.lstsq(design, values[:, m].T, rcond=None)[0]
        residuals[k] = values[:, m] - (design @ fit).T
        for g in range(len(frame)):
            raw = values[g, m]
            sd = math.sqrt(np.sum(residuals[k][g] ** 2) / (m.sum() - rank))
            usable[g, k] = weight[k] >= 1 and sd >= min_sd and np.ptp(raw) > 0
    design = np.column_stack([np.ones(n), cov])
    pooled = values - (design @ np.linalg.lstsq(design, values.T, rcond=None)[0]).T
    df_pooled = n - np.linalg.matrix_rank(design) - 2
    rows = []
    genes = list(frame.index)
    for i in range(len(genes) - 1):
        # scipy.stats.pearsonr of gene i against every later gene, pooled and inside each batch
        r_pooled = np.atleast_1d(stats.pearsonr(pooled[i][None, :], pooled[i + 1 :], axis=1).statistic)
        with warnings.catch_warnings():  # constant genes in a batch: NaN, never used (unusable)
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            r_batch = [
                np.atleast_1d(stats.pearsonr(residuals[k][i][None, :], residuals[k][i + 1 :], axis=1).statistic)
                for k in range(len(batches))
            ]
        for j in range(i + 1, len(genes)):
            r_t = r_pooled[j - i - 1]
            z_list, w_list, r_list = [], [], []
            for k in range(len(batches)):
                if usable[i, k] and usable[j, k]:
                    r_b = r_batch[k][j - i - 1]
                    r_list.append(r_b)
                    z_list.append(math.atanh(min(max(r_b, -(1 - 1e-7)), 1 - 1e-7)))
                    w_list.append(float(weight[k]))
            k_usable = len(z_list)
            row = {"gene_a": genes[i], "gene_b": genes[j], "r_pooled": r_t, "k_usable": k_usable}
            if k_usable == 0:
                row.update(p=1.0, mu_r=np.nan, tau2=np.nan, i2=np.nan, n_agree=0)
                rows.append(row)
                continue
            sum_w = sum(w_list)
            z_bar = sum(w * z for w, z in zip(w_list, z_list)) / sum_w
            q = sum(w * (z - z_bar) ** 2 for w, z in zip(w_list, z_list))
            if k_usable > 1:
                tau2 = max(0.0, (q - (k_usable - 1)) / (sum_w - sum(w * w for w in w_list) / sum_w))
            else:
                tau2 = 0.0
            w_star = [1.0 / (1.0 / w + tau2) for w in w_list]
            mu = sum(ws * z for ws, z in zip(w_star, z_list)) / sum(w_star)
            z_re = mu * math.sqrt(sum(w_star))
            z_t = math.atanh(r_t) * math.sqrt(df_pooled)
            p = min(
                1.0,
                2
                * min(max(stats.norm.cdf(-z_t), stats.norm.cdf(z_re)), max(stats.norm.cdf(z_t), stats.norm.cdf(-z_re))),
            )
            if k_usable < min_batches:
                p = 1.0
            i2 = max(0.0, (q - (k_usable - 1)) / q) if q > 0 and k_usable > 1 else 0.0
            row.update(
                p=p, mu_r=math.tanh(mu), tau2=tau2, i2=i2, n_agree=sum(1 for r in r_list if np.sign(r) == np.sign(mu))
            )
            rows.append(row)
    return pd.DataFrame(rows), usable, batches


@pytest.fixture(scope="module")
def reference():
    frame, batch = mixed_data(seed=3)
    truth, usable, batches = brute_force_random_effects(frame, batch)
    return frame, batch, truth, usable, batches


def test_random_effects_statistic_of_every_pair_equals_the_brute_force_loop(reference):
    frame, batch, truth, _, _ = reference
    data = simpson.prepare(frame, batch)
    position = {g: i for i, g in enumerate(data.genes)}
    index_a = truth.gene_a.map(position).to_numpy()
    index_b = truth.gene_b.map(position).to_numpy()
    got = simpson.pair_statistics(data, index_a, index_b)
    assert len(truth) == 150 * 149 // 2
    assert (truth.tau2 > 0).sum() > 1000 and (truth.k_usable < 3).sum() > 100
    np.testing.assert_array_equal(got.k_usable, truth.k_usable)
    np.testing.assert_array_equal(got.n_agree, truth.n_agree)
    for name, column in [
        ("r_pooled", "r_pooled"),
        ("mu_r", "mu_r"),
        ("tau2", "tau2"),
        ("i2", "i2"),
        ("p_random_effects", "p"),
    ]:
        np.testing.assert_allclose(getattr(got, name), truth[column], rtol=0, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("method,fdr", [("bh", 0.05), ("bh", 0.95), ("by", 0.9)])
def test_random_effects_scan_equals_the_brute_force_loop(reference, method, fdr):
    frame, batch, truth, _, _ = reference
    truth = truth.copy()
    truth["q"] = multipletests(truth.p.to_numpy(), method=f"fdr_{method}")[1]  # over all M pairs
    expected = truth[truth.q <= fdr].set_index(["gene_a", "gene_b"]).sort_index()
    result = simpson.scan(frame, batch, fdr=fdr, method=method, block_size=23)
    got = result.reversals.set_index(["gene_a", "gene_b"]).sort_index()
    assert result.n_pairs == len(truth) == 150 * 149 // 2
    assert len(expected) >= 4
    assert (expected.tau2 > 0).sum() >= 1  # heterogeneity is exercised
    assert list(got.index) == list(expected.index)
    for column in ["r_pooled", "mu_r", "tau2", "i2"]:
        np.testing.assert_allclose(got[column], expected[column], rtol=0, atol=1e-10, err_msg=column)
    np.testing.assert_allclose(got.p, expected.p, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(got.q, expected.q, rtol=1e-10, atol=1e-300)
    assert (got.k_usable == expected.k_usable).all()
    assert (got.n_agree == expected.n_agree).all()
    bound = fdr / (np.sum(1.0 / np.arange(1, len(truth) + 1)) if method == "by" else 1.0)
    assert result.n_candidates == int((truth.p <= bound).sum())


@pytest.mark.parametrize("dense", [0.0, 2.0], ids=["matrix_products", "pair_by_pair"])
@pytest.mark.parametrize("method,fdr", [("bh", 0.05), ("bh", 0.95), ("by", 0.9)])
def test_both_screens_keep_every_candidate_of_the_brute_force_loop(reference, monkeypatch, dense, method, fdr):
    """The float32 screen (per-batch products of whole blocks, or pair by pair) and its z_RE bound lose
    no pair with p <= the bound: unequal batches (R = w_max / w_min = 12), tau2 > 0, |r_b| near 1."""
    frame, batch, truth, _, _ = reference
    monkeypatch.setattr("batchmix.simpson.pairs._DENSE_SURVIVORS", dense)
    data = simpson.prepare(frame, batch)
    n_pairs = len(truth)
    bound = fdr / (np.sum(1.0 / np.arange(1, n_pairs + 1)) if method == "by" else 1.0)
    parts = [
        simpson.scan_block_pair(data, a, b, fdr=fdr, method=method) for a, b in simpson.block_pairs(data.n_genes, 23)
    ]
    got = pd.concat(parts, ignore_index=True)
    names = data.genes.to_numpy()
    got_pairs = set(zip(names[got.index_a], names[got.index_b]))
    expected = truth[truth.p <= bound]
    assert len(expected) > 20
    assert got_pairs == set(zip(expected.gene_a, expected.gene_b))


def test_random_effects_with_covariates_equals_the_brute_force_loop():
    frame, batch = mixed_data(seed=8, n_genes=60)
    rng = np.random.default_rng(1)
    n = frame.shape[1]
    covariates = np.column_stack([rng.standard_normal(n)])
    frame = frame + np.outer(rng.standard_normal(60), covariates[:, 0])
    truth, _, _ = brute_force_random_effects(frame, batch, covariates)
    truth["q"] = multipletests(truth.p.to_numpy(), method="fdr_bh")[1]
    expected = truth[truth.q <= 0.5].set_index(["gene_a", "gene_b"]).sort_index()
    got = simpson.scan(frame, batch, fdr=0.5, covariates=covariates, block_size=17).reversals
    got = got.set_index(["gene_a", "gene_b"]).sort_index()
    assert len(expected) >= 5
    assert list(got.index) == list(expected.index)
    for column in ["p", "mu_r", "tau2", "r_pooled"]:
        np.testing.assert_allclose(got[column], expected[column], rtol=1e-9, atol=1e-10, err_msg=column)


def test_per_batch_r_is_nan_where_a_gene_is_constant_or_unusable(reference):
    frame, batch, _, usable, batches = reference
    assert not usable[10, 5] and not usable[11, 6]  # exactly constant; SD 0.01
    # every pair: NaN exactly where the batch is unusable for either gene (the brute-force mask)
    data = simpson.prepare(frame, batch)
    index_a, index_b = np.triu_indices(len(frame), k=1)
    got = simpson.pair_statistics(data, index_a, index_b)
    both = usable[index_a] & usable[index_b]
    np.testing.assert_array_equal(np.isnan(got.per_batch_r), ~both)
    assert np.isnan(got.per_batch_r[(index_a == 10) | (index_b == 10), 5]).all()
    # n_batches_within_sign never counts an unusable batch (a constant gene's rounding noise)
    same_sign = (np.sign(got.per_batch_r) == np.sign(got.r_within)[:, None]) & both
    np.testing.assert_array_equal(got.n_batches_within_sign, same_sign.sum(axis=1))
    # the reported table prints the same NaNs
    table = simpson.scan(frame, batch, fdr=0.999, within_test="pooled").reversals
    assert len(table) >= 10
    position = {g: i for i, g in enumerate(frame.index)}
    for row in table.itertuples(index=False):
        entries = dict(item.split(":") for item in row.per_batch_r.split(";"))
        assert list(entries) == batches
        pair_usable = usable[position[row.gene_a]] & usable[position[row.gene_b]]
        assert [entries[b] == "nan" for b in batches] == list(~pair_usable)
        assert row.k_usable == pair_usable.sum()
        assert row.n_batches_within_sign <= row.k_usable
    assert entries["b0"] == "nan"  # the batch of 3 samples is never usable


def test_block_pair_jobs_in_any_order_give_the_single_scan(reference):
    frame, batch, _, _, _ = reference
    for method in ("bh", "by"):
        whole = simpson.scan(frame, batch, fdr=0.3, method=method)
        data = simpson.prepare(frame, batch)
        jobs = simpson.block_pairs(data.n_genes, 40)
        assert len(jobs) == 10  # 4 blocks: 4 diagonal + 6 off-diagonal
        order = np.random.default_rng(0).permutation(len(jobs))
        candidates = [simpson.scan_block_pair(data, *jobs[i], fdr=0.3, method=method) for i in order]
        assert sum(len(c) for c in candidates) == whole.n_candidates
        scattered = simpson.combine(data, candidates, fdr=0.3, method=method)
        pd.testing.assert_frame_equal(whole.reversals, scattered.reversals)
        assert scattered.n_candidates == whole.n_candidates
    with pytest.raises(ValueError, match="before"):
        simpson.scan_block_pair(data, slice(40, 80), slice(0, 40))


def test_fewer_than_min_batches_gives_p_one_but_counts_in_m(reference):
    frame, batch, truth, _, _ = reference
    # at most 7 batches are usable (the batch of 3 never is): min_batches = 8 leaves every p at 1
    impossible = simpson.scan(frame, batch, fdr=0.5, min_batches=8)
    assert impossible.n_pairs == 150 * 149 // 2 and impossible.n_candidates == 0 and impossible.reversals.empty
    # the rule is p = 1 below min_batches, and the step-up still runs over all M pairs
    truth = truth.copy()
    truth.loc[truth.k_usable < 7, "p"] = 1.0
    truth["q"] = multipletests(truth.p.to_numpy(), method="fdr_bh")[1]
    expected = truth[truth.q <= 0.5]
    strict = simpson.scan(frame, batch, fdr=0.5, min_batches=7).reversals
    assert len(expected) >= 3 and (strict.k_usable == 7).all()
    assert set(zip(strict.gene_a, strict.gene_b)) == set(zip(expected.gene_a, expected.gene_b))
    np.testing.assert_allclose(np.sort(strict.q), np.sort(expected.q), rtol=1e-10)


# --------------------------------------------------------------------------- planted truth


def _found(result):
    return set(zip(result.reversals.gene_a, result.reversals.gene_b))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gse147507_design_false_discovery_proportion(seed):
    frame, batch, truth, kinds = generate.make_planted(generate.gse147507_design(), seed=seed)
    found = _found(simpson.scan(frame, batch, zero_value=generate.ZERO_VALUE))
    assert len(found) >= 3
    assert len(found - truth) / len(found) <= 0.05
    # the decoys are real decoys: the pooled test is fooled by them on the same data
    pooled = _found(simpson.scan(frame, batch, within_test="pooled", zero_value=generate.ZERO_VALUE))
    assert len(pooled - truth) / len(pooled) > 0.2


@pytest.mark.parametrize("seed", [1, 2])
def test_ten_batches_of_twenty_recall_and_false_discovery_proportion(seed):
    frame, batch, truth, kinds = generate.make_planted(generate.balanced_design(10, 20), seed=seed)
    found = _found(simpson.scan(frame, batch, zero_value=generate.ZERO_VALUE))
    assert len(found & truth) / len(truth) >= 0.6
    assert len(found - truth) / max(len(found), 1) <= 0.05
    pooled = _found(simpson.scan(frame, batch, within_test="pooled", zero_value=generate.ZERO_VALUE))
    decoys = {kinds[a] for a, _ in pooled - truth}
    assert {"one_batch", "mixed_sign", "zero_inflated"} <= decoys


def test_zero_inflated_decoys_need_the_count_rule():
    frame, batch, truth, kinds = generate.make_planted(generate.balanced_design(10, 20), seed=4)
    without = _found(simpson.scan(frame, batch))
    assert any(kinds[a] == "zero_inflated" for a, _ in without - truth)
    with_rule = _found(simpson.scan(frame, batch, zero_value=generate.ZERO_VALUE))
    assert not any(kinds[a] == "zero_inflated" for a, _ in with_rule)


# --------------------------------------------------------------------------- sign-flip calibration


def test_sign_flip_keeps_every_abs_r_b_and_the_batch_means(reference):
    frame, batch, _, _, _ = reference
    data = simpson.prepare(frame, batch)
    null = simpson.sign_flip_data(data, 0)
    again = simpson.sign_flip_data(data, 0)
    other = simpson.sign_flip_data(data, 1)
    np.testing.assert_array_equal(null.values, again.values)
    assert not np.array_equal(null.values, other.values)
    np.testing.assert_array_equal(null.usable, data.usable)
    labels = batch.reindex(frame.columns).to_numpy()
    observed = pd.DataFrame(data.values, columns=frame.columns).T.groupby(labels).mean()
    flipped = pd.DataFrame(null.values, columns=frame.columns).T.groupby(labels).mean()
    np.testing.assert_allclose(flipped.to_numpy(), observed.to_numpy(), atol=1e-12)
    pairs_a, pairs_b = np.array([0, 2, 4, 30]), np.array([1, 3, 5, 40])
    before = simpson.pair_statistics(data, pairs_a, pairs_b).per_batch_r
    after = simpson.pair_statistics(null, pairs_a, pairs_b).per_batch_r
    np.testing.assert_allclose(np.abs(after), np.abs(before), atol=1e-12)
    assert (np.sign(after) != np.sign(before))[np.isfinite(before)].any()


def test_calibration_replicates_combine_and_are_seeded():
    frame, batch, truth, _ = generate.make_planted(generate.balanced_design(10, 20), seed=5, n_null=150)
    data = simpson.prepare(frame, batch, zero_value=generate.ZERO_VALUE)
    flagged = len(simpson.scan_data(data).reversals)
    null = [simpson.sign_flip_replicate(data, r) for r in range(3)]
    assert null == [simpson.sign_flip_replicate(data, r, seed=DEFAULT_SEED) for r in range(3)]
    summary = simpson.calibration_summary(flagged, null)
    assert summary["method"] == "sign_flip" and summary["replicates"] == 3
    assert summary["flagged_null"] == null and summary["flagged"] == flagged >= 12
    assert summary["empirical_fdr"] == pytest.approx(np.mean(null) / flagged)
    assert summary["empirical_fdr"] <= 0.1
    whole = simpson.calibration(frame, batch, n_replicates=3, zero_value=generate.ZERO_VALUE)
    assert whole == summary
    # under the same null the pooled test keeps flagging its decoys: the null that matters
    pooled_null = simpson.sign_flip_replicate(data, 0, within_test="pooled")
    assert pooled_null >= 5


def test_calibration_summary_with_nothing_flagged():
    summary = simpson.calibration_summary(0, [0, 0, 0])
    assert summary["empirical_fdr"] == 0.0
    assert simpson.calibration_summary(0, [2, 0, 1])["empirical_fdr"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- lurking factor


def test_lurking_columns_of_the_gse147507_sheet():
    samples = pd.read_csv(REPO / "resources/example/samples.tsv", sep="\t", index_col=0, dtype=str)
    nested = simpson.lurking_columns(samples, "Batch")
    assert "Celltype" in nested
    assert "Infection" not in nested  # varies inside the series
    assert "Batch" not in nested
    # one level per batch but as many levels as batches: the batch itself, not a lurking factor
    alias = samples.assign(Series_copy="x" + samples["Batch"])
    assert "Series_copy" not in simpson.lurking_columns(alias, "Batch")
    assert "Celltype" not in simpson.lurking_columns(samples, "Batch", exclude=("Celltype",))


def test_factor_shares_against_explicit_sums():
    design = generate.gse147507_design()
    frame, batch, _, _ = generate.make_planted(
        design, seed=2, n_null=40, n_planted=4, n_zero_inflated=0, n_one_batch=0, n_mixed=0
    )
    pairs = pd.DataFrame({"gene_a": ["g0000", "g0002", "g0040"], "gene_b": ["g0001", "g0010", "g0041"]})
    shares = simpson.factor_shares(frame, pairs, design["Celltype"])
    cell = design["Celltype"].reindex(frame.columns).to_numpy()
    for share, row in zip(shares, pairs.itertuples(index=False)):
        x, y = frame.loc[row.gene_a].to_numpy(), frame.loc[row.gene_b].to_numpy()
        s_total = np.sum((x - x.mean()) * (y - y.mean()))
        s_cell = sum(
            (cell == c).sum() * (x[cell == c].mean() - x.mean()) * (y[cell == c].mean() - y.mean())
            for c in np.unique(cell)
        )
        assert share == pytest.approx(s_cell / s_total, rel=1e-9)


def test_lurking_factor_named_when_it_drives_the_reversals():
    design = generate.gse147507_design()
    rng = np.random.default_rng(0)
    labels, cells = design["Batch"].to_numpy(), design["Celltype"].to_numpy()
    n = labels.size
    cell_codes = np.unique(cells, return_inverse=True)[1]
    batch_codes = np.unique(labels, return_inverse=True)[1]
    rows = []
    for k in range(30):
        # pooled sign from cell-type means, the opposite sign within every batch
        cell_means = 3.0 * rng.standard_normal(3)[cell_codes]
        shared, own = rng.standard_normal((2, n))
        rows.append(cell_means + 0.2 * rng.standard_normal(10)[batch_codes] + shared)
        rows.append(cell_means + 0.2 * rng.standard_normal(10)[batch_codes] - 0.9 * shared - 0.4 * own)
    rows += list(rng.standard_normal((40, n)) + 2.0 * rng.standard_normal((40, 3))[:, cell_codes])
    frame = pd.DataFrame(rows, index=[f"g{i:03d}" for i in range(len(rows))], columns=design.index)
    batch = design["Batch"]
    reversals = simpson.scan(frame, batch).reversals
    assert len(reversals) >= 10
    found = simpson.lurking_factors(frame, design, reversals, batch="Batch")
    assert found.nested == ["Celltype"]
    assert found.summary["Celltype"]["driving"] is True
    assert found.summary["Celltype"]["fraction_driven"] >= 0.9
    assert list(found.shares.columns) == ["share_Celltype"]
    # a factor that is not behind the reversals is named but not driving
    other = design.assign(Lab=np.where(np.isin(labels, ["Series1", "Series2", "Series3"]), "lab1", "lab2"))
    found = simpson.lurking_factors(frame, other, reversals, batch="Batch")
    assert set(found.nested) == {"Celltype", "Lab"}
    assert found.summary["Lab"]["driving"] is False
