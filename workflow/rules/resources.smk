# Resource requests of the rules. Threads are set in the rules; memory (mem_mb) and run time
# (runtime, minutes) come from the size of the data through a cost model per stage, measured
# with benchmarks/bench_chunk_cost.py (README, "Running on a cluster"), and double with every
# retry (`attempt`): a job that SLURM killed for running out of memory or time is resubmitted
# with twice as much, then four times.
#
# Plain Python (no rules), so that tests can load it without Snakemake.
import functools
import gzip
import math
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StageCost:
    """Measured cost of one job of a stage, from the shape of the data it holds.

    peak memory (MB) = base_mb + bytes_per_value * values / 1e6 + bytes_per_sample_pair * samples**2 / 1e6
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


# Fitted by `python benchmarks/bench_chunk_cost.py` (README, "Running on a cluster"): peak RSS of the
# stage's process plus SNAKEMAKE_JOB_MB for the Snakemake process that runs it in a cluster job;
# wall time on one core of the benchmark machine.
SNAKEMAKE_JOB_MB = 150  # included in every base_mb below
STAGE_COSTS = {
    "stabilise": StageCost(base_mb=260, bytes_per_value=104, bytes_per_sample_pair=0.05, base_s=0, us_per_value=7.2, us_per_sample_pair=0),
    # split_genes writes each chunk's gene range from gene_status (no expression values): memory and
    # time are the imports (220 MB peak of the job in bench_pipeline.py at every shape).
    "split_genes": StageCost(base_mb=225, bytes_per_value=0, bytes_per_sample_pair=0, base_s=2, us_per_value=0, us_per_sample_pair=0),
    # lmm_chunk reads its genes' Parquet row groups; peak 629 MB for 5,000 genes x 500 samples in
    # benchmarks/bench_pipeline.py (228 MB of imports + 160 bytes per value: the fits' workspace and the
    # chunk's corrected expression), above the 62 bytes per value measured before on text chunks.
    "lmm_chunk": StageCost(base_mb=330, bytes_per_value=160, bytes_per_sample_pair=0, base_s=3, us_per_value=1.8, us_per_sample_pair=0),
    # gather_lmm holds gene_fits (one row per gene) for the moderation: the base covers 60,000 genes
    # (279 MB peak measured at 60,000 x 40; 144 MB at 2,000 genes). The corrected matrix is copied a
    # Parquet row group at a time (341 MB peak at 20,000 x 500 in bench_pipeline.py).
    "gather_lmm": StageCost(base_mb=430, bytes_per_value=0, bytes_per_sample_pair=0, base_s=0.4, us_per_value=0.83, us_per_sample_pair=0),
    "simpson": StageCost(base_mb=150, bytes_per_value=208, bytes_per_sample_pair=9.6, base_s=7, us_per_value=0.0003, us_per_sample_pair=0),
    "report": StageCost(base_mb=430, bytes_per_value=40, bytes_per_sample_pair=20.6, base_s=24, us_per_value=0, us_per_sample_pair=0.96),
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
    """Genes in chunk `i-of-n`, as batchmix.pipeline.lmm.chunk_ranges cuts them (numpy.array_split:
    the first n_genes % n chunks get one gene more)."""
    match = SCATTERITEM.match(scatteritem)
    if match is None:
        raise ValueError(f"not a scatter item of the form i-of-n: {scatteritem!r}")
    index, count = int(match["index"]), int(match["count"])
    return n_genes // count + (1 if index <= n_genes % count else 0)


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


def stage_memory_mb(stage: str, values: int, samples: int, attempt: int = 1) -> int:
    """Memory request in MB for a job of `stage` holding `values` expression values of `samples` samples."""
    cost = STAGE_COSTS[stage]
    peak = cost.base_mb + cost.bytes_per_value * values / 1e6 + cost.bytes_per_sample_pair * samples**2 / 1e6
    return int(math.ceil(peak * MEMORY_HEADROOM)) * 2 ** (attempt - 1)


def stage_runtime_min(stage: str, work: int, samples: int, attempt: int = 1) -> int:
    """Time limit in minutes for a job of `stage` doing `work` units (values, or gene pairs x samples
    for the Simpson scan) on `samples` samples."""
    cost = STAGE_COSTS[stage]
    seconds = cost.base_s + cost.us_per_value * work / 1e6 + cost.us_per_sample_pair * samples**2 / 1e6
    return max(MIN_RUNTIME_MIN, int(math.ceil(seconds * RUNTIME_HEADROOM / 60))) * 2 ** (attempt - 1)


def mem_mb_for(stage: str, cfg=None):
    """A mem_mb resource function for the rule running `stage` of the analysis `cfg` (default: the run's config)."""
    if stage not in STAGE_COSTS:
        raise KeyError(f"no cost model for stage {stage!r}; add it to STAGE_COSTS")

    def mem_mb(wildcards, input, attempt):
        return stage_memory_mb(stage, stage_values(stage, wildcards, input, cfg), n_samples(cfg), attempt)

    mem_mb.__name__ = f"mem_mb_{stage}"
    return mem_mb


def runtime_for(stage: str, cfg=None):
    """A runtime (minutes) resource function for the rule running `stage` of the analysis `cfg`."""
    if stage not in STAGE_COSTS:
        raise KeyError(f"no cost model for stage {stage!r}; add it to STAGE_COSTS")

    def runtime(wildcards, input, attempt):
        if stage == "simpson":
            genes = simpson_genes(_n_genes(input, cfg), cfg)
            work = genes * (genes - 1) // 2 * n_samples(cfg)
        elif stage == "uncertainty":
            settings = (cfg or config)["uncertainty"]
            work = _n_genes(input, cfg) * (int(settings["bootstrap"]) + 100 * bool(settings["bayes"]))
        else:
            work = stage_values(stage, wildcards, input, cfg)
        return stage_runtime_min(stage, work, n_samples(cfg), attempt)

    runtime.__name__ = f"runtime_{stage}"
    return runtime


def simpson_job_runtime(share, cfg=None):
    """Runtime (minutes) of a Simpson job doing `share` of a whole scan (the stage cost of `simpson`)."""

    def runtime(wildcards, input, attempt):
        genes = simpson_genes(_n_genes(input, cfg), cfg)
        work = share * genes * (genes - 1) // 2 * n_samples(cfg)
        return stage_runtime_min("simpson", work, n_samples(cfg), attempt)

    runtime.__name__ = f"runtime_simpson_{share:g}"
    return runtime
