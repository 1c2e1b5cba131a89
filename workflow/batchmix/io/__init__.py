"""Reading, validating and writing tables.

- :mod:`batchmix.io.tables`    the one reader and writer: input tables, batchmix's own result tables
  (ids always kept verbatim as text), byte-stable TSV/gzip writing, JSON, checksums
- :mod:`batchmix.io.readers`   the input formats: text tables (C parser, typed), featureCounts output,
  Parquet, AnnData .h5ad; file sniffing (directory, UTF-16, gzip without .gz, Excel)
- :mod:`batchmix.io.validate`  the expression table and sample sheet checked against each other and the config
- :mod:`batchmix.io.errors`    :class:`InputError`, raised for every unusable input, and
  :class:`ResultWriteError` for a result that cannot be written (disk full, read-only folder)

Everything public is re-exported here: ``from batchmix.io import read_result_table``.
"""

from batchmix.io.errors import InputError, ResultWriteError
from batchmix.io.readers import ExpressionTable, featurecounts_sample_ids, read_expression_table
from batchmix.io.tables import (
    INPUT_NA_VALUES,
    TEXT_COLUMNS,
    file_md5,
    read_matrix,
    read_result_table,
    read_table,
    table_lines,
    table_writer,
    write_json,
    write_table,
)
from batchmix.io.validate import (
    COUNT_INPUT_TYPES,
    INPUT_TYPES,
    ValidatedInputs,
    batch_labels,
    read_expression,
    read_samples,
    validate_inputs,
)

__all__ = [
    "COUNT_INPUT_TYPES",
    "ExpressionTable",
    "INPUT_NA_VALUES",
    "INPUT_TYPES",
    "ResultWriteError",
    "featurecounts_sample_ids",
    "read_expression_table",
    "TEXT_COLUMNS",
    "InputError",
    "ValidatedInputs",
    "batch_labels",
    "file_md5",
    "read_expression",
    "read_matrix",
    "read_result_table",
    "read_samples",
    "read_table",
    "table_lines",
    "table_writer",
    "validate_inputs",
    "write_json",
    "write_table",
]
