"""The workflow configuration: schema validation and defaults.

The schema lives in ``workflow/schemas/config.schema.yaml`` next to the package, so that
Snakemake (``snakemake.utils.validate``) and the command line check the same contract.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from batchmix.io import InputError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"

__all__ = ["SCHEMA_PATH", "load_schema", "fill_defaults", "validate_config", "load_config"]


def load_schema() -> dict:
    """Return the config JSON schema as a dict."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def fill_defaults(config: dict, schema: dict | None = None) -> dict:
    """Return a copy of ``config`` with every missing key set to its schema default, recursively.

    Parameters
    ----------
    config : dict
        A config as read from YAML.
    schema : dict, optional
        The schema (default: the workflow's).
    """
    schema = load_schema() if schema is None else schema
    out = copy.deepcopy(config)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if isinstance(out.get(key), dict) and sub.get("type") == "object":
            out[key] = fill_defaults(out[key], sub)
    return out


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Check a config against the schema and return it with defaults filled in.

    Parameters
    ----------
    config : dict
        The configuration.
    source : str
        Where it came from (a file name), for error messages.

    Raises
    ------
    InputError
        Naming the key at fault and what is expected.
    """
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            hint = err.schema.get("description", "") if isinstance(err.schema, dict) else ""
            lines.append(f"  {where}: {err.message}" + (f" ({hint})" if hint else ""))
        raise InputError(f"{source}: the configuration is invalid:\n" + "\n".join(lines))
    return fill_defaults(config, schema)


def load_config(path: str | Path, overrides: dict | None = None) -> dict[str, Any]:
    """Read a YAML config, apply ``overrides`` and validate it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: config file does not exist.")
    config = yaml.safe_load(path.read_text()) or {}
    config.update(overrides or {})
    return validate_config(config, str(path))
