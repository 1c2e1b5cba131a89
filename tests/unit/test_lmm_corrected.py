"""corrected_values / corrected_expression: y - Z b̂ bit for bit, whichever way the product is taken.

The expected matrices are computed here as ``Y - B @ Z.T`` with numpy's matrix product, B the
conditional modes read gene by gene from the fit's long BLUP table (a zero where a mode is missing).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from batchmix import lmm
from batchmix.lmm.fitting import corrected_values


def _samples(n_per_batch: int = 6, batches: int = 5) -> pd.DataFrame:
    n = n_per_batch * batches
    return pd.DataFrame(
        {
            "batch": np.repeat([f"b{i}" for i in range(batches)], n_per_batch),
            "condition": np.tile(["ctrl", "treat"], n // 2),
            "age": np.linspace(20, 60, n),
        },
        index=[f"s{i:02d}" for i in range(n)],
    )


def _expression(samples: pd.DataFrame, n_genes: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    batch = pd.factorize(samples["batch"])[0]
    shift = rng.normal(0, 1.0, (n_genes, batch.max() + 1))[:, batch]
    values = 8 + shift + rng.normal(0, 0.5, (n_genes, len(samples)))
    values[:3] = 5 + rng.normal(0, 0.5, (3, len(samples)))  # no batch effect: singular fits, modes of 0
    return pd.DataFrame(values, index=[f"g{i}" for i in range(n_genes)], columns=samples.index)


def _expected(expression: pd.DataFrame, samples: pd.DataFrame, fit: lmm.LMMFit, group: str) -> np.ndarray:
    """Y - B Z' (fitted genes), Z the group's design columns (levels, then terms), by numpy."""
    parsed = lmm.prepare(fit.formula, samples, reml=fit.reml)
    values = expression.to_numpy(dtype=float, copy=True)
    for block in parsed.random.blocks:
        if block.group != group:
            continue
        columns = [(level, term) for level in block.levels for term in block.terms]
        modes = fit.blups[fit.blups["group"] == group]
        fitted, rows = [], []
        for i, gene in enumerate(expression.index):
            mine = modes[modes["gene_id"] == gene]
            if mine.empty:
                continue
            by_column = dict(zip(zip(mine["level"], mine["term"]), mine["value"]))
            fitted.append(i)
            rows.append([by_column.get(c, 0.0) for c in columns])
        B = np.array(rows)
        values[fitted] = values[fitted] - np.where(np.isnan(B), 0.0, B) @ block.Z.T
    return values


@pytest.mark.parametrize(
    "formula",
    ["~ condition + (1 | batch)", "~ condition + (age | batch)", "~ condition + (1 | batch) + (0 + age | batch)"],
)
def test_corrected_values_is_y_minus_z_b(formula):
    samples = _samples()
    expression = _expression(samples, 40, seed=3)
    fit = lmm.fit(expression, samples, formula)
    assert (fit.gene_fits["status"] == "singular").any() or "age" in formula
    got = corrected_values(expression, samples, fit, groups=["batch"])
    np.testing.assert_array_equal(got.view(np.uint64), _expected(expression, samples, fit, "batch").view(np.uint64))
    frame = lmm.corrected_expression(expression, samples, fit, groups=["batch"])
    np.testing.assert_array_equal(frame.to_numpy().view(np.uint64), got.view(np.uint64))


def test_corrected_values_into_a_column_major_slice_and_with_unfitted_genes():
    samples = _samples()
    expression = _expression(samples, 30, seed=5)
    expression.iloc[7] = 4.0  # constant: not fitted, left as it is
    expression.iloc[11, 4] = np.nan  # a missing sample: its own design
    fit = lmm.fit(expression, samples, "~ condition + (1 | batch)")
    expected = _expected(expression, samples, fit, "batch")
    whole = np.full((len(samples), 50), -1.0).T  # genes x samples, column-major
    out = whole[10:40]
    returned = corrected_values(expression, samples, fit, groups=["batch"], out=out)
    assert returned is out
    np.testing.assert_array_equal(np.isnan(whole[10:40]), np.isnan(expected))
    same = ~np.isnan(expected)
    np.testing.assert_array_equal(whole[10:40][same].view(np.uint64), expected[same].view(np.uint64))
    assert (whole[:10] == -1.0).all() and (whole[40:] == -1.0).all()
    np.testing.assert_array_equal(whole[17], expression.iloc[7].to_numpy())


def test_a_changed_sample_sheet_gets_its_own_design():
    """The design built for a sheet is reused only for an equal sheet: after a fit on one sheet, a fit
    on the same sheet with one sample moved to another batch is that of the changed sheet."""
    samples = _samples()
    other = samples.copy()
    other.iloc[3, 0] = "b4"
    expression = _expression(samples, 12, seed=9)
    first = lmm.fit(expression, samples, "~ condition + (1 | batch)")
    assert lmm.fit(expression, samples.copy(), "~ condition + (1 | batch)").gene_fits.equals(first.gene_fits)
    changed = lmm.fit(expression, other, "~ condition + (1 | batch)")
    assert not np.allclose(changed.gene_fits["loglik"], first.gene_fits["loglik"])
    # the changed sheet's Z: sample 3 in batch b4 (its modes are placed on it)
    corrected = corrected_values(expression, other, changed, groups=["batch"])
    np.testing.assert_array_equal(
        corrected.view(np.uint64), _expected(expression, other, changed, "batch").view(np.uint64)
    )
