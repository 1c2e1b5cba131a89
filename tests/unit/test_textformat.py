"""batchmix.io.textformat writes every float exactly as Python's ``"%.12g" % x`` and tables as pandas does.

Every expected text comes from Python's own ``%`` operator (or pandas' ``to_csv``), never from the
code under test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from batchmix.io import textformat
from batchmix.io.tables import format_g, tsv_bytes


def _text(values: np.ndarray, na_rep: str = "NA") -> list[str]:
    """Each value's text from format_cells: its row without the NUL bytes."""
    chars = textformat.format_cells(values, na_rep=na_rep)
    return [bytes(row[row != 0]).decode() for row in chars]


def _python(values: np.ndarray, na_rep: str = "NA") -> list[str]:
    return [na_rep if x != x else "%.12g" % x for x in np.asarray(values, dtype=np.float64).tolist()]


def _ties(rng: np.random.Generator, n: int) -> np.ndarray:
    """12-digit decimals plus half a unit of their last digit, across magnitudes: the doubles nearest to
    them and their neighbours either side sit at or next to a rounding tie."""
    decimal = (rng.integers(10**11, 10**12, n) + 0.5) * 10.0 ** rng.integers(-300, 290, n)
    return np.concatenate([decimal, np.nextafter(decimal, 0), np.nextafter(decimal, np.inf)])


def _many_floats(rng: np.random.Generator, n: int) -> np.ndarray:
    bits = rng.integers(0, 2**64, n, dtype=np.uint64).view(np.float64)  # every exponent, NaN and inf included
    parts = [
        bits,
        rng.normal(size=n),
        rng.normal(size=n) * 10.0 ** rng.integers(-320, 300, n),
        10.0 ** rng.uniform(-20, 20, n),
        rng.uniform(size=n) ** 40,  # p-values down to the subnormals
        rng.integers(-(10**15), 10**15, n).astype(float),
        rng.integers(-1000, 1000, n).astype(float),
        np.array([round(x, int(d)) for x, d in zip(rng.normal(size=n // 4), rng.integers(0, 14, n // 4))]),
        _ties(rng, n // 4),
        10.0 ** np.arange(-323.0, 309.0),
        np.nextafter(10.0 ** np.arange(-300.0, 300.0), 0),
        np.nextafter(10.0 ** np.arange(-300.0, 300.0), np.inf),
        2.0 ** np.arange(-1074.0, 1024.0),
        np.array(
            [
                0.0,
                np.inf,
                np.nan,
                5e-324,
                2.2250738585072014e-308,
                1.7976931348623157e308,
                0.5,
                2.5,
                1 / 3,
                99999999999.95,
                999999999999.5,
                999999999999.4,
                1e-5,
                9.99999999999949e-5,
                9.9999999999995e-5,
                0.0001,
                123456789012.5,
                1234567890125.0,
                1e12,
                1e11,
            ]
        ),
    ]
    values = np.concatenate(parts)
    return np.concatenate([values, -values])


@pytest.mark.parametrize("seed", [0, 1])
def test_format_cells_is_python_percent_g(seed):
    values = _many_floats(np.random.default_rng(seed), 150_000)
    assert values.size > 1_000_000
    got, expected = _text(values), _python(values)
    wrong = [(x, g, e) for x, g, e in zip(values.tolist(), got, expected) if g != e]
    assert wrong == []


def test_format_cells_negative_zero_nan_and_its_text():
    values = np.array([-0.0, 0.0, np.nan, -np.inf, np.inf, -1e-310])
    assert _text(values, na_rep="NaN!") == ["-0", "0", "NaN!", "-inf", "inf", "-1e-310"]
    assert _text(np.array([np.nan, 1.5]), na_rep="a long missing value") == ["a long missing value", "1.5"]


def test_format_g_keeps_its_contract():
    values = _many_floats(np.random.default_rng(7), 20_000)
    assert format_g(values, na_rep="NA").tolist() == _python(values)
    assert format_g(values[:2000], digits=6, na_rep="-").tolist() == [
        "-" if x != x else "%.6g" % x for x in values[:2000].tolist()
    ]


def _pandas_tsv(df: pd.DataFrame) -> bytes:
    return df.to_csv(sep="\t", index=False, lineterminator="\n", float_format="%.12g", na_rep="NA").encode()


def test_tsv_bytes_is_pandas_to_csv():
    rng = np.random.default_rng(3)
    n = 5000
    df = pd.DataFrame(
        {
            "gene_id": [f"gène{i}" for i in range(n)],  # non-ASCII text
            "status": np.where(rng.random(n) < 0.9, "ok", "filtered:constant"),
            "x": _many_floats(rng, n)[:n],
            "count": rng.integers(-5, 500, n),
            "flag": rng.random(n) < 0.5,
            "empty": np.where(rng.random(n) < 0.5, "", "y"),
            "level": pd.Series(np.where(rng.random(n) < 0.1, None, "b01"), dtype=object),
            "p": rng.uniform(size=n) ** 30,
        }
    )
    assert tsv_bytes(df) == _pandas_tsv(df)
    assert tsv_bytes(df.iloc[:0]) == _pandas_tsv(df.iloc[:0])
    one_row = df.iloc[:1]
    assert tsv_bytes(one_row) == _pandas_tsv(one_row)


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"gene_id": ["a\x00b", "c"], "x": [1.0, 2.0]}),  # NUL: the filler byte
        pd.DataFrame({"gene_id": ["a", 5], "x": [1.0, 2.0]}),  # a number among the texts
    ],
)
def test_tsv_bytes_leaves_other_tables_to_pandas(frame):
    assert tsv_bytes(frame) is None
