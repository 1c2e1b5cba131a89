"""batchmix.distributions against scipy.stats, bit for bit: the same doubles without its import."""

from __future__ import annotations

import numpy as np
import pytest
from batchmix.distributions import bh_adjust, chi2_sf, t_sf
from scipy import stats

EDGES = np.array([-np.inf, -1e300, -50.0, -3.0, -1.0, -1e-300, 0.0, 1e-300, 1e-8, 0.5, 1.0, 1.96, 3.0, 8.0, 40.0,
                  1e300, np.inf, np.nan])  # fmt: skip
DFS = np.array([-1.0, 0.0, 1e-3, 0.5, 1.0, 2.0, 3.5, 10.0, 97.0, 1e4, 1e8, np.inf, np.nan])


def _same(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and np.array_equal(a.view(np.int64), b.view(np.int64))


@pytest.mark.parametrize("ours, theirs", [(t_sf, stats.t.sf), (chi2_sf, stats.chi2.sf)])
def test_tail_probabilities_are_scipy_stats_bit_for_bit(ours, theirs):
    x, df = np.meshgrid(EDGES, DFS)
    assert _same(ours(x, df), theirs(x, df))
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(0, 3, 5000), rng.exponential(20, 5000)])
    df = rng.uniform(0.5, 600, x.size)
    assert _same(ours(x, df), theirs(x, df))
    # scalars and broadcasting, as the callers use them
    assert _same(ours(2.5, 7.0), theirs(2.5, 7.0))
    assert np.ndim(ours(2.5, 7.0)) == 0
    assert _same(ours(x[:10], 12.0), theirs(x[:10], 12.0))


def test_t_sf_far_tail_differs_from_one_minus_cdf():
    # the tail is computed directly (1 - cdf would give 0 here): a check that the function is the sf
    assert 0.0 < t_sf(60.0, 200.0) < 1e-100


def test_bh_adjust_is_false_discovery_control():
    rng = np.random.default_rng(3)
    for p in (
        rng.uniform(size=1000),
        np.concatenate([rng.uniform(size=500) ** 6, rng.uniform(size=500)]),
        np.round(rng.uniform(size=400), 2),  # ties
        np.array([0.0, 1.0, 0.5, 0.5, 1e-300]),
        np.array([0.3]),
        np.array([]),
    ):
        assert _same(bh_adjust(p), stats.false_discovery_control(p, method="bh"))
    # by hand: sorted 0.01, 0.03, 0.04, 0.5 times m / rank = 4, 2, 4/3, 1 gives 0.04, 0.06, 0.0533, 0.5;
    # the running minimum from the top makes 0.06 -> 0.0533
    assert np.allclose(bh_adjust(np.array([0.01, 0.04, 0.03, 0.5])), [0.04, 0.16 / 3, 0.16 / 3, 0.5])


def test_bh_adjust_refuses_values_outside_the_unit_interval():
    with pytest.raises(ValueError, match="between 0 and 1"):
        bh_adjust(np.array([0.1, np.nan]))
