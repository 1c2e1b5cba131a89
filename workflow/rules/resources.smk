# Resource requests of the rules. Threads are set in the rules; memory (mem_mb) and run time
# (runtime, minutes) come from the size of the data through a cost model per stage, measured
# with benchmarks/bench_pipeline.py (README, "Clusters and laptops"), and double with every
# retry (`attempt`): a job that SLURM killed for running out of memory or time is resubmitted
# with twice as much, then four times.
#
# Plain Python (no rules), so that tests can load it without Snakemake.
import functools
import gzip
import math
import re
import dataclasses
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StageCost:
    """Measured cost of one job of a stage, from the shape of the data it holds.

    peak memory (MB) = base_mb + bytes_per_value * min(values, max_values) / 1e6
                       + bytes_per_sample_pair * samples**2 / 1e6
    wall time (s)    = base_s  + us_per_value   * work   / 1e6 + us_per_sample_pair   * samples**2 / 1e6
    `values` is genes x samples of the table the job holds (one chunk for lmm_chunk); `work` is the
    same, except for the Simpson scan, whose time grows with gene pairs x samples. The samples**2
    terms are there because some stages build samples x samples matrices (the VST, the report's
    sample distances).
    """

    base_mb: float
    bytes_per_value: float
    bytes_per_sample_pair: float
    base_s: float
    us_per_value: float
    us_per_sample_pair: float
    # A stage that reads the matrix a block of genes at a time holds at most this many values at once:
    # its memory's per-value term stops there (its time does not).
    max_values: float = math.inf


# Measured with benchmarks/bench_pipeline.py (issue 12's data path): every job's peak RSS (psutil,
# every 50 ms) and CPU time at 20,000 genes x 500 samples and at 60,000 x 2,000 (the default config,
# 4 LMM chunks; README, "Clusters and laptops"), a line through the two per stage, re-measured after
# the round that read the input in chunks, streamed de and dropped the report's matrices. Peak RSS of
# the stage's process plus SNAKEMAKE_JOB_MB for the Snakemake process that runs it in a cluster job;
# time is the job's CPU time (one thread) on the benchmark machine.
SNAKEMAKE_JOB_MB = 150  # included in every base_mb below

# The Simpson gather when a permutation check runs in it (simpson.permutation_check, calibration:
# permutation): each permuted data set is prepared a block of genes at a time on disk and scanned
# memory-mapped, as a sign-flip replicate job (simpson_null) does: 948 MB peak and 32.6 s at 19,516 x 500
# with one permutation (2,484 MB and 52.3 s in memory before). Time: simpson_null's per permutation
# (_gather_cost scales it by their number).
SIMPSON_PERMUTATIONS = StageCost(base_mb=900, bytes_per_value=6.2, bytes_per_sample_pair=0, base_s=10, us_per_value=0.0004, us_per_sample_pair=0)
STAGE_COSTS = {
    # reads the input table whole, a text table over 256 MB in row chunks into one matrix (473 MB at 10^7
    # values, 1,606 MB at 1.2 x 10^8: 10.3 bytes per value)
    "stabilise": StageCost(base_mb=520, bytes_per_value=10.3, bytes_per_sample_pair=0, base_s=2, us_per_value=0.25, us_per_sample_pair=0),
    # the design check of the sample sheet (count input reads no values: 165 MB, 171 MB)
    "design": StageCost(base_mb=330, bytes_per_value=0, bytes_per_sample_pair=0, base_s=2, us_per_value=0, us_per_sample_pair=0),
    # split_genes writes each chunk's gene range from gene_status (no expression values): memory and
    # time are the imports (136-144 MB at both shapes).
    "split_genes": StageCost(base_mb=300, bytes_per_value=0, bytes_per_sample_pair=0, base_s=2, us_per_value=0, us_per_sample_pair=0),
    # lmm_chunk reads its genes' Parquet row groups: 354 MB for 5,000 genes x 500 samples, 1,259 MB for
    # 15,000 x 2,000 (the fits' workspace, the tables and the chunk's corrected expression).
    "lmm_chunk": StageCost(base_mb=420, bytes_per_value=33, bytes_per_sample_pair=0, base_s=3, us_per_value=0.11, us_per_sample_pair=0),
    # gather_lmm holds gene_fits (one row per gene) for the moderation and streams the chunks' corrected
    # rows into the matrix (401 MB, 972 MB): the per-value term is an upper bound.
    "gather_lmm": StageCost(base_mb=500, bytes_per_value=5.2, bytes_per_sample_pair=0, base_s=1, us_per_value=0.044, us_per_sample_pair=0),
    # DE reads the stabilised matrix a block of at least 2^25 values at a time (batchmix.de.GeneBlocks):
    # 771 MB at 10^7 values (one block), 2,345 MB at 1.2 x 10^8 (blocks of 2^25 values)
    "de": StageCost(base_mb=250, bytes_per_value=67, bytes_per_sample_pair=0, base_s=1.5, us_per_value=0.1, us_per_sample_pair=0, max_values=2**25),
    # the PCA's genes are chosen from the Parquet matrices a row group at a time (233 MB, 625 MB; the
    # per-value term an upper bound); the batch silhouette holds the samples x samples distances
    # (scipy's cdist, 8 bytes a pair, and a batch's columns of it)
    "diagnostics": StageCost(base_mb=350, bytes_per_value=3.6, bytes_per_sample_pair=16, base_s=1, us_per_value=0.077, us_per_sample_pair=0.01),
    # A sign-flip replicate (simpson_null) writes its reflected residuals a block of genes at a time to
    # a temporary folder and scans them memory-mapped, as the block-pair jobs do, but all block pairs:
    # work = gene pairs x samples (MEASURED_NULL below).
    "simpson_null": StageCost(base_mb=650, bytes_per_value=6.2, bytes_per_sample_pair=0, base_s=10, us_per_value=0.0004, us_per_sample_pair=0),
    # The gather memory-maps the prepared data and reads the reversals' rows: 214-334 MB and 1.1-1.5 s
    # CPU at 19,516 x 500, 372 MB and 2.1 s at 59,092 x 2,000; the per-value term is an upper bound.
    "simpson": StageCost(base_mb=500, bytes_per_value=0.5, bytes_per_sample_pair=0, base_s=5, us_per_value=0.02, us_per_sample_pair=0),
    # simpson_prepare residualises 4,096 genes at a time and writes each block to its .npy files
    # (batchmix.simpson.prepare_saved): 353 MB and 1.9 s CPU at 19,516 x 500, 972 MB and 28.9 s at
    # 59,092 x 2,000 (the files: 6.2 GB, ~52 bytes per value, on disk).
    "simpson_prepare": StageCost(base_mb=450, bytes_per_value=5.7, bytes_per_sample_pair=0, base_s=2, us_per_value=0.25, us_per_sample_pair=0),
    # a block-pair job memory-maps the prepared data and copies the rows of one block pair at a time:
    # 554 MB at 19,516 x 500, 1,222 MB at 59,092 x 2,000 (peak RSS, the mapped pages it read included);
    # work = its gene pairs x samples: 5 block pairs of 1,024 x 1,024 at 2,000 samples in 3.3 s CPU
    # (0.0003 us per pair and sample), 53 at 500 samples in 5.3 s.
    "simpson_block": StageCost(base_mb=650, bytes_per_value=6.2, bytes_per_sample_pair=0, base_s=5, us_per_value=0.0004, us_per_sample_pair=0),
    # the report reads the stages' summaries and the shrinkage genes' rows, no whole matrix (337 MB at
    # 10^7 values, 560 MB at 1.2 x 10^8); its time is drawing the figures (6.0 s, 6.2 s)
    "report": StageCost(base_mb=470, bytes_per_value=2, bytes_per_sample_pair=0, base_s=7, us_per_value=0.002, us_per_sample_pair=0),
    # work = genes x (bootstrap replicates + 100 if the posterior is on): about 5 us per bootstrap refit
    # and 0.5 ms per gene for the grid posterior (benchmarks/bench_uncertainty.py); memory holds the
    # table plus the refit batches (200,000 responses at a time).
    "uncertainty": StageCost(base_mb=1200, bytes_per_value=100, bytes_per_sample_pair=0, base_s=30, us_per_value=5, us_per_sample_pair=0),
}

# Requests exceed the measured cost by these factors: cluster nodes are slower or busier than the
# benchmark machine, and gene-to-gene variation in optimiser iterations changes a chunk's time.
MEMORY_HEADROOM = 1.5
RUNTIME_HEADROOM = 3.0
# No job asks for less than this (SLURM rounds small time limits up, and startup on a busy shared
# file system can take minutes).
MIN_RUNTIME_MIN = 10

SCATTERITEM = re.compile(r"^(?P<index>\d+)-of-(?P<count>\d+)$")


def _open_binary(path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _separator(path) -> bytes:
    return b"," if ".csv" in Path(path).name.lower() else b"\t"


@functools.lru_cache(maxsize=16)
def _count_columns(path: str, size: int, mtime_ns: int) -> int:
    """Value columns of a delimited table: the header's fields minus the id column."""
    with _open_binary(path) as fh:
        return fh.readline().rstrip(b"\r\n").count(_separator(path))


@functools.lru_cache(maxsize=16)
def _count_rows(path: str, size: int, mtime_ns: int) -> int:
    """Rows of a delimited table below its header line.

    Streams the file once (a gzipped counts table of 60,000 x 20,000 takes about 15 s); cached per
    file version, so a Snakemake process counts each input at most once.
    """
    with _open_binary(path) as fh:
        fh.readline()
        rows, last = 0, b"\n"
        for block in iter(lambda: fh.read(1 << 22), b""):
            rows += block.count(b"\n")
            last = block[-1:]
    return rows + (1 if last != b"\n" else 0)  # the last row may lack its newline


def _version(path) -> tuple[str, int, int]:
    stat = Path(path).stat()
    return str(path), stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _binary_shape(path: str, size: int, mtime_ns: int) -> tuple[int, int]:
    """(genes, samples) of a Parquet (gene id column + one column per sample) or .h5ad (samples x
    genes) input, from its metadata alone."""
    if path.lower().endswith(".h5ad"):
        import h5py

        with h5py.File(path, "r") as h5:
            x = h5["X"]
            # a sparse X is a group that records its shape; a dense X is a dataset
            n_obs, n_var = x.attrs["shape"] if isinstance(x, h5py.Group) else x.shape
        return int(n_var), int(n_obs)
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    return pf.metadata.num_rows, len(pf.schema_arrow.names) - 1


def _is_binary(path) -> bool:
    return str(path).lower().endswith((".parquet", ".h5ad"))


def n_samples(cfg=None) -> int:
    """Samples of the analysis `cfg` (default: the run's config): the columns of its input expression
    table (read from its header or metadata only)."""
    expression = (cfg or config)["expression"]
    if _is_binary(expression):
        return _binary_shape(*_version(expression))[1]
    return _count_columns(*_version(expression))


def _n_genes(input, cfg=None) -> int:
    """Genes of the analysis: from gene_status.tsv when the job has it (one short line per gene, cheap
    to count), else from the input table (counted once per Snakemake process)."""
    status = getattr(input, "gene_status", None)
    if status and Path(status).exists():
        return _count_rows(*_version(status))
    expression = (cfg or config)["expression"]
    if _is_binary(expression):
        return _binary_shape(*_version(expression))[0]
    return _count_rows(*_version(expression))


def genes_in_chunk(scatteritem: str, n_genes: int) -> int:
    """Genes in chunk `i-of-n`, as batchmix.pipeline.lmm.chunk_ranges cuts them: whole blocks of
    FIT_BLOCK_GENES genes, shared out as numpy.array_split does (the first chunks get one block more)."""
    from batchmix.pipeline.lmm import chunk_ranges

    match = SCATTERITEM.match(scatteritem)
    if match is None:
        raise ValueError(f"not a scatter item of the form i-of-n: {scatteritem!r}")
    index, count = int(match["index"]), int(match["count"])
    start, stop = chunk_ranges(n_genes, count)[index - 1]
    return stop - start


def stage_values(stage: str, wildcards, input, cfg=None) -> int:
    """Expression values (genes x samples) that one job of `stage` holds in memory."""
    if stage == "lmm_chunk":
        return genes_in_chunk(wildcards.scatteritem, _n_genes(input, cfg)) * n_samples(cfg)
    # Every other stage, the Simpson scan included (it reads the whole table before it picks genes).
    return _n_genes(input, cfg) * n_samples(cfg)


def simpson_genes(n_genes: int, cfg=None) -> int:
    """Genes the Simpson scan pairs up: all (an upper bound: filtered genes are left out) or the top N."""
    chosen = (cfg or config)["simpson"]["genes"]
    return n_genes if chosen == "all" else min(n_genes, int(chosen))


def stage_memory_mb(stage: str, values: int, samples: int, attempt: int = 1, cost=None) -> int:
    """Memory request in MB for a job of `stage` holding `values` expression values of `samples` samples
    (`cost`: another cost model than the stage's)."""
    cost = cost or STAGE_COSTS[stage]
    held = min(values, cost.max_values)
    peak = cost.base_mb + cost.bytes_per_value * held / 1e6 + cost.bytes_per_sample_pair * samples**2 / 1e6
    return int(math.ceil(peak * MEMORY_HEADROOM)) * 2 ** (attempt - 1)


def stage_runtime_min(stage: str, work: int, samples: int, attempt: int = 1, cost=None) -> int:
    """Time limit in minutes for a job of `stage` doing `work` units (values, or gene pairs x samples
    for the Simpson scan) on `samples` samples."""
    cost = cost or STAGE_COSTS[stage]
    seconds = cost.base_s + cost.us_per_value * work / 1e6 + cost.us_per_sample_pair * samples**2 / 1e6
    return max(MIN_RUNTIME_MIN, int(math.ceil(seconds * RUNTIME_HEADROOM / 60))) * 2 ** (attempt - 1)


def mem_mb_for(stage: str, cfg=None):
    """A mem_mb resource function for the jobs of `stage` of the analysis `cfg` (default: the run's config)."""
    if stage not in STAGE_COSTS:
        raise KeyError(f"no cost model for stage {stage!r}; add it to STAGE_COSTS")

    def mem_mb(wildcards, input, attempt):
        values = stage_values(stage, wildcards, input, cfg)
        return stage_memory_mb(stage, values, n_samples(cfg), attempt, cost=_gather_cost(stage, cfg))

    mem_mb.__name__ = f"mem_mb_{stage}"
    return mem_mb


def runtime_for(stage: str, cfg=None):
    """A runtime (minutes) resource function for the rule running `stage` of the analysis `cfg`."""
    if stage not in STAGE_COSTS:
        raise KeyError(f"no cost model for stage {stage!r}; add it to STAGE_COSTS")

    def runtime(wildcards, input, attempt):
        if _gather_cost(stage, cfg) is not None:
            genes = simpson_genes(_n_genes(input, cfg), cfg)
            work = genes * (genes - 1) // 2 * n_samples(cfg)
        elif stage == "uncertainty":
            settings = (cfg or config)["uncertainty"]
            work = _n_genes(input, cfg) * (int(settings["bootstrap"]) + 100 * bool(settings["bayes"]))
        else:
            work = stage_values(stage, wildcards, input, cfg)
        return stage_runtime_min(stage, work, n_samples(cfg), attempt, cost=_gather_cost(stage, cfg))

    runtime.__name__ = f"runtime_{stage}"
    return runtime


def _gather_cost(stage: str, cfg=None):
    """SIMPSON_PERMUTATIONS, its time per permutation times their number, for the Simpson gather when a
    permutation check runs in it; None otherwise (the stage's own cost model)."""
    if stage != "simpson":
        return None
    settings = (cfg or config)["simpson"]
    checks = bool(settings.get("permutation_check")) + (settings.get("calibration") == "permutation")
    runs = checks * int(settings.get("n_permutations", 1))
    if not runs:
        return None
    cost = SIMPSON_PERMUTATIONS
    return dataclasses.replace(cost, base_s=cost.base_s * runs, us_per_value=cost.us_per_value * runs)


def simpson_job_runtime(share, cfg=None, stage="simpson_block"):
    """Runtime (minutes) of a Simpson job doing `share` of a whole scan (the stage cost of `stage`)."""

    def runtime(wildcards, input, attempt):
        genes = simpson_genes(_n_genes(input, cfg), cfg)
        work = share * genes * (genes - 1) // 2 * n_samples(cfg)
        return stage_runtime_min(stage, work, n_samples(cfg), attempt)

    runtime.__name__ = f"runtime_simpson_{share:g}"
    return runtime
