"""The faster pieces of the data path (issue 12) give the same bytes and numbers as what they replace.

Every expected value comes from the slow reference the code replaced: Python's ``%`` formatting,
pandas' ``to_csv``, ``numpy.nanmedian`` over padded windows, ``numpy.unique(axis=0)`` and
``scipy.stats.norm.isf``.
"""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from batchmix.de import missingness_patterns
from batchmix.io import write_table
from batchmix.io.tables import format_g, tsv_text
from batchmix.pipeline.simpson import write_candidates
from batchmix.simpson.statistics import norm_isf
from batchmix.vst import running_median
from scipy import stats


def _awkward_floats(rng: np.random.Generator) -> np.ndarray:
    """Floats of every magnitude, with ties, powers of ten, zeros, infinities and NaN."""
    parts = [
        rng.normal(size=20000),
        rng.normal(size=20000) * 10.0 ** rng.integers(-40, 40, 20000),
        10.0 ** rng.uniform(-13, 14, 20000),
        rng.uniform(size=20000) ** 9,
        np.array([round(x, int(d)) for x, d in zip(rng.normal(size=5000), rng.integers(0, 13, 5000))]),
        rng.integers(-(10**9), 10**9, 5000).astype(float),
        10.0 ** np.arange(-20, 21),
        np.nextafter(10.0 ** np.arange(-12, 13), 0),
        np.nextafter(10.0 ** np.arange(-12, 13), np.inf),
        np.array([0.0, np.inf, np.nan, 0.5, 2.5, 1 / 3, 99999999999.95, 999999999999.5, 999999999999.4]),
        np.array([1.5e-5, 1e-4, 0.00012345678901234, 123456789012.0, 12345678901.25, 0.1 + 0.2]),
    ]
    values = np.concatenate(parts)
    return np.concatenate([values, -values])


def test_format_g_is_python_percent_g():
    values = _awkward_floats(np.random.default_rng(11))
    expected = ["NA" if np.isnan(x) else "%.12g" % x for x in values.tolist()]
    assert format_g(values, na_rep="NA").tolist() == expected


@pytest.mark.parametrize("digits", [6, 17])
def test_format_g_other_digits(digits):
    values = _awkward_floats(np.random.default_rng(3))[:3000]
    expected = ["NA" if np.isnan(x) else f"%.{digits}g" % x for x in values.tolist()]
    assert format_g(values, digits=digits, na_rep="NA").tolist() == expected


def _pandas_tsv(df: pd.DataFrame) -> str:
    return df.to_csv(sep="\t", index=False, lineterminator="\n", float_format="%.12g", na_rep="NA")


def _mixed_table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "gene_id": [f"g{i:05d}" for i in range(n)],
            "coef": rng.normal(size=n),
            "p": rng.uniform(size=n) ** 8,
            "n": rng.integers(0, 500, n),
            "ok": rng.random(n) > 0.5,
            "status": np.where(rng.random(n) > 0.2, "ok", "filtered:low_counts"),
            "note": pd.Series([None if i % 3 else "x y" for i in range(n)], dtype=object),
        }
    )
    df.loc[::7, "coef"] = np.nan
    df.loc[::11, "p"] = 0.0
    return df


def test_tsv_text_is_pandas_to_csv():
    df = _mixed_table(3000, np.random.default_rng(5))
    assert tsv_text(df) == _pandas_tsv(df)
    assert tsv_text(df.iloc[:0]) == _pandas_tsv(df.iloc[:0])


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"gene_id": ["a\tb", "c"], "x": [1.0, 2.0]}),  # a tab: csv quotes it
        pd.DataFrame({"gene_id": ['say "x"', "c"], "x": [1.0, 2.0]}),  # a quote
        pd.DataFrame({"x": [1.0, 2.0]}),  # one column: csv quotes an empty field
        pd.DataFrame({"gene_id": ["a", "b"], "when": pd.to_datetime(["2020-01-01", "2021-01-01"])}),
        pd.DataFrame({"gene_id": ["a", "b"], "x": pd.array([1, None], dtype="Int64")}),
    ],
)
def test_tsv_text_leaves_other_tables_to_pandas(frame, tmp_path):
    assert tsv_text(frame) is None
    write_table(frame, tmp_path / "t.tsv")
    assert (tmp_path / "t.tsv").read_text() == _pandas_tsv(frame)


def test_write_table_bytes_unchanged(tmp_path):
    df = _mixed_table(500, np.random.default_rng(8))
    write_table(df, tmp_path / "t.tsv.gz")
    assert gzip.decompress((tmp_path / "t.tsv.gz").read_bytes()).decode() == _pandas_tsv(df)


def _padded_nanmedian(x: np.ndarray, window: int) -> np.ndarray:
    half = window // 2
    padded = np.lib.stride_tricks.sliding_window_view(
        np.pad(x, (half, window - 1 - half), constant_values=np.nan), window
    )
    return np.nanmedian(padded, axis=1)


@pytest.mark.parametrize("n", [1, 2, 5, 50, 51, 999, 5000])
def test_running_median_is_padded_nanmedian(n):
    rng = np.random.default_rng(n)
    x = rng.gamma(2.0, size=n)
    x[::4] = x[0]  # ties
    for window in sorted({1, 2, 3, 4, max(1, n // 50), n, n + 3}):
        assert np.array_equal(running_median(x, window), _padded_nanmedian(x, window))


def test_running_median_with_nan_as_before():
    x = np.array([1.0, np.nan, 3.0, 2.0, 5.0, np.nan, 4.0])
    np.testing.assert_array_equal(running_median(x, 3), _padded_nanmedian(x, 3))


def test_missingness_patterns_is_numpy_unique():
    rng = np.random.default_rng(2)
    for shape in [(60, 9), (300, 64), (200, 501), (1, 3)]:
        for missing in (0.0, 0.03, 0.5):
            observed = rng.random(shape) >= missing
            observed[::5] = observed[0]
            patterns, inverse = np.unique(observed, axis=0, return_inverse=True)
            got_patterns, got_inverse = missingness_patterns(observed)
            np.testing.assert_array_equal(got_patterns, patterns)
            np.testing.assert_array_equal(got_inverse, inverse.reshape(-1))


def test_norm_isf_is_scipy():
    q = np.concatenate([10.0 ** -np.arange(1, 300, 0.7), np.random.default_rng(1).uniform(size=1000)])
    assert np.array_equal(norm_isf(q), stats.norm.isf(q))
    assert norm_isf(0.025) == stats.norm.isf(0.025)


def test_write_candidates_is_pandas_to_csv(tmp_path):
    rng = np.random.default_rng(4)
    table = pd.DataFrame(
        {
            "index_a": rng.integers(0, 20000, 2000).astype(np.int64),
            "index_b": rng.integers(0, 20000, 2000).astype(np.int64),
            "p": rng.uniform(size=2000) ** 12,
        }
    )
    for part in (table, table.iloc[:0]):
        write_candidates(part, tmp_path / "a.tsv")
        part.to_csv(tmp_path / "b.tsv", sep="\t", index=False, float_format="%.17g")
        assert (tmp_path / "a.tsv").read_bytes() == (tmp_path / "b.tsv").read_bytes()


def test_stage_registry_does_not_import_scipy_stats():
    """Every job imports the registry: scipy.stats (about 0.5 s) is left to the stages that use it."""
    code = (
        "import sys, batchmix.pipeline.registry; "
        "print(sorted(m for m in ('scipy.stats', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _round_by_text(values: np.ndarray) -> np.ndarray:
    """The definition: the double nearest to the value printed with 12 significant digits."""
    flat = [float(f"{x:.12g}") if np.isfinite(x) else x for x in values.reshape(-1).tolist()]
    return np.array(flat).reshape(values.shape)


@pytest.mark.parametrize("order", ["C", "F"])
def test_round_significant_in_blocks_is_the_text_round_trip(order):
    from batchmix.io.matrices import round_significant

    rng = np.random.default_rng(9)
    # more values than one block of the rounding (32,768), and not a multiple of it
    values = rng.normal(5, 2, (1007, 100)) * 10.0 ** rng.integers(-25, 25, (1, 100))
    values[::13, ::7] = np.nan
    values = np.asarray(values, order=order)
    rounded = round_significant(values)
    assert rounded.flags.f_contiguous == values.flags.f_contiguous
    np.testing.assert_array_equal(rounded, _round_by_text(values))


def test_pca_candidates_hold_the_whole_tables_choice(tmp_path):
    """The diagnostics read Parquet matrices a row group at a time: the genes the PCA chooses and its
    scores are those of the whole usable table (the stage's former code, reproduced here)."""
    from batchmix.diagnostics import pca
    from batchmix.io import read_matrix
    from batchmix.io.matrices import write_matrix
    from batchmix.pipeline.summary import pca_candidates

    rng = np.random.default_rng(6)
    n_genes, n_samples = 2600, 15  # three row groups of 1,024 genes
    genes = [f"g{i:04d}" for i in range(n_genes)]
    samples = [f"s{j}" for j in range(n_samples)]
    values = rng.normal(0, 1, (n_genes, n_samples)) * rng.uniform(0.1, 2, (n_genes, 1))
    values[100:400:3] = values[99]  # ties in variance
    corrected = values - rng.normal(0, 0.1, (n_genes, 1))
    values[5::97, 3] = np.nan
    corrected[7::89, 1] = np.nan
    expression = pd.DataFrame(values, index=pd.Index(genes, name="gene_id"), columns=samples)
    write_matrix(expression, tmp_path / "e.parquet")
    write_matrix(
        pd.DataFrame(corrected, index=expression.index, columns=samples[::-1]).iloc[:, ::-1], tmp_path / "c.parquet"
    )
    status = pd.Series(np.where(rng.random(n_genes) < 0.1, "filtered:low_counts", "ok"), index=genes)

    whole = read_matrix(tmp_path / "e.parquet")
    usable = whole.loc[status.reindex(whole.index).eq("ok").to_numpy()].dropna(how="any")
    other = read_matrix(tmp_path / "c.parquet").reindex(columns=whole.columns)
    usable = usable.loc[usable.index.isin(other.dropna(how="any").index)]
    expected = pca(usable)

    candidates, candidates_corrected = pca_candidates(str(tmp_path / "e.parquet"), str(tmp_path / "c.parquet"), status)
    assert len(candidates) < len(usable)
    assert pca(candidates).genes == expected.genes
    got = pca(candidates, genes=expected.genes)
    np.testing.assert_array_equal(got.scores.to_numpy(), expected.scores.to_numpy())
    np.testing.assert_array_equal(
        candidates_corrected.loc[expected.genes].to_numpy(), other.loc[expected.genes].to_numpy()
    )
