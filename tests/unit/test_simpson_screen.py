"""The numba screen of the random-effects scan (batchmix.simpson.screen) against the float64
DerSimonian-Laird z of the same per-batch r_b: it may keep too many pairs, never too few.

The per-batch products are given directly (synthetic r_b: heterogeneous, near the threshold, past
``bound_r`` and ``steep_r``), so that pairs sit right at c - slack, where a wrong bound shows.  The
mutation tests run the same check on a screen with a deliberately wrong bound and expect it to fail.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from batchmix.simpson import screen
from batchmix.simpson.statistics import random_effects

STEEP_R, BOUND_R = 0.99, 0.9
C_LO = 1.91  # c - slack of a bound of 0.05
THRESHOLD = np.float32(0.05)
MIN_BATCHES = 3


def synthetic(seed: int, weights: np.ndarray, n_rows: int = 40, n_cols: int = 300):
    """Per-batch r_b (B x rows x cols, float32; 0 where unusable for either gene), r_T and usable flags.

    A quarter of the pairs each: r_b drawn around a common mean with spread (tau2 > 0); every usable
    r_b equal, at the value that puts z_RE just past or just short of c - slack (tau2 = 0, where the
    bound is tightest); noise; the smaller batches strongly correlated and the larger ones not.  A few
    have an |r_b| past ``bound_r`` or ``steep_r``.  300 columns: more than one chunk of the screen's
    columns.
    """
    rng = np.random.default_rng(seed)
    n_batches = weights.size
    usable_a = (rng.random((n_rows, n_batches)) < 0.85).astype(np.uint8)
    usable_b = (rng.random((n_cols, n_batches)) < 0.85).astype(np.uint8)
    both = usable_a[:, None, :] & usable_b[None, :, :]  # rows x cols x B
    r_pooled = (rng.choice([-1.0, 1.0], (n_rows, n_cols)) * rng.uniform(0.0, 0.5, (n_rows, n_cols))).astype(np.float32)
    flip = np.where(r_pooled > 0, -1.0, 1.0)
    kind = rng.integers(0, 4, (n_rows, n_cols))
    mean = rng.normal(0.0, 0.35, (n_rows, n_cols, 1))
    spread = rng.normal(mean, rng.uniform(0.0, 0.4, (n_rows, n_cols, 1)), (n_rows, n_cols, n_batches))
    w_total = (both * weights).sum(axis=2)
    # z_RE = atanh(x) sqrt(W) when every r_b is x: just past or short of C_LO, with flip's sign
    target = C_LO * (1.0 + rng.uniform(-0.02, 0.02, (n_rows, n_cols)))
    equal = np.tanh(target / np.sqrt(np.maximum(w_total, 1.0))) * flip
    r = np.where(kind[..., None] == 0, np.clip(spread, -0.999, 0.999), 0.0)
    r = np.where(kind[..., None] == 1, np.clip(equal, -0.999, 0.999)[..., None], r)
    r = np.where(kind[..., None] == 2, rng.normal(0.0, 0.3, r.shape).clip(-0.98, 0.98), r)
    # the small batches strongly one way, the large ones near 0: tau2 > 0 lifts z_RE above the
    # fixed-effect z, which is what R pays for
    small = weights <= np.median(weights)
    lifted = np.where(small, rng.uniform(0.2, 0.9, r.shape), rng.uniform(-0.15, 0.1, r.shape)) * flip[..., None]
    r = np.where(kind[..., None] == 3, lifted, r)
    # a few steep and loose batches
    pick = rng.random(r.shape) < 0.01
    r = np.where(pick, rng.choice([-1.0, 1.0], r.shape) * rng.uniform(0.9, 0.999, r.shape), r)
    r = np.where(both.astype(bool), r, 0.0).astype(np.float32)
    return np.ascontiguousarray(r.transpose(2, 0, 1)), r_pooled, usable_a, usable_b, both.astype(bool)


def needed(r, r_pooled, both, weights, same, margin=1e-6):
    """Pairs the screen must keep: past the pooled threshold, >= MIN_BATCHES usable, and z_RE of the
    float32 r_b (float64 DerSimonian-Laird) past C_LO + margin against the sign of r_T."""
    n_batches, n_rows, n_cols = r.shape
    per_pair = r.transpose(1, 2, 0).reshape(-1, n_batches).astype(np.float64)
    usable = both.reshape(-1, n_batches)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = random_effects(per_pair, usable, weights).z.reshape(n_rows, n_cols)
    flip = np.where(r_pooled > 0, -1.0, 1.0)
    mask = (np.abs(r_pooled) >= THRESHOLD) & (both.sum(axis=2) >= MIN_BATCHES)
    if same:
        mask &= np.triu(np.ones((n_rows, n_cols), bool), k=1)
    return mask & (flip * z >= C_LO + margin), mask


def run_products(kernel, r, r_pooled, usable_a, usable_b, weights, ratio, same, rows=(0, None)):
    """The screen over the rows in tiles of ``rows[1]`` rows (all at once when None)."""
    n_batches, n_rows, n_cols = r.shape
    out_i = np.empty(n_rows * n_cols, np.int64)
    out_j = np.empty(n_rows * n_cols, np.int64)
    n_out = 0
    tile = rows[1] or n_rows
    usable_b_t = np.ascontiguousarray(usable_b.T)
    for row0 in range(0, n_rows, tile):
        n = min(tile, n_rows - row0)
        flat = np.zeros((n_batches, n * n_cols + 16), np.float32)
        flat[:, : n * n_cols] = r[:, row0 : row0 + n].reshape(n_batches, -1)
        n_out = kernel(
            flat,
            n,
            r_pooled,
            row0,
            THRESHOLD,
            usable_a,
            usable_b_t,
            weights,
            ratio,
            MIN_BATCHES,
            same,
            C_LO,
            STEEP_R,
            BOUND_R,
            out_i,
            out_j,
            n_out,
        )
    return out_i[:n_out], out_j[:n_out]


def keeps_every_needed_pair(kernel, seed, weights, ratio=None, same=False, tile=None):
    r, r_pooled, usable_a, usable_b, both = synthetic(seed, weights)
    if same:
        r_pooled = r_pooled[:, : r_pooled.shape[0]].copy()
        r, usable_b, both = r[:, :, : r_pooled.shape[0]].copy(), usable_b[: r_pooled.shape[0]], both[:, : r.shape[1]]
    ratio = float(weights.max() / weights.min()) if ratio is None else ratio
    got_i, got_j = run_products(kernel, r, r_pooled, usable_a, usable_b, weights, ratio, same, (0, tile))
    must, allowed = needed(r, r_pooled, both, weights, same)
    kept = np.zeros_like(must)
    kept[got_i, got_j] = True
    return must, allowed, kept, (got_i, got_j)


WEIGHTS = {
    "equal": np.full(8, 1.0),
    "equal_large": np.full(20, 22.0),
    "unequal": np.array([1.0, 2.0, 4.0, 7.0, 10.0, 12.0, 3.0, 5.0]),
    "unequal_large": np.array([5.0, 60.0, 5.0, 60.0, 5.0, 60.0, 5.0, 60.0]),
}


@pytest.mark.parametrize("name", list(WEIGHTS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_screen_products_keeps_every_pair_past_the_random_effects_bound(name, seed):
    must, allowed, kept, (got_i, got_j) = keeps_every_needed_pair(screen.screen_products, seed, WEIGHTS[name])
    assert must.sum() >= 50  # the check has pairs to lose
    assert not (must & ~kept).any(), "the screen dropped a pair whose z_RE passes"
    assert not (kept & ~allowed).any(), "the screen kept a pair short of the pooled bound or min_batches"
    # row by row, columns ascending: the order the exact stage (and its output) relies on
    order = got_i.astype(np.int64) * must.shape[1] + got_j
    assert (np.diff(order) > 0).all()
    # the cheap bound drops most pairs past the pooled bound (else the screen is pointless)
    assert kept.sum() < 0.6 * allowed.sum()


def test_screen_products_inside_one_block_and_in_tiles_of_rows():
    """``same``: only j > i; tiles of 7 rows give the pairs of the whole, in the same order."""
    weights = WEIGHTS["unequal"]
    must, allowed, kept, whole = keeps_every_needed_pair(screen.screen_products, 3, weights, same=True)
    assert must.sum() >= 10 and not (must & ~kept).any() and not (kept & ~allowed).any()
    _, _, _, tiled = keeps_every_needed_pair(screen.screen_products, 3, weights, same=True, tile=7)
    np.testing.assert_array_equal(whole[0], tiled[0])
    np.testing.assert_array_equal(whole[1], tiled[1])


def test_steep_and_loose_pairs_are_left_to_the_exact_stage_or_dersimonian_laird():
    """A pair with a usable |r_b| > steep_r is kept whatever its z_RE; one past bound_r only when its
    float32 z_RE passes."""
    weights = np.full(4, 10.0)
    r = np.zeros((4, 1, 3), np.float32)
    r[:, 0, 0] = [0.995, -0.3, -0.3, -0.3]  # steep: kept although z_RE is far short
    r[:, 0, 1] = [0.95, -0.3, -0.3, -0.3]  # loose, z_RE short: dropped by DerSimonian-Laird
    r[:, 0, 2] = [0.95, 0.5, 0.5, 0.5]  # loose, z_RE past: kept
    r_pooled = np.full((1, 3), -0.3, np.float32)  # z_RE must be >= C_LO
    usable_a = np.ones((1, 4), np.uint8)
    usable_b = np.ones((3, 4), np.uint8)
    got_i, got_j = run_products(screen.screen_products, r, r_pooled, usable_a, usable_b, weights, 1.0, False)
    assert list(got_j) == [0, 2] and list(got_i) == [0, 0]


def test_atanh_upper_bound_is_an_upper_bound_and_tighter_than_the_rational_one():
    x = np.linspace(-BOUND_R, BOUND_R, 20001)
    c7 = screen.seventh_coefficient(BOUND_R)
    assert c7 >= (math.atanh(BOUND_R) - BOUND_R - BOUND_R**3 / 3 - BOUND_R**5 / 5) / BOUND_R**7
    coefficients64 = (1.0 / 3.0, 1.0 / 5.0, c7, 1.0 / 7.0)
    coefficients32 = tuple(np.float32(c) for c in (1.0 / 3.0, 1.0 / 5.0, 0.0, 1.0 / 7.0))
    coefficients32 = (*coefficients32[:2], screen.float32_up(c7), coefficients32[3])
    assert np.float64(coefficients32[2]) >= c7
    upper64 = np.array([screen.atanh_upper(v, coefficients64) for v in x])
    upper32 = np.array([screen.atanh_upper(np.float32(v), coefficients32) for v in x.astype(np.float32)])
    exact32 = np.arctanh(x.astype(np.float32).astype(np.float64))
    assert (upper64 >= np.arctanh(x) - 1e-15).all()
    assert (upper32 >= exact32 - 1e-6).all()  # float32 evaluation: within the margin of the docstring
    rational = x + x**3 / 3 * (1 + (x >= 0) * (x * x / (1 - x * x)))
    assert (upper64 <= rational + 1e-15).all()


def test_screen_pairs_and_screen_products_keep_every_needed_pair_of_real_vectors():
    """The pair-by-pair screen (per-batch inner products of unit rows) and the matrix-product screen
    on the same vectors both keep every pair whose float32 z_RE passes."""
    rng = np.random.default_rng(5)
    sizes = [6, 9, 12, 25, 25]
    weights = np.array([s - 3.0 for s in sizes])
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n_genes = 60
    common = rng.standard_normal((n_genes, 1)) * 0.8
    values = rng.standard_normal((n_genes, starts[-1])) + common * rng.standard_normal((1, starts[-1]))
    unit = np.zeros_like(values, dtype=np.float32)
    usable = (rng.random((n_genes, len(sizes))) < 0.9).astype(np.uint8)
    for b in range(len(sizes)):
        block = values[:, starts[b] : starts[b + 1]]
        block = block - block.mean(axis=1, keepdims=True)
        unit[:, starts[b] : starts[b + 1]] = block / np.linalg.norm(block, axis=1, keepdims=True)
        unit[usable[:, b] == 0, starts[b] : starts[b + 1]] = 0.0
    left, right = unit[:25], unit[25:]
    r = np.stack([left[:, starts[b] : starts[b + 1]] @ right[:, starts[b] : starts[b + 1]].T for b in range(5)])
    r_pooled = (rng.choice([-1.0, 1.0], (25, 35)) * rng.uniform(0.0, 0.3, (25, 35))).astype(np.float32)
    both = usable[:25, None, :].astype(bool) & usable[None, 25:, :].astype(bool)
    must, allowed = needed(r, r_pooled, both, weights, False)
    assert must.sum() >= 5
    ratio = float(weights.max() / weights.min())
    out_i = np.empty(r_pooled.size, np.int64)
    out_j = np.empty(r_pooled.size, np.int64)
    args = (r_pooled, THRESHOLD, usable[:25], usable[25:], weights, ratio, MIN_BATCHES, False)
    n_out = screen.screen_pairs(left, right, starts, *args, C_LO, STEEP_R, BOUND_R, out_i, out_j)
    for got_i, got_j in [
        (out_i[:n_out], out_j[:n_out]),
        run_products(screen.screen_products, r, r_pooled, usable[:25], usable[25:], weights, ratio, False),
    ]:
        kept = np.zeros_like(must)
        kept[got_i, got_j] = True
        assert not (must & ~kept).any() and not (kept & ~allowed).any()


def test_count_past_counts_both_signs_at_the_threshold():
    r_pooled = np.array([[0.05, -0.05, 0.0499], [-0.3, 0.2, 0.0]], np.float32)
    assert screen.count_past(r_pooled, np.float32(0.05)) == 4


# Mutations: the same checks on a screen with a wrong bound must fail.


def _mutated_screen(monkeypatch, coefficients):
    """screen_products compiled afresh with coefficients32 returning ``coefficients``."""

    @numba.njit
    def wrong(bound_r):
        return coefficients

    monkeypatch.setattr(screen, "coefficients32", wrong)
    return numba.njit(error_model="numpy")(screen.screen_products.py_func)


def test_mutation_without_the_seventh_order_term_drops_a_needed_pair(monkeypatch):
    """x + x^3/3 + x^5/5 (c_7 = 0) is below atanh for x > 0: the check must catch it."""
    f32 = np.float32
    kernel = _mutated_screen(monkeypatch, (f32(1 / 3), f32(1 / 5), f32(0.0), f32(1 / 7)))
    lost = 0
    for seed in range(3):
        must, _, kept, _ = keeps_every_needed_pair(kernel, seed, WEIGHTS["equal"])
        lost += int((must & ~kept).sum())
    assert lost > 0


def test_mutation_with_the_rational_bound_cut_short_drops_a_needed_pair(monkeypatch):
    """x + x^3/3 alone (the Taylor series cut after two terms) is too low for x > 0."""
    f32 = np.float32
    kernel = _mutated_screen(monkeypatch, (f32(1 / 3), f32(0.0), f32(0.0), f32(0.0)))
    must, _, kept, _ = keeps_every_needed_pair(kernel, 0, WEIGHTS["equal"])
    assert (must & ~kept).any()


def test_mutation_without_the_weight_ratio_drops_a_needed_pair():
    """R = 1 with unequal batches (the fixed-effect bound of the u_b) is not a bound of z_RE."""
    lost = 0
    for seed in range(3):
        weights = WEIGHTS["unequal_large"]
        must, _, kept, _ = keeps_every_needed_pair(screen.screen_products, seed, weights, ratio=1.0)
        lost += int((must & ~kept).sum())
    assert lost > 0
