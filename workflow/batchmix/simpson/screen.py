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

The bound of step 2.  For |x| <= a (a = ``bound_r`` < 1), atanh(x) = x + x^3 / 3 + x^5 / 5 + x^7 S(x^2)
with S(t) = sum over k >= 0 of t^k / (2k + 7), increasing in t, so 1/7 <= S(x^2) <= c_7 = S(a^2) =
(atanh(a) - a - a^3 / 3 - a^5 / 5) / a^7.  Hence atanh(x) <= x + x^3 / 3 + x^5 / 5 + c x^7 with c = c_7
for x >= 0 and c = 1/7 for x < 0 (where x^7 < 0).  A polynomial, so that the screen vectorises; on
[-a, a] it lies below the rational bound used before (x + x^3 / (3 (1 - x^2)) for x >= 0,
x + x^3 / 3 for x < 0), so it drops at least the pairs that one dropped.  With u_b these upper bounds
of y_b, P = sum of w_b u_b over u_b > 0, N = the sum over u_b < 0 (<= 0), W = sum w_b over the usable
batches and v_b = w_b / (1 + w_b tau2) the random-effects weights (tau2 >= 0 whatever it is):
sum v_b y_b <= l_hi P + l_lo N, where l_lo, l_hi are the smallest and largest 1 / (1 + w_b tau2).  If
that is <= 0, y_RE <= 0 < c.  Otherwise, as sum v_b >= l_lo W,
y_RE <= (l_hi P + l_lo N) / sqrt(l_lo W) = sqrt(l_lo) (rho P + N) / sqrt(W) <= (R P + N) / sqrt(W),
with rho = l_hi / l_lo = (1 + w_max tau2) / (1 + w_min tau2) <= R = w_max / w_min over all batches
(R = 1 for batches of equal size, where the bound is the fixed-effect z of the u_b).  So
y_RE <= max(0, (R P + N) / sqrt(W)), and a pair with R P + N < (c - slack) sqrt(W) cannot pass.

Margins.  The bound's derivative is 1 + x^2 + x^4 + 7 c x^6 <= 4.2 for |x| <= 0.9 (``bound_r``), so a
float32 error of ~1e-6 in r_b moves u_b by < 1e-5, within the ~1e-3 per batch that ``slack`` covers
(as for atanh in step 3, whose derivative is at most ~50 for |r_b| <= 0.99); R multiplies the error
of the positive part, and is 1 for equal batches.  :func:`screen_products` evaluates u_b in float32
arithmetic (c_7 rounded up; a relative error of a few 1e-7, < 1e-6 in u_b) and sums the w_b u_b in
float64, as :func:`screen_pairs` does throughout: rounding adds < 1e-5 per batch to that budget.
Comparisons of |r_b| with ``steep_r`` and ``bound_r`` are exact (float32 |r_b| against float64).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = [
    "atanh_upper",
    "coefficients32",
    "coefficients64",
    "count_past",
    "float32_up",
    "screen_pairs",
    "screen_products",
    "seventh_coefficient",
]


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def seventh_coefficient(bound_r):  # pragma: no cover - compiled
    """c_7 of the module docstring: (atanh(a) - a - a^3 / 3 - a^5 / 5) / a^7 at a = ``bound_r``, rounded up.

    The 1e-12 added covers the rounding of atanh and of the subtractions (a few 1e-16 at a <= 0.99).
    """
    a = bound_r
    return (math.atanh(a) - a - a**3 / 3.0 - a**5 / 5.0 + 1e-12) / a**7


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def float32_up(x):  # pragma: no cover - compiled
    """The smallest float32 >= x."""
    y = np.float32(x)
    return y if np.float64(y) >= x else np.nextafter(y, np.float32(np.inf))


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def atanh_upper(x, coefficients):  # pragma: no cover - compiled
    """An upper bound of atanh(x) for |x| <= bound_r: x + x^3 / 3 + x^5 / 5 + c x^7 (module docstring).

    ``coefficients`` = (1/3, 1/5, c_7, 1/7) in the precision of x; c = c_7 for x >= 0, 1/7 for
    x < 0.  Polynomial, so that it vectorises (no division).
    """
    third, fifth, c_positive, c_negative = coefficients
    x2 = x * x
    return x + x * x2 * (third + x2 * (fifth + x2 * (c_positive if x >= 0 else c_negative)))


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def coefficients64(bound_r):  # pragma: no cover - compiled
    """The coefficients of :func:`atanh_upper` in float64."""
    return 1.0 / 3.0, 1.0 / 5.0, seventh_coefficient(bound_r), 1.0 / 7.0


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def coefficients32(bound_r):  # pragma: no cover - compiled
    """The coefficients of :func:`atanh_upper` in float32 (c_7 rounded up)."""
    return np.float32(1.0 / 3.0), np.float32(1.0 / 5.0), float32_up(seventh_coefficient(bound_r)), np.float32(1.0 / 7.0)


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _needs_exact(r, both, weights, ratio, sign, c_lo, steep_r, bound_r, coefficients, zs, ws):  # pragma: no cover
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
        u = atanh_upper(x, coefficients)
        pos += w * (u + abs(u))
        neg += w * (u - abs(u))
        total_w += w
    if steep:
        return True
    if not loose and ratio * pos + neg < 2.0 * c_lo * math.sqrt(total_w):
        return False
    return _dersimonian_laird_passes(r, both, weights, flip, c_lo, zs, ws)


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _dersimonian_laird_passes(r, both, weights, flip, c_lo, zs, ws):  # pragma: no cover
    """True when flip * z_RE >= c_lo, z_RE the DerSimonian-Laird z of the float32 r_b of ``both``."""
    # as batchmix.simpson.statistics.random_effects
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


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"}, inline="never")
def _add_batch(r, flip, w_up, w_down, coefficients, largest, bound):  # pragma: no cover
    """Step 2's sums over one batch, column by column (a loop the compiler vectorises).

    The largest |r_b| (``largest``, float32 like r_b), and w_b ((R + 1) u_b + (R - 1) |u_b|) =
    2 w_b (R max(u_b, 0) + min(u_b, 0)) added to ``bound`` (float64), from ``w_up`` = w_b (R + 1)
    and ``w_down`` = w_b (R - 1); u_b in float32 arithmetic (``flip`` and ``coefficients`` float32).  A
    function of its own: inlined into the screen, the loop is not vectorised.
    """
    for t in range(r.size):
        x = flip[t] * r[t]
        ax = abs(x)
        largest[t] = ax if ax > largest[t] else largest[t]
        u = np.float64(atanh_upper(x, coefficients))
        bound[t] += w_up * u + w_down * abs(u)


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="never")
def _remove_batch(usable, w, total_w, count):  # pragma: no cover
    """Take a batch that is unusable for the row's gene out of the columns' weights and counts."""
    for t in range(usable.size):
        total_w[t] -= w * usable[t]
        count[t] -= usable[t]


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="never")
def _undecided(
    r_pooled, threshold, count, min_batches, largest, bound, total_w, c_lo, steep_r, bound_r, todo
):  # pragma: no cover - compiled
    """Flag the columns of a row that steps 1-2 leave open (past the pooled bound, enough batches, and
    steep, or not dropped by the bound); returns how many.  Branch-free, for the vectoriser."""
    n = 0
    for t in range(r_pooled.size):
        big = np.float64(largest[t])  # exact: the comparisons are those of |r_b| itself
        dropped = (big <= bound_r) & (bound[t] < 2.0 * c_lo * math.sqrt(total_w[t]))
        flag = (abs(r_pooled[t]) >= threshold) & (count[t] >= min_batches) & ((big > steep_r) | (not dropped))
        todo[t] = flag
        n += flag
    return n


@numba.njit(cache=True, nogil=True, error_model="numpy")
def count_past(r_pooled, threshold):  # pragma: no cover - compiled
    """How many entries of ``r_pooled`` have |r_T| >= ``threshold`` (no temporary arrays)."""
    n = 0
    for value in r_pooled.ravel():
        n += abs(value) >= threshold
    return n


# Columns of a row screened at once by screen_products: its accumulators stay in L1.
_COLUMNS = 256


@numba.njit(cache=True, nogil=True, error_model="numpy")
def screen_products(
    products,
    n_rows,
    r_pooled,
    row0,
    threshold,
    usable_a,
    usable_b_t,
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
    """Screen rows row0 .. row0 + n_rows of a block pair from their per-batch products.

    ``products[b, (i - row0) * n_cols + j]`` (C-contiguous, each batch's n_rows x n_cols matrix at
    the start of its row, n_cols the columns of ``r_pooled``) is r_b of (row i, column j) (0 where b
    is unusable for either gene);
    ``r_pooled`` the float32 r_T of the whole block pair, screened at ``threshold`` (the pooled bound
    less its margin: past it, |z_T| >= c - slack); ``usable_a`` the uint8 usable batches of the rows'
    genes (rows x B), ``usable_b_t`` those of the columns' genes transposed (B x columns);
    ``weights`` the w_b (floored at 1).  Pairs kept are appended to ``out_i``/``out_j`` from position
    ``n_out``, row by row; returns the new count.  ``same``: only j > i (pairs inside one block).

    The steps of the module docstring, with the sums of step 2 taken for a row's columns together,
    batch by batch over contiguous columns (vectorised, no branch per batch), and the few pairs
    that step 2 cannot drop finished one by one.
    """
    n_batches = products.shape[0]
    n_cols = r_pooled.shape[1]
    r = np.empty(n_batches, np.float32)
    both = np.empty(n_batches, np.uint8)
    zs = np.empty(n_batches)
    ws = np.empty(n_batches)
    # a few arrays per loop: the vectoriser gives up on loops that need many run-time alias checks
    flip = np.empty(_COLUMNS, np.float32)
    largest = np.empty(_COLUMNS, np.float32)  # the largest usable |r_b|
    bound = np.empty(_COLUMNS)  # twice R P + N
    total_w = np.empty(_COLUMNS)
    count = np.empty(_COLUMNS)  # usable batches
    todo = np.empty(_COLUMNS, np.bool_)
    coefficients = coefficients32(bound_r)
    up, down = ratio + 1.0, ratio - 1.0  # 2 (R max(u, 0) + min(u, 0)) = (R + 1) u + (R - 1) |u|
    # the weight and the count of the batches usable for each column's gene
    usable_w = np.zeros(n_cols)
    usable_k = np.zeros(n_cols)
    for b in range(n_batches):
        for j in range(n_cols):
            usable_w[j] += weights[b] * usable_b_t[b, j]
            usable_k[j] += usable_b_t[b, j]
    for ii in range(n_rows):
        i = row0 + ii
        for j0 in range(i + 1 if same else 0, n_cols, _COLUMNS):
            n = min(_COLUMNS, n_cols - j0)
            for t in range(n):
                # y_b = flip * atanh(r_b) must reach c_lo: flip is minus the sign of z_T
                flip[t] = -1.0 if r_pooled[i, j0 + t] > 0 else 1.0
                largest[t] = 0.0
                bound[t] = 0.0
                total_w[t] = usable_w[j0 + t]
                count[t] = usable_k[j0 + t]
            for b in range(n_batches):
                if usable_a[i, b]:
                    start = ii * n_cols + j0
                    w = weights[b]
                    _add_batch(products[b, start : start + n], flip, w * up, w * down, coefficients, largest, bound)
                else:
                    # r_b is exactly 0 for the whole row: nothing to add to the bound
                    _remove_batch(usable_b_t[b, j0 : j0 + n], weights[b], total_w, count)
            r_row = r_pooled[i, j0 : j0 + n]
            if not _undecided(
                r_row, threshold, count, min_batches, largest, bound, total_w, c_lo, steep_r, bound_r, todo
            ):
                continue
            for t in range(n):
                if not todo[t]:
                    continue
                j = j0 + t
                if largest[t] <= steep_r:
                    for b in range(n_batches):
                        r[b] = products[b, ii * n_cols + j]
                        both[b] = usable_a[i, b] & usable_b_t[b, j]
                    if not _dersimonian_laird_passes(r, both, weights, np.float64(flip[t]), c_lo, zs, ws):
                        continue
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
    coefficients = coefficients64(bound_r)
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
            if _needs_exact(
                r, both, weights, ratio, 1.0 if rt > 0 else -1.0, c_lo, steep_r, bound_r, coefficients, zs, ws
            ):
                out_i[n_out] = i
                out_j[n_out] = j
                n_out += 1
    return n_out
