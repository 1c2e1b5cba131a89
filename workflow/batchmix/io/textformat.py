"""Exact ``%.12g`` text of float64 arrays, vectorised, and tab-separated tables built as bytes.

batchmix's result tables carry their floats as ``"%.12g" % x`` (what pandas' ``to_csv`` writes with
``float_format="%.12g"``). Python formats one value in about 0.4 us; a gene's LMM row, its BLUPs and
its covariances are 60 values. Here the text of every value of an array is built with whole-array
numpy operations, with the same characters as Python's ``%`` for every value:

* the 12 significant digits are those of the correctly rounded decimal, computed from the exact
  product ``|x| * 10**k`` (k = 11 - the decimal exponent): one multiplication when ``10**k`` is a
  double (0 <= k <= 22) and the result is at least 1e-3 from a tie, otherwise a double-double
  product (Dekker's exact product with ``10**k`` held as the sum of two doubles, within 1e-18 of a
  unit of the 12th digit; values below 1e-280, subnormals included, first scaled by 2**200);
* a value whose rounding that does not settle (within 1e-9 of a tie; within 1e-9 of a power of ten
  when ``10**k`` is not exact), a value above 1e280 and the infinities are formatted by Python's
  ``%`` itself;
* the layout is C's ``%g``: positional when the exponent of the rounded value is in [-4, 12),
  otherwise ``d.ddde±XX``; trailing zeros and a trailing point removed; ``-0`` for negative zero.

Each text is laid out in a fixed slot with NUL bytes where nothing shows (a mask per sign, form and
number of digits kept); a table is its cells' slots side by side, and dropping the NUL bytes leaves
its lines (:func:`tsv_bytes`).

numba would format faster still, but loading it and its compiled code costs about 0.6 s of CPU in
every process (measured with a cached kernel), more than the formatting of a 20,000-gene table.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["DIGITS", "format_cells", "tsv_bytes"]

# Significant digits of the fast path (batchmix's tables: ``%.12g``).
DIGITS = 12

# Powers of ten held as double-doubles, for the values from 1e-280 to 1e280 (k from -269 to 292, one
# either side for the adjustment of k); below 1e-280, down to the subnormals, the value is first
# multiplied by 2**_TINY_SHIFT (exactly) and 10**k held divided by it. Larger values go to Python's %.
_RANGE = (-285, 295, 0)
_TINY_RANGE = (265, 345, 200)
_LOWEST, _HIGHEST = 1e-280, 1e280
# 10**k for k = 0..22: every one is exact in float64.
_EXACT_POWERS = np.array([10.0**k for k in range(23)])
# A fraction part this close to 0.5, or a scaled value this close to 1e11 or 1e12, is left to Python.
_MARGIN = 1e-9
# Dekker's splitting constant 2**27 + 1.
_SPLIT = 134217729.0


@functools.cache
def _powers(k_min: int, k_max: int, shift: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """10**k / 2**shift as hi + lo (hi the nearest double, lo the nearest double to the rest), and hi
    split in two halves of 26 bits (Dekker), for k in [k_min, k_max]."""
    hi, lo = [], []
    for k in range(k_min, k_max + 1):
        # exactly num / den; Python's division of integers is correctly rounded
        num, den = (10**k, 2**shift) if k >= 0 else (1, 10**-k * 2**shift)
        h = num / den
        p, q = h.as_integer_ratio()
        hi.append(h)
        lo.append((num * q - p * den) / (den * q))
    hi_arr, lo_arr = np.array(hi), np.array(lo)
    big = _SPLIT * hi_arr
    hi_hi = big - (big - hi_arr)
    return hi_arr, lo_arr, hi_hi, hi_arr - hi_hi


def _scaled_double_double(a: np.ndarray, k: np.ndarray, table: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``a * 10**k / 2**shift`` as p + t: p = fl(a * hi), t the exact error of that product plus a * lo.

    For ``a`` and k in the table's range, and the product near 1e11..1e12, no intermediate overflows
    or underflows, so Dekker's product is exact and p + t is within 2**-104 of the product."""
    hi, lo, hi_hi, hi_lo = (part[k - table[0]] for part in _powers(*table))
    big = _SPLIT * a
    a_hi = big - (big - a)
    a_lo = a - a_hi
    p = a * hi
    error = ((a_hi * hi_hi - p) + a_hi * hi_lo + a_lo * hi_hi) + a_lo * hi_lo
    return p, error + a * lo


def _settle(a: np.ndarray, k: np.ndarray, table: tuple, rounds: int = 2) -> tuple:
    """The rounded 12 digits of ``a * 10**k / 2**shift`` (k adjusted so that it lies in [1e11, 1e12)),
    exactly: ``(N, k, proven)``; ``proven`` False where the double-double cannot settle it."""
    k_min, k_max, shift = table
    proven = np.ones(a.size, dtype=bool)
    for _ in range(rounds):
        p, t = _scaled_double_double(a, k, table)
        below = (p - 1e11) + t < 0
        above = (p - 1e12) + t >= 0
        if not (below.any() or above.any()):
            break
        k = k + below - above
        proven &= (k >= k_min) & (k <= k_max)
        k = np.clip(k, k_min, k_max)
    else:
        p, t = _scaled_double_double(a, k, table)
    exact_power = (k >= 0) & (k <= 22) & (shift == 0)  # lo is 0: p + t is a * 10**k exactly
    edge = (np.abs((p - 1e11) + t) < _MARGIN) | (np.abs((p - 1e12) + t) < _MARGIN)
    proven &= ((p - 1e11) + t >= 0) & ((p - 1e12) + t < 0) & (exact_power | ~edge)
    whole = np.floor(p)
    fraction = (p - whole) + t  # p - whole is exact: the fraction bits of p
    step = np.floor(fraction)  # -1, 0 or 1 when t moves p + t across an integer
    whole += step
    fraction -= step
    proven &= np.abs(fraction - 0.5) >= _MARGIN
    return whole + (fraction > 0.5), k, proven


def _decimal(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 12 digits N (1e11 <= N < 1e12, as float64) and exponent X of each value's correctly rounded
    ``%.12e`` form, and whether they are proven; NaN, zeros, infinities and values the fast path cannot
    settle are not (the caller writes them)."""
    a = np.abs(values)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        k = (DIGITS - 1) - np.floor(np.log10(a))
        simple = (k >= 0) & (k <= 22)
        k_int = np.where(simple, k, 0.0).astype(np.int64)
        scaled = a * _EXACT_POWERS[k_int]  # one rounding: within 6.2e-5 of a * 10**k (< 1e12)
        whole = np.rint(scaled)
        fraction = scaled - np.floor(scaled)
        # a value this far from a tie, within [1e11, 1e12) once rounded, rounds as a * 10**k does
        done = simple & (np.abs(fraction - 0.5) > 1e-3) & (scaled >= 1e11) & (whole < 1e12)
    proven = done.copy()
    for table, careful in (
        (_RANGE, np.flatnonzero(~done & (a >= _LOWEST) & (a <= _HIGHEST))),
        (_TINY_RANGE, np.flatnonzero(~done & (a > 0) & (a < _LOWEST))),
    ):
        if careful.size:
            k_careful = np.clip(k[careful], table[0], table[1]).astype(np.int64)
            n_careful, k_careful, ok = _settle(np.ldexp(a[careful], table[2]), k_careful, table)
            whole[careful], k_int[careful], proven[careful] = n_careful, k_careful, ok
    # 999999999999.5 and up round to 1e12: one digit fewer, the exponent one up
    carry = whole >= 1e12
    whole = np.where(carry, 1e11, whole)
    exponent = (DIGITS - 1) - k_int + carry
    # placeholders (1e11, exponent 0) where Python decides: the layout needs 12 digits everywhere
    return np.where(proven, whole, 1e11), np.where(proven, exponent, 0), proven


# A value's text is laid out in a slot of 13 words of 4 bytes, with NUL where a character is not shown
# (dropping the NUL bytes leaves the text):
#   word 0     "-0.0": the sign, then the lead "0." and a first zero of 1e-4 <= |x| < 0.1
#   word 1     "00": the lead's second and third zeros (the fourth byte and each digit group's, NUL)
#   words 2-5  the 12 digits in groups of three, "ddd" + NUL: the integer part of a positional text,
#              the whole of one below 1, the first digit of an exponential one
#   word 6     "." the decimal point
#   words 7-10 the digits again: those after the point
#   word 11    "e" and the exponent's sign
#   word 12    the exponent's three digits (two shown when it is below 100)
# A mask per (sign, form, digits kept) says which bytes show: form 0-15 is positional with exponent
# form - 4, 16 exponential with two exponent digits, 17 with three.
_WORDS = 13
_FORMS = 18


def _digit_bytes(i: int, copy: int) -> int:
    """The byte of digit ``i`` (0-11) in copy 0 (words 2-5) or 1 (words 7-10) of a slot."""
    return 4 * (2 + 5 * copy) + 4 * (i // 3) + i % 3


@functools.cache
def _masks() -> np.ndarray:
    """The shown bytes of each (sign, form, kept) code, as (codes, _WORDS) uint32 words (0xFF bytes)."""
    masks = np.zeros((2, _FORMS, DIGITS + 1, 4 * _WORDS), dtype=np.uint8)
    for negative in (0, 1):
        for form in range(_FORMS):
            for kept in range(1, DIGITS + 1):
                shown = [0] if negative else []
                if form < 16:
                    x = form - 4
                    if x < 0:  # 0.000ddd
                        shown += [1, 2, *[3, 4, 5][: -x - 1]]
                        shown += [_digit_bytes(i, 0) for i in range(kept)]
                    else:  # the integer part, then the point and the digits after it
                        shown += [_digit_bytes(i, 0) for i in range(x + 1)]
                        if kept > x + 1:
                            shown += [24, *(_digit_bytes(i, 1) for i in range(x + 1, kept))]
                else:
                    shown += [_digit_bytes(0, 0)]
                    if kept > 1:
                        shown += [24, *(_digit_bytes(i, 1) for i in range(1, kept))]
                    shown += [44, 45, *([48] if form == 17 else []), 49, 50]
                masks[negative, form, kept, shown] = 0xFF
    return masks.reshape(-1, 4 * _WORDS).view(np.uint32)


def _word(text: bytes) -> np.uint32:
    return np.frombuffer(text.ljust(4, b"\0"), dtype=np.uint32)[0]


# "ddd" + NUL for 0-999 as one word; the digits kept of a group (3 minus its trailing zeros; 0 for 0)
_GROUP_WORDS = np.frombuffer(b"".join(b"%03d\0" % i for i in range(1000)), dtype=np.uint32)
_GROUP_KEPT = np.array([0] + [len(f"{i:03d}".rstrip("0")) for i in range(1, 1000)], dtype=np.int64)
# the words that do not depend on the value: "-0.0", "00", "."
_TEMPLATE = np.zeros(_WORDS, dtype=np.uint32)
_TEMPLATE[[0, 1, 6]] = _word(b"-0.0"), _word(b"00"), _word(b".")
_EXPONENT_SIGN = np.array([_word(b"e+"), _word(b"e-")], dtype=np.uint32)


def format_cells(values: np.ndarray, na_rep: str = "NA") -> np.ndarray:
    """The ``"%.12g" % x`` text of each value (``na_rep`` for NaN) as bytes, one row per value.

    Parameters
    ----------
    values : numpy.ndarray
        Floats (any shape; taken flat).
    na_rep : str
        The text of NaN (without NUL).

    Returns
    -------
    numpy.ndarray
        uint8, values × width: each row holds the value's ASCII text with NUL bytes in and after it;
        the row without its NUL bytes is the text.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    whole, exponent, proven = _decimal(v)
    chars = _layout(whole, exponent, np.signbit(v))
    na = na_rep.encode()
    if len(na) > chars.shape[1]:
        chars = np.concatenate([chars, np.zeros((v.size, len(na) - chars.shape[1]), dtype=np.uint8)], axis=1)
    nan = np.isnan(v)
    if nan.any():
        chars[nan] = np.frombuffer(na.ljust(chars.shape[1], b"\0"), dtype=np.uint8)
    zero = v == 0
    if zero.any():  # "0", "-0"
        chars[zero] = 0
        chars[zero, 1] = ord("0")
        chars[zero & np.signbit(v), 0] = ord("-")
    # infinities, and the values the fast path cannot settle: Python's % itself
    for i in np.flatnonzero(~proven & ~nan & ~zero).tolist():
        text = (f"%.{DIGITS}g" % v[i]).encode()
        chars[i] = 0
        chars[i, : len(text)] = np.frombuffer(text, dtype=np.uint8)
    return chars


def _layout(whole: np.ndarray, exponent: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """The ``%g`` text of ±N·10**(X-11) in slots (values × 4·_WORDS bytes, NUL where nothing shows)."""
    m = whole.size
    # the four groups of three digits; every quotient is at least 1e-9 from an integer below it (or an
    # integer), so its floor is exact
    groups = np.empty((m, 4), dtype=np.int64)
    rest = whole
    for j, unit in enumerate((1e9, 1e6, 1e3)):
        top = np.floor(rest / unit)
        groups[:, j] = top
        rest = rest - top * unit
    groups[:, 3] = rest
    # digits kept: up to the last group that is not 000 (the first never is)
    kept = np.where(
        groups[:, 3] > 0,
        9 + _GROUP_KEPT[groups[:, 3]],
        np.where(
            groups[:, 2] > 0,
            6 + _GROUP_KEPT[groups[:, 2]],
            np.where(groups[:, 1] > 0, 3 + _GROUP_KEPT[groups[:, 1]], _GROUP_KEPT[groups[:, 0]]),
        ),
    )
    magnitude = np.abs(exponent)
    form = np.where((exponent >= -4) & (exponent < DIGITS), exponent + 4, np.where(magnitude < 100, 16, 17))
    slots = np.empty((m, _WORDS), dtype=np.uint32)
    slots[:] = _TEMPLATE
    digit_words = np.take(_GROUP_WORDS, groups)
    slots[:, 2:6] = digit_words
    slots[:, 7:11] = digit_words
    slots[:, 11] = np.take(_EXPONENT_SIGN, (exponent < 0).view(np.uint8))
    slots[:, 12] = np.take(_GROUP_WORDS, np.minimum(magnitude, 999))
    slots &= np.take(_masks(), (negative.view(np.uint8) * _FORMS + form) * (DIGITS + 1) + kept, axis=0)
    return slots.view(np.uint8)


def tsv_bytes(names: list[str], columns: list) -> bytes:
    """A tab-separated table as bytes: a header line of ``names``, then a line per row, each ending "\\n".

    Parameters
    ----------
    names : list of str
        The column names (no tab, quote or line break).
    columns : list
        One entry per column, in order, all of the same length: a float64 array (written
        :func:`format_cells`, ``NA`` for NaN), or ``(codes, texts)``: an integer array of positions in
        ``texts``, a list of str (no tab, quote, line break or NUL).

    Returns
    -------
    bytes
        The same bytes as joining each row's cells with tabs.

    The rows are built :data:`_BLOCK_CELLS` cells at a time, which bounds the memory a long table takes
    on the way (and keeps the block's arrays in the cache); the bytes do not depend on the blocks.
    """
    header = ("\t".join(names) + "\n").encode()
    n_rows = len(columns[0][0] if isinstance(columns[0], tuple) else columns[0]) if columns else 0
    if n_rows == 0:
        return header
    floats = [np.asarray(c, dtype=np.float64).reshape(-1) if not isinstance(c, tuple) else None for c in columns]
    texts = [None if f is not None else _text_table(c[1]) for f, c in zip(floats, columns)]
    codes = [None if f is not None else np.asarray(c[0], dtype=np.intp) for f, c in zip(floats, columns)]
    step = max(256, _BLOCK_CELLS // len(columns))
    parts = [header]
    for start in range(0, n_rows, step):
        rows = slice(start, min(n_rows, start + step))
        parts.append(_block_bytes(floats, texts, codes, rows))
    return b"".join(parts)


# Cells per block of tsv_bytes.
_BLOCK_CELLS = 1 << 18


def _text_table(texts: list[str]) -> np.ndarray:
    """The UTF-8 bytes of each text, one row each, NUL-padded to the longest."""
    encoded = [t.encode() for t in texts]
    width = max(1, max(map(len, encoded), default=1))
    return np.frombuffer(b"".join(t.ljust(width, b"\0") for t in encoded), dtype=np.uint8).reshape(-1, width)


def _block_bytes(floats: list, texts: list, codes: list, rows: slice) -> bytes:
    """The lines of rows ``rows`` (each column's cells in slots side by side, NUL bytes dropped)."""
    float_columns = [j for j, f in enumerate(floats) if f is not None]
    blocks: list = [None] * len(floats)
    if float_columns:
        # every float column in one call: the per-call work is paid once
        chars = format_cells(np.concatenate([floats[j][rows] for j in float_columns]), na_rep="NA")
        n = chars.shape[0] // len(float_columns)
        # the bytes no value of a column shows here (the lead, the exponent, ...) are left out: found
        # by OR-ing the slots of each column, as words
        per_column = chars.reshape(len(float_columns), n, -1)
        if per_column.shape[2] % 4 == 0:
            used = np.bitwise_or.reduce(per_column.view(np.uint32), axis=1).view(np.uint8) != 0
        else:
            used = per_column.any(axis=1)
        for i, j in enumerate(float_columns):
            shown = np.flatnonzero(used[i])
            blocks[j] = np.take(per_column[i], shown, axis=1) if shown.size else per_column[i][:, :1]
    for j, table in enumerate(texts):
        if table is not None:
            # np.take copies whole rows; fancy indexing goes byte by byte through short rows
            blocks[j] = np.take(table, codes[j][rows], axis=0)
    n = blocks[0].shape[0]
    grid = np.zeros((n, sum(b.shape[1] + 1 for b in blocks)), dtype=np.uint8)
    at = 0
    for j, block in enumerate(blocks):
        width = block.shape[1]
        grid[:, at : at + width] = block
        grid[:, at + width] = ord("\n") if j == len(blocks) - 1 else ord("\t")
        at += width + 1
    return grid[grid != 0].tobytes()
