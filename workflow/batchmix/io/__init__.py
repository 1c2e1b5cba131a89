"""Reading, validating and writing tables.

- :mod:`batchmix.io.tables`    the one reader and writer: input tables, batchmix's own result tables
  (ids always kept verbatim as text), byte-stable TSV/gzip writing, JSON, checksums
- :mod:`batchmix.io.validate`  the expression table and sample sheet checked against each other and the config
- :mod:`batchmix.io.errors`    :class:`InputError`, raised for every unusable input

Everything public is re-exported here: ``from batchmix.io import read_result_table``.
"""

from batchmix.io.errors import InputError
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
from batchmix.io.validate import ValidatedInputs, batch_labels, read_expression, read_samples, validate_inputs

__all__ = [
    "INPUT_NA_VALUES",
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
