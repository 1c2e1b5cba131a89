"""The error types for unusable inputs and for results that cannot be written."""

from __future__ import annotations

import errno
import os

__all__ = ["InputError", "ResultWriteError", "WRITE_ERRNOS", "write_failure"]


class InputError(ValueError):
    """An input file or config value is unusable; the message says where and what to do."""


class ResultWriteError(InputError):
    """A result file could not be written (disk full, read-only or missing permission).

    A subclass of :class:`InputError` so that the stage runners report its message, not a traceback:
    the message names the file, the cause and how to resume.
    """


_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


# The errors of a write that the user fixes outside batchmix (space, permissions); others propagate as they are.
WRITE_ERRNOS = frozenset(_CAUSES)


def write_failure(path: str | os.PathLike, err: OSError) -> ResultWriteError:
    """The error to raise when writing ``path`` failed with ``err``: what happened and how to resume."""
    cause = _CAUSES.get(err.errno, err.strerror or str(err))
    fix = {
        errno.ENOSPC: "Free some space (or point results/ to a larger disk)",
        errno.EDQUOT: "Free some space within your quota",
        errno.EROFS: "Make the results folder writable (or run from a writable copy)",
        errno.EACCES: "Make the results folder writable for you",
        errno.EPERM: "Make the results folder writable for you",
    }.get(err.errno, "Fix the cause")
    return ResultWriteError(
        f"{path}: could not be written: {cause} ({err.strerror or err}). {fix}, then start the same command "
        "again (`make run`, or snakemake with --rerun-incomplete): the steps that finished are kept and the "
        "run resumes from this one."
    )
