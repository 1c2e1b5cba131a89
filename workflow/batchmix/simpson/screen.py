"""The float32 screen of the random-effects scan, compiled with numba: which pairs past the pooled bound
must be recomputed in float64.

Imported only by the scan of a block pair (:mod:`batchmix.simpson.pairs`), so that importing
:mod:`batchmix.simpson` does not load numba.  The screen decides nothing reported: every pair it keeps
is recomputed and tested exactly in float64; it must only never drop a pair whose exact p is <= the
bound.

Per pair with k >= min_batches usable batches and |r_T| past the pooled bound (which, with its own
margin, already implies |z_T| >= c - slack), in the direction the pooled r_T asks for (z_RE of the
opposite sign, |z_RE| >= c), with y_b = -sign(r_T) atanh(r_b):

1. a usable |r_b| > ``steep_r``: kept (atanh is steep there, float32 rounding matters);
2. otherwise, when every usable |r_b| <= ``bound_r``, a cheap upper bound of y_RE without atanh and
   without tau2 (below): the pair is dropped when the bound is below c - slack;
3. otherwise the DerSimonian-Laird z_RE from the float32 r_b (atanh and the rest in float64): kept
   when it is past c - slack.

The bound of step 2.  For x >= 0, atanh(x) <= x + x^3 / (3 (1 - x^2)), and for x < 0,
atanh(x) <= x + x^3 / 3 (the Taylor series, every term of the sign of x).  With u_b these upper bounds
of y_b, P = sum of w_b u_b over u_b > 0, N = the sum over u_b < 0 (<= 0), W = sum w_b over the usable
batches and v_b = w_b / (1 + w_b tau2) the random-effects weights (tau2 >= 0 whatever it is):
sum v_b y_b <= l_hi P + l_lo N, where l_lo, l_hi are the smallest and largest 1 / (1 + w_b tau2).  If
that is <= 0, y_RE <= 0 < c.  Otherwise, as sum v_b >= l_lo W,
y_RE <= (l_hi P + l_lo N) / sqrt(l_lo W) = sqrt(l_lo) (rho P + N) / sqrt(W) <= (R P + N) / sqrt(W),
with rho = l_hi / l_lo = (1 + w_max tau2) / (1 + w_min tau2) <= R = w_max / w_min over all batches
(R = 1 for batches of equal size, where the bound is the fixed-effect z of the u_b).  So
y_RE <= max(0, (R P + N) / sqrt(W)), and a pair with R P + N < (c - slack) sqrt(W) cannot pass.

Margins.  The bounds' derivatives are at most ~17 for |x| <= 0.9 (``bound_r``), so a float32 error of
~1e-6 in r_b moves u_b by < 1e-4, within the ~1e-3 per batch that ``slack`` covers (as for atanh in
step 3, whose derivative is at most ~50 for |r_b| <= 0.99); R multiplies the error of the positive
part, and is 1 for equal batches.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["screen_products", "screen_pairs"]


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _needs_exact(r, both, weights, ratio, sign, c_lo, steep_r, bound_r, zs, ws):  # pragma: no cover
    """True when the pair (per-batch r, usable-for-both flags) may have exact p <= the bound.

    ``sign`` is that of z_T: z_RE must reach c - slack with the opposite sign.
    """
    flip = -sign  # y_b = flip * z_b must reach c_lo
    # branch-free over the batches (the sign of r_b is a coin flip for the branch predictor); r_b is
    # exactly 0 where b is unusable for either gene (their unit rows are zero there)
    steep = 0
    loose = 0
    pos = 0.0  # twice P
    neg = 0.0  # twice N
    total_w = 0.0
    for b in range(weights.size):
        x = flip * np.float64(r[b])
        w = weights[b] * both[b]
        ax = abs(x)
        steep += ax > steep_r
        loose += ax > bound_r
        x2 = x * x
        # x + x^3 / (3 (1 - x^2)) for x >= 0, x + x^3 / 3 for x < 0
        u = x + x2 * x / 3.0 * (1.0 + (x >= 0.0) * (x2 / (1.0 - x2)))
        pos += w * (u + abs(u))
        neg += w * (u - abs(u))
        total_w += w
    if steep:
        return True
    if not loose and ratio * pos + neg < 2.0 * c_lo * math.sqrt(total_w):
        return False
    # the DerSimonian-Laird z_RE, as batchmix.simpson.statistics.random_effects
    m = 0
    sw = 0.0
    sw2 = 0.0
    swz = 0.0
    swz2 = 0.0
    for b in range(weights.size):
        if both[b]:
            z = math.atanh(np.float64(r[b]))
            w = weights[b]
            zs[m] = z
            ws[m] = w
            m += 1
            sw += w
            sw2 += w * w
            swz += w * z
            swz2 += w * z * z
    z_bar = swz / sw
    q = max(swz2 - sw * z_bar * z_bar, 0.0)
    tau2 = 0.0
    if m > 1:
        tau2 = max(0.0, (q - (m - 1)) / (sw - sw2 / sw))
    if tau2 > 0.0:
        num = 0.0
        den = 0.0
        for t in range(m):
            v = 1.0 / (1.0 / ws[t] + tau2)
            num += v * zs[t]
            den += v
        z_re = num / math.sqrt(den)
    else:
        z_re = swz / math.sqrt(sw)
    return flip * z_re >= c_lo


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _usable_both(usable_a, i, usable_b, j, both):  # pragma: no cover
    """Fill ``both`` with the batches usable for row i and column j; returns their count."""
    k = 0
    for b in range(both.size):
        both[b] = usable_a[i, b] & usable_b[j, b]
        k += both[b]
    return k


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz"})
def screen_products(
    products,
    r_pooled,
    row0,
    threshold,
    usable_a,
    usable_b,
    weights,
    ratio,
    min_batches,
    same,
    c_lo,
    steep_r,
    bound_r,
    out_i,
    out_j,
    n_out,
):  # pragma: no cover - compiled
    """Screen rows row0 .. row0 + products.shape[1] of a block pair from their per-batch products.

    ``products[b, i - row0, j]`` is r_b of (row i, column j) (0 where b is unusable for either gene);
    ``r_pooled`` the float32 r_T of the whole block pair, screened at ``threshold`` (the pooled bound
    less its margin: past it, |z_T| >= c - slack); ``usable_a``/``usable_b`` the uint8 usable rows of
    the two blocks' genes; ``weights`` the w_b (floored at 1).  Pairs kept are appended to
    ``out_i``/``out_j`` from position ``n_out``, row by row; returns the new count.  ``same``: only
    j > i (pairs inside one block).
    """
    n_batches, n_rows, n_cols = products.shape
    r = np.empty(n_batches, np.float32)
    both = np.empty(n_batches, np.uint8)
    zs = np.empty(n_batches)
    ws = np.empty(n_batches)
    for ii in range(n_rows):
        i = row0 + ii
        for j in range(i + 1 if same else 0, n_cols):
            rt = r_pooled[i, j]
            if abs(rt) < threshold or _usable_both(usable_a, i, usable_b, j, both) < min_batches:
                continue
            for b in range(n_batches):
                r[b] = products[b, ii, j]
            if _needs_exact(r, both, weights, ratio, 1.0 if rt > 0 else -1.0, c_lo, steep_r, bound_r, zs, ws):
                out_i[n_out] = i
                out_j[n_out] = j
                n_out += 1
    return n_out


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz"})
def screen_pairs(
    left,
    right,
    starts,
    r_pooled,
    threshold,
    usable_a,
    usable_b,
    weights,
    ratio,
    min_batches,
    same,
    c_lo,
    steep_r,
    bound_r,
    out_i,
    out_j,
):  # pragma: no cover - compiled
    """:func:`screen_products` of a whole block pair with the per-batch r_b computed pair by pair.

    ``left``/``right``: the unit per-batch rows of the two blocks (float32), columns batch by batch,
    batch b in ``starts[b]:starts[b + 1]``.  For block pairs where few pairs pass the pooled bound
    (K x N work instead of the block^2 x N of the matrix products).  Returns the count kept.
    """
    n_batches = starts.size - 1
    n_rows, n_cols = r_pooled.shape
    r = np.zeros(n_batches, np.float32)
    both = np.empty(n_batches, np.uint8)
    zs = np.empty(n_batches)
    ws = np.empty(n_batches)
    n_out = 0
    for i in range(n_rows):
        for j in range(i + 1 if same else 0, n_cols):
            rt = r_pooled[i, j]
            if abs(rt) < threshold or _usable_both(usable_a, i, usable_b, j, both) < min_batches:
                continue
            for b in range(n_batches):
                total = np.float32(0.0)
                if both[b]:
                    for s in range(starts[b], starts[b + 1]):
                        total += left[i, s] * right[j, s]
                r[b] = total
            if _needs_exact(r, both, weights, ratio, 1.0 if rt > 0 else -1.0, c_lo, steep_r, bound_r, zs, ws):
                out_i[n_out] = i
                out_j[n_out] = j
                n_out += 1
    return n_out
