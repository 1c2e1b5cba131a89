# Resource requests of the rules (threads are set in the rules): memory and runtime that fit the
# work each job does, growing with `attempt` so that a retried job gets more.


def input_mb(input):
    """Size of a job's input files in MB (at least 1)."""
    return max(1, sum(Path(f).stat().st_size for f in input if Path(f).exists()) // 1_000_000)


def mem_mb_table(wildcards, input, attempt):
    """Memory for a job that holds its (gzipped) input tables in memory, doubled per retry.

    A gzipped TSV of floats expands about 5-10 fold in memory as float64 plus pandas overhead.
    """
    return int((500 + 40 * input_mb(input)) * 2 ** (attempt - 1))
