"""batchmix.vst against DESeq2 1.38.3 (fixtures: tests/data/deseq2, see its README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batchmix import vst as V

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "deseq2"

VST_ABS_TOL = 1e-3  # the target for parametric / mean
LOCAL_ABS_TOL = 1e-3  # the issue asks 1e-2 for local; the locfit port reaches ~1e-8


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", index_col=0)


@pytest.fixture(scope="module")
def pasilla_counts() -> pd.DataFrame:
    return _read(DATA / "pasilla_counts.tsv.gz")


@pytest.fixture(scope="module")
def gse_counts() -> pd.DataFrame:
    return _read(ROOT / "resources" / "example" / "counts.tsv.gz")


@pytest.fixture(scope="module")
def trends() -> pd.DataFrame:
    return pd.read_csv(DATA / "trends.tsv", sep="\t")


def _counts(name, pasilla_counts, gse_counts):
    return pasilla_counts if name == "pasilla" else gse_counts


_VST_CACHE: dict = {}


def _vst_once(name: str, counts: pd.DataFrame, **kwargs) -> V.VSTResult:
    """V.vst, computed once per data set and arguments within this module."""
    key = (name, tuple(sorted((k, v) for k, v in kwargs.items() if k != "design")))
    if key not in _VST_CACHE:
        _VST_CACHE[key] = V.vst(counts, **kwargs)
    return _VST_CACHE[key]


def _design(name: str) -> np.ndarray:
    return _read(DATA / f"{name}_design_matrix.tsv").to_numpy(dtype=float)


def _max_abs_err(res: V.VSTResult, ref: pd.DataFrame) -> float:
    mine = res.values.loc[ref.index, ref.columns].to_numpy()
    return float(np.max(np.abs(mine - ref.to_numpy())))


# ---------------------------------------------------------------- size factors


def test_pasilla_size_factors_match_deseq2(pasilla_counts):
    ref = _read(DATA / "pasilla_reference_size_factors.tsv")["size_factor"]
    sf = V.size_factors(pasilla_counts)
    assert list(sf.index) == list(ref.index)
    np.testing.assert_allclose(sf.to_numpy(), ref.to_numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["pasilla", "gse147507"])
@pytest.mark.parametrize("method", ["ratio", "poscounts"])
def test_size_factors_match_deseq2(name, method, pasilla_counts, gse_counts):
    ref = _read(DATA / f"{name}_size_factors.tsv")[f"size_factor_{method}"]
    sf = V.size_factors(_counts(name, pasilla_counts, gse_counts), method=method)
    np.testing.assert_allclose(sf.loc[ref.index].to_numpy(), ref.to_numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["pasilla", "gse147507"])
def test_no_all_nonzero_gene_raises_and_poscounts_matches(name, pasilla_counts, gse_counts):
    counts = _counts(name, pasilla_counts, gse_counts)
    zero_genes = counts[(counts == 0).any(axis=1) & (counts.sum(axis=1) > 0)]
    with pytest.raises(ValueError, match="size_factors: poscounts"):
        V.size_factors(zero_genes)
    ref = _read(DATA / f"{name}_size_factors_poscounts_zero_genes.tsv")["size_factor_poscounts"]
    sf = V.size_factors(zero_genes, method="poscounts")
    np.testing.assert_allclose(sf.loc[ref.index].to_numpy(), ref.to_numpy(), rtol=1e-6, atol=0)


def test_size_factors_reject_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        V.size_factors(pd.DataFrame({"a": [1, -1], "b": [2, 3]}))
    with pytest.raises(ValueError, match="unknown size factor method"):
        V.size_factors(pd.DataFrame({"a": [1, 2], "b": [2, 3]}), method="upperquartile")


# ---------------------------------------------------------------- dispersions


@pytest.mark.parametrize("name", ["pasilla", "gse147507"])
def test_gene_wise_dispersions_match_deseq2(name, pasilla_counts, gse_counts):
    counts = _counts(name, pasilla_counts, gse_counts)
    ref = _read(DATA / f"{name}_dispersions_blind.tsv")
    rows = counts.index.get_indexer(ref.index)
    sub = counts.iloc[rows]
    # dispersions are per gene given the size factors; compute sf on all genes
    sf = V.size_factors(counts).to_numpy()
    disp = V.estimate_dispersions(sub.to_numpy(dtype=float), sf)
    np.testing.assert_allclose(disp["base_mean"].to_numpy(), ref["base_mean"].to_numpy(), rtol=1e-8)
    ok = ref["disp_gene_est"].notna().to_numpy()
    assert np.array_equal(disp["disp_gene_est"].notna().to_numpy(), ok)
    np.testing.assert_allclose(disp["disp_gene_est"].to_numpy()[ok], ref["disp_gene_est"].to_numpy()[ok], rtol=1e-6)


def test_dispersions_line_search_escape_matches_deseq2():
    # genes whose first line-search step drives log(alpha) below log(minDisp/10):
    # DESeq2 then keeps the start value and refits them on the grid
    counts = _read(DATA / "thinned_counts.tsv.gz")
    sf = _read(DATA / "thinned_size_factors.tsv")["size_factor"].loc[counts.columns].to_numpy()
    ref = _read(DATA / "thinned_dispersions.tsv").loc[counts.index]
    disp = V.estimate_dispersions(counts.to_numpy(dtype=float), sf)
    escaped = ref.index[:3]
    assert (ref.loc[escaped, "disp_gene_iter"] == 1).all()
    assert disp["disp_grid"].to_numpy()[:3].all()
    np.testing.assert_allclose(disp["disp_gene_est"].to_numpy(), ref["disp_gene_est"].to_numpy(), rtol=1e-6)


def test_dispersions_with_design_match_deseq2(pasilla_counts):
    # ~ type + condition: not a one-way layout, so DESeq2 fits NB GLMs for mu
    ref = _read(DATA / "pasilla_dispersions_design.tsv")
    sub = pasilla_counts.loc[ref.index]
    sf = V.size_factors(pasilla_counts).to_numpy()
    disp = V.estimate_dispersions(sub.to_numpy(dtype=float), sf, _design("pasilla"))
    ok = ref["disp_gene_est"].notna().to_numpy()
    np.testing.assert_allclose(disp["disp_gene_est"].to_numpy()[ok], ref["disp_gene_est"].to_numpy()[ok], rtol=1e-5)


# ---------------------------------------------------------------- VST, exact branches


def test_pasilla_vst_matches_deseq2_reference_all_genes(pasilla_counts):
    ref = _read(DATA / "pasilla_reference_deseq2_vst.tsv.gz")
    res = V.vst(pasilla_counts, fit_type="parametric", blind=True, nsub=None)
    assert res.fit_type == "parametric" and res.nsub is None and res.blind
    assert res.values.shape == pasilla_counts.shape
    assert _max_abs_err(res, ref) < VST_ABS_TOL


CASES = [
    # run name in the fixtures, vst() keyword arguments
    ("full_parametric", dict(nsub=None, fit_type="parametric")),
    ("fast_parametric", dict(nsub=1000, fit_type="parametric")),
    ("full_mean", dict(nsub=None, fit_type="mean")),
    ("full_parametric_design", dict(nsub=None, blind=False)),
    ("fast_parametric_design", dict(nsub=1000, blind=False)),
]


@pytest.mark.parametrize("name", ["pasilla", "gse147507"])
@pytest.mark.parametrize("run,kwargs", CASES, ids=[c[0] for c in CASES])
def test_vst_matches_deseq2(name, run, kwargs, pasilla_counts, gse_counts, trends):
    counts = _counts(name, pasilla_counts, gse_counts)
    kwargs = dict(kwargs)
    if kwargs.get("blind") is False:
        kwargs["design"] = _design(name)
    res = _vst_once(name, counts, **kwargs)
    ref = _read(DATA / f"{name}_vst_{run}.tsv.gz")
    assert _max_abs_err(res, ref) < VST_ABS_TOL
    expected = trends[(trends.dataset == name) & (trends.run == run)].iloc[0]
    assert res.fit_type == expected.fit_type
    if expected.fit_type == "parametric":
        assert res.coefficients["a0"] == pytest.approx(expected.a0, rel=1e-6)
        assert res.coefficients["a1"] == pytest.approx(expected.a1, rel=1e-6)
    else:
        assert res.coefficients["mean"] == pytest.approx(expected.mean_disp, rel=1e-6)


@pytest.mark.parametrize("name", ["pasilla", "gse147507"])
def test_vst_fast_subset_is_deseq2s(name, pasilla_counts, gse_counts):
    counts = _counts(name, pasilla_counts, gse_counts)
    expected = (DATA / f"{name}_vst_fast_subset_genes.txt").read_text().split()
    res = _vst_once(name, counts, nsub=1000, fit_type="parametric")
    chosen = res.dispersions.index[res.dispersions["in_trend_subset"]]
    assert len(expected) == 1000
    assert sorted(chosen) == sorted(expected)
    assert res.nsub == 1000


# ---------------------------------------------------------------- VST, local trend


@pytest.mark.parametrize("name", ["pasilla", "gse147507"])
@pytest.mark.parametrize("run,nsub", [("full_local", None), ("fast_local", 1000)])
def test_vst_local_close_to_deseq2(name, run, nsub, pasilla_counts, gse_counts):
    counts = _counts(name, pasilla_counts, gse_counts)
    res = _vst_once(name, counts, fit_type="local", nsub=nsub)
    assert res.fit_type == "local"
    ref = _read(DATA / f"{name}_vst_{run}.tsv.gz")
    assert _max_abs_err(res, ref) < LOCAL_ABS_TOL


@pytest.mark.parametrize("name", ["pasilla", "gse147507"])
def test_local_trend_matches_locfit_on_grid(name, pasilla_counts, gse_counts):
    # the grid runs beyond the largest mean, so locfit's extrapolation is checked too
    counts = _counts(name, pasilla_counts, gse_counts)
    res = _vst_once(name, counts, fit_type="local", nsub=None)
    trend = res.trend
    assert trend.fit_type == "local"
    grid = pd.read_csv(DATA / f"{name}_local_trend_grid.tsv", sep="\t")
    assert grid["mean"].max() > res.dispersions["base_mean"].max()
    np.testing.assert_allclose(trend(grid["mean"].to_numpy()), grid["disp_fit"].to_numpy(), rtol=1e-6)


# ---------------------------------------------------------------- behaviour


def test_vst_small_input_falls_back_to_all_genes(pasilla_counts):
    sub = pasilla_counts.iloc[:3000]
    res = V.vst(sub, nsub=5000)
    assert res.nsub is None
    assert any("fewer than nsub" in note for note in res.notes)


def test_parametric_failure_falls_back_to_local(caplog):
    # dispersions that fall with the mean faster than a0 + a1/mu allows:
    # the Gamma GLM gives a negative asymptote, DESeq2 then uses local.
    means = np.geomspace(1, 1e4, 400)
    disps = 5.0 / means**2 + 1e-5
    with caplog.at_level("WARNING", logger="batchmix.vst"):
        trend = V.fit_dispersion_trend(means, disps, "parametric")
    assert trend.fit_type == "local"
    assert trend.notes and "parametric fit failed" in trend.notes[0]
    # the fallback reaches the log as a warning, not only the result
    assert [r.levelname for r in caplog.records if "parametric fit failed" in r.getMessage()] == ["WARNING"]


def test_unknown_fit_type_is_an_error(pasilla_counts):
    with pytest.raises(ValueError, match="unknown fit_type"):
        V.vst(pasilla_counts, fit_type="glmGamPoi")


def test_blind_false_needs_design(pasilla_counts):
    with pytest.raises(ValueError, match="design"):
        V.vst(pasilla_counts, blind=False, design=None)


def test_low_count_filter_rule():
    counts = pd.DataFrame(
        {"s1": [10, 9, 0, 50], "s2": [10, 10, 0, 0], "s3": [10, 10, 10, 0], "s4": [0, 10, 10, 0]},
        index=["a", "b", "c", "d"],
    )
    keep = V.low_count_filter(counts)  # default: >= 10 in >= 3 samples
    assert keep.to_dict() == {"a": True, "b": True, "c": False, "d": False}
    keep2 = V.low_count_filter(counts, min_count=10, min_samples=2)
    assert keep2.to_dict() == {"a": True, "b": True, "c": True, "d": False}


def test_mean_sd_flattens_after_vst(pasilla_counts):
    counts = pasilla_counts[pasilla_counts.sum(axis=1) > 0]
    sf = V.size_factors(counts)
    raw = np.log2(counts / sf + 1)
    res = V.vst(counts, nsub=None)
    before = V.mean_sd(raw)
    after = V.mean_sd(res.values)
    assert list(after.columns) == ["gene_id", "rank_of_mean", "mean", "sd", "running_median_sd"]
    assert after["rank_of_mean"].tolist() == list(range(1, len(counts) + 1))
    assert np.all(np.diff(after["mean"].to_numpy()) >= 0)

    # the spread of the running median over the mean range shrinks after the VST
    def spread(tab):
        r = tab["running_median_sd"].to_numpy()
        return np.quantile(r, 0.95) - np.quantile(r, 0.05)

    assert spread(after) < spread(before)


def test_mean_sd_running_median_by_hand():
    values = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0, 4.0], "b": [1.0, 1.0, 4.0, 3.0, 8.0]}, index=list("vwxyz"))
    tab = V.mean_sd(values, window=3)
    # means 0.5, 1, 3, 3, 6; sds: |a-b|/sqrt(2) = .707, 0, 1.414, 0, 2.828
    assert tab["gene_id"].tolist() == ["v", "w", "x", "y", "z"]
    s = np.sqrt(2)
    np.testing.assert_allclose(tab["sd"], [1 / s, 0, 2 / s, 0, 4 / s])
    np.testing.assert_allclose(tab["running_median_sd"], [(1 / s) / 2, 1 / s, 0, 2 / s, 2 / s])


# ---------------------------------------------------------------- fast-path equivalences


def test_integer_and_float_counts_give_identical_results(pasilla_counts):
    # integer counts are processed without a float64 copy of the matrix; a float
    # table (here also C-ordered, i.e. not pandas' usual layout) must give the same
    as_float = pd.DataFrame(
        np.ascontiguousarray(pasilla_counts.to_numpy(dtype=float)),
        index=pasilla_counts.index,
        columns=pasilla_counts.columns,
    )
    a = V.vst(pasilla_counts, nsub=1000)
    b = V.vst(as_float, nsub=1000)
    np.testing.assert_array_equal(a.values.to_numpy(), b.values.to_numpy())
    np.testing.assert_array_equal(a.size_factors.to_numpy(), b.size_factors.to_numpy())
    pd.testing.assert_frame_equal(a.dispersions, b.dispersions, check_exact=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_missing_or_infinite_counts_are_rejected(bad):
    counts = pd.DataFrame({"a": [1.0, bad, 3.0], "b": [2.0, 3.0, 4.0]})
    with pytest.raises(ValueError, match="missing or infinite"):
        V.size_factors(counts)


def test_ratio_size_factors_use_the_exact_median():
    """The median of ratios (one partition per sample) equals numpy's median, ties and even counts included."""
    rng = np.random.default_rng(3)
    for k in (1, 2, 3, 8, 101, 1000):
        y = rng.integers(1, 6, size=(k, 20)).astype(float)  # few values: many tied ratios
        counts = pd.DataFrame(y, columns=[f"s{i}" for i in range(20)])
        logy = np.log(y.T)  # samples × genes
        logy -= logy.mean(axis=0)
        expected = np.exp(np.median(logy, axis=1))
        # equal up to the summation order of the gene means; a wrong median element would be off by far more
        np.testing.assert_allclose(V.size_factors(counts).to_numpy(), expected, rtol=1e-14)


def test_blocked_line_search_matches_one_block(pasilla_counts, monkeypatch):
    # blocks of genes (workspace bound) and of rows (cache) must not change any iterate
    counts = pasilla_counts[pasilla_counts.sum(axis=1) > 0].iloc[:600]
    sf = V.size_factors(pasilla_counts).to_numpy()
    y = counts.to_numpy(dtype=float)
    one = V.estimate_dispersions(y, sf)
    monkeypatch.setattr(V, "_LINE_SEARCH_BLOCK", 7 * 97)  # 97 genes per block
    monkeypatch.setattr(V, "_EVAL_ROWS", 13)
    blocked = V.estimate_dispersions(y, sf)
    pd.testing.assert_frame_equal(one, blocked, check_exact=True)
