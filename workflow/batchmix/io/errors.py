"""The one error type for unusable inputs."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """An input file or config value is unusable; the message says where and what to do."""
