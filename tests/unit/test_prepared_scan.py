"""The Simpson scan's data prepared once (``simpson_prepare``): streamed, saved, memory-mapped, and the
same numbers as :func:`batchmix.simpson.prepare` in memory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from batchmix import simpson
from batchmix.simpson.prepare import PREPARE_BLOCK_GENES, SimpsonData, prepare, prepare_saved, row_blocks

ARRAYS = ("values", "pooled", "within", "batch_residuals", "usable", "batch_weights", "batch_codes")


def _bits(array) -> np.ndarray:
    array = np.asarray(array)
    return np.ascontiguousarray(array).view(np.uint8)


def assert_same_data(a: SimpsonData, b: SimpsonData) -> None:
    for name in ARRAYS:
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert np.array_equal(_bits(x), _bits(y)), name
    assert list(a.genes) == list(b.genes)
    assert a.genes_excluded.to_dict() == b.genes_excluded.to_dict()
    assert list(a.genes_excluded.index) == list(b.genes_excluded.index)
    assert (a.df_pooled, a.df_within, a.batch_labels, a.min_sd, a.zero_value) == (
        b.df_pooled,
        b.df_within,
        b.batch_labels,
        b.min_sd,
        b.zero_value,
    )
    assert list(a.samples) == list(b.samples)
    for dtype in (np.float32, np.float64):
        assert np.array_equal(_bits(a.unit_rows("pooled", dtype)), _bits(b.unit_rows("pooled", dtype)))
        unit_a, bounds_a = a.unit_batch_sorted(dtype)
        unit_b, bounds_b = b.unit_batch_sorted(dtype)
        assert bounds_a == bounds_b
        assert np.array_equal(_bits(unit_a), _bits(unit_b))
    assert np.array_equal(_bits(a.unit_rows("within")), _bits(b.unit_rows("within")))


@pytest.fixture(scope="module")
def study():
    """More genes than one block, with the genes prepare leaves out: non-finite, flat, few expressed."""
    rng = np.random.default_rng(11)
    n_genes, n_batches, per_batch = PREPARE_BLOCK_GENES + 1500, 6, 5
    n = n_batches * per_batch
    batch = pd.Series(np.repeat([f"run{k}" for k in range(n_batches)], per_batch), index=[f"s{i}" for i in range(n)])
    shift = rng.normal(0, 1.5, (n_genes, n_batches))[:, np.repeat(np.arange(n_batches), per_batch)]
    values = 4.0 + shift + rng.normal(0, 1, (n_genes, n))
    values[7, 3] = np.nan  # non-finite
    values[20] = 5.0  # constant
    values[33] = 4.0 + shift[33]  # no within-batch variance
    values[50, :] = 1.0  # every sample at the zero value: no batch usable
    values[50, :2] = 9.0  # two expressed samples in run0: fewer than 3
    frame = pd.DataFrame(values, index=[f"g{i}" for i in range(n_genes)], columns=batch.index)
    covariates = rng.normal(size=(n, 1))
    return frame, batch, covariates


def _blocks_of(values: np.ndarray, size: int):
    def read():
        for start in range(0, values.shape[0], size):
            yield values[start : start + size]

    return read


@pytest.mark.parametrize("reader_block", [1000, 7, 100_000])
@pytest.mark.parametrize("options", [{}, {"genes": 3000, "zero_value": 1.0}, {"covariates": True, "min_sd": 0.5}])
def test_prepare_saved_gives_the_numbers_of_prepare(study, tmp_path, reader_block, options):
    frame, batch, covariates = study
    options = dict(options)
    if options.pop("covariates", False):
        options["covariates"] = covariates
    in_memory = prepare(frame, batch, **options)
    saved = prepare_saved(
        tmp_path / "prepared",
        _blocks_of(frame.to_numpy(), reader_block),
        frame.index,
        frame.columns,
        batch,
        units=simpson.UNITS_RANDOM_EFFECTS,
        **options,
    )
    # memory-mapped, read-only, with the unit rows the scan multiplies already there
    assert isinstance(saved.pooled, np.memmap) and not saved.pooled.flags.writeable
    assert ("batch_sorted", np.dtype(np.float32).str) in saved.cache
    assert_same_data(in_memory, saved)
    assert set(saved.genes_excluded.index) >= {"g7", "g20", "g33"}
    assert saved.genes_excluded["g7"] == "missing or non-finite values"
    if "zero_value" in options:
        assert not np.asarray(saved.usable)[list(saved.genes).index("g50")].any()


def test_scans_of_saved_and_in_memory_data_are_identical(study, tmp_path):
    frame, batch, _ = study
    in_memory = prepare(frame, batch)
    saved = prepare_saved(tmp_path / "p", _blocks_of(frame.to_numpy(), 512), frame.index, frame.columns, batch)
    blocks = simpson.block_pairs(in_memory.n_genes, 2048)
    for a, b in blocks[:3]:
        x = simpson.scan_block_pair(in_memory, a, b, fdr=0.2)
        y = simpson.scan_block_pair(saved, a, b, fdr=0.2)
        assert len(x) > 0
        pd.testing.assert_frame_equal(x, y, check_exact=True)


def test_save_and_load_round_trip(study, tmp_path):
    frame, batch, _ = study
    data = prepare(frame.iloc[:300], batch, zero_value=1.0)
    data.unit_rows("within", np.float32)
    data.save(tmp_path / "d")
    loaded = SimpsonData.load(tmp_path / "d")
    assert_same_data(data, loaded)
    assert ("within", np.dtype(np.float32).str) in loaded.cache
    unloaded = SimpsonData.load(tmp_path / "d", mmap=False)
    assert not isinstance(unloaded.values, np.memmap)
    assert_same_data(data, unloaded)


def test_a_folder_that_is_not_prepared_data_is_refused(tmp_path):
    (tmp_path / "meta.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="not a prepared Simpson data set"):
        SimpsonData.load(tmp_path)


def test_no_scannable_gene_prepares_an_empty_data_set(study, tmp_path):
    frame, batch, _ = study
    flat = pd.DataFrame(5.0, index=["a", "b", "c"], columns=frame.columns)
    saved = prepare_saved(tmp_path / "e", _blocks_of(flat.to_numpy(), 2), flat.index, flat.columns, batch)
    assert saved.n_genes == 0 and saved.values.shape == (0, flat.shape[1])
    assert list(saved.genes_excluded.index) == ["a", "b", "c"]


@pytest.mark.parametrize("n_rows", [0, 1, 63, 64, 4096, 4097, 19516, 60000, 250_000])
def test_row_blocks_cover_the_rows_from_multiples_of_64(n_rows):
    blocks = row_blocks(n_rows)
    covered = np.concatenate([np.arange(b.start, b.stop) for b in blocks]) if blocks else np.zeros(0)
    assert np.array_equal(covered, np.arange(n_rows))
    assert all(b.start % 64 == 0 for b in blocks)
    assert all(b.stop - b.start <= PREPARE_BLOCK_GENES + 64 for b in blocks)
    # the fewest blocks of at most about PREPARE_BLOCK_GENES rows, none of them small
    assert len(blocks) == -(-n_rows // PREPARE_BLOCK_GENES)
    if len(blocks) > 1:
        assert min(b.stop - b.start for b in blocks) >= PREPARE_BLOCK_GENES // 4


def test_rows_are_written_in_order_or_refused(study, tmp_path):
    frame, batch, _ = study
    values = frame.to_numpy()

    def too_few():
        yield values[:100]

    with pytest.raises(ValueError, match="rows"):
        prepare_saved(tmp_path / "x", too_few, frame.index, frame.columns, batch)

    def too_many():
        yield values
        yield values[:5]

    with pytest.raises(ValueError, match="more rows than"):
        prepare_saved(tmp_path / "y", too_many, frame.index, frame.columns, batch)
    with pytest.raises(ValueError, match="more rows than"):
        prepare_saved(tmp_path / "z", lambda: iter([values[:12]]), frame.index[:10], frame.columns, batch)


def test_a_sign_flip_replicate_built_on_disk_is_the_one_built_in_memory(study, tmp_path):
    frame, batch, _ = study
    data = prepare_saved(tmp_path / "p", _blocks_of(frame.to_numpy(), 1000), frame.index, frame.columns, batch)
    in_memory = simpson.sign_flip_data(data, 2, seed=7)
    rng = np.random.default_rng([7, 2])
    signs = (rng.integers(0, 2, size=(data.n_genes, len(data.batch_labels))) * 2.0 - 1.0)[:, data.batch_codes]
    on_disk = data.with_batch_residuals_saved(signs, tmp_path / "r")
    assert isinstance(on_disk.values, np.memmap)
    assert_same_data(in_memory, on_disk)
    # the reflection keeps |r_b| and the batch fits: the within-batch sums of squares are the data's
    assert np.allclose(np.abs(np.asarray(on_disk.batch_residuals)), np.abs(np.asarray(data.batch_residuals)))


def test_sign_flip_replicate_counts_the_same_in_memory_and_in_a_workdir(study, tmp_path):
    frame, batch, _ = study
    data = prepare(frame.iloc[:600], batch)
    options = {"seed": 3, "fdr": 0.2, "block_size": 256}
    counts = [simpson.sign_flip_replicate(data, r, **options) for r in range(2)]
    on_disk = [simpson.sign_flip_replicate(data, r, workdir=tmp_path, **options) for r in range(2)]
    assert counts == on_disk
    assert list(tmp_path.iterdir()) == []  # the replicate's folder is removed
