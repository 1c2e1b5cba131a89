"""The workflow configuration: schema validation and defaults.

The schema lives in ``workflow/schemas/config.schema.yaml`` next to the package, so that
Snakemake (``snakemake.utils.validate``) and the command line check the same contract.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from batchmix.io import InputError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"

__all__ = ["SCHEMA_PATH", "load_schema", "fill_defaults", "validate_config", "check_config_columns", "load_config"]


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


def _describe_allowed(schema: dict) -> str:
    """What a schema node allows, in words: the enum, the type and bounds, or the alternatives."""
    if not isinstance(schema, dict):
        return ""
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if "oneOf" in schema or "anyOf" in schema:
        return " or ".join(filter(None, (_describe_allowed(sub) for sub in schema.get("oneOf", schema.get("anyOf")))))
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = " or ".join("null" if k == "null" else k for k in kind)
    parts = [f"{'an' if str(kind)[:1] in 'aeiou' else 'a'} {kind}"] if kind else []
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in schema:
            parts.append(f"{word} {schema[key]}")
    if "pattern" in schema:
        parts.append(f"containing {schema['pattern']!r}")
    return " ".join(parts)


def _schema_node(schema: dict, path: list) -> dict:
    """The schema node of a config key (for its description and what it allows)."""
    node = schema
    for part in path:
        if not isinstance(node, dict):
            return {}
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif "items" in node and isinstance(part, int):
            node = node["items"]
        else:
            return {}
    return node


def _error_line(err, schema: dict) -> str:
    """One schema error as: the key, its value, what is allowed, and the key's own description."""
    path = list(err.absolute_path)
    where = ".".join(str(p) for p in path) or "(top level)"
    if err.validator == "additionalProperties":
        allowed = sorted(_schema_node(schema, path).get("properties", {}))
        unknown = [k for k in err.instance if k not in allowed] if isinstance(err.instance, dict) else []
        lines = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            prefix = f"{where}." if path else ""
            lines.append(
                f"  {prefix}{key}: unknown key"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f". Allowed keys here: {', '.join(allowed)}."
            )
        return "\n".join(lines) or f"  {where}: {err.message}"
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        node = _schema_node(schema, path + [missing])
        hint = node.get("description", "")
        return f"  {missing}: required key is missing ({err.message})." + (f" It is: {hint}" if hint else "")
    node = _schema_node(schema, path)
    allowed = _describe_allowed(node) or _describe_allowed(err.schema)
    hint = node.get("description", "") if isinstance(node, dict) else ""
    line = f"  {where}: {err.instance!r} is not allowed ({err.message})."
    if allowed:
        line += f" Allowed: {allowed}."
    if hint:
        line += f" The key: {hint}"
    return line


def _fill_samples_from_h5ad(config: dict) -> dict:
    """An .h5ad expression carries its sample sheet (obs): a missing or null ``samples`` is the same file."""
    expression = config.get("expression")
    if config.get("samples") is None and isinstance(expression, str) and expression.lower().endswith(".h5ad"):
        return {**config, "samples": expression}
    if "samples" in config and config["samples"] is None:
        raise InputError(
            "config: samples is null, but the expression table is not an .h5ad file (whose obs could be the sheet). "
            "Give the sample sheet's path."
        )
    return config


def validate_config(config: dict[str, Any], source: str = "config", *, check_inputs: bool = False) -> dict[str, Any]:
    """Check a config against the schema and return it with defaults filled in.

    Parameters
    ----------
    config : dict
        The configuration.
    source : str
        Where it came from (a file name), for error messages.
    check_inputs : bool
        Also check the keys that name sample-sheet columns outside the model (``simpson.adjust_for``)
        against the sheet's header, so that a wrong name stops the run here and not inside a job.

    Raises
    ------
    InputError
        For each failing key (up to 10): the key, its value, what is allowed and the key's description.
    """
    schema = load_schema()
    config = _fill_samples_from_h5ad(config)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = [_error_line(err, schema) for err in errors[:10]]
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise InputError(
            f"{source}: the configuration is invalid:\n" + "\n".join(lines) + more + "\n"
            "Fix these keys (config/config.yaml documents each one)."
        )
    filled = fill_defaults(config, schema)
    if check_inputs:
        check_config_columns(filled)
    return filled


def check_config_columns(config: dict[str, Any]) -> None:
    """Check that the config's column names outside the model (``simpson.adjust_for``) are sheet columns.

    Raises
    ------
    InputError
        Naming the key, the missing column, the sheet and its columns.
    """
    simpson = config.get("simpson") or {}
    wanted = list(simpson.get("adjust_for") or [])
    if not wanted or not simpson.get("enabled", True):
        return
    from batchmix.io import read_samples

    sheet = read_samples(config["samples"])
    absent = [c for c in wanted if c not in sheet.columns]
    if absent:
        raise InputError(
            f"{config['samples']}: simpson.adjust_for names column(s) {', '.join(repr(c) for c in absent)} that "
            f"are not in the sample sheet. Its columns: {', '.join(repr(str(c)) for c in sheet.columns)}. "
            "Fix the names under simpson: adjust_for in the config, or add the columns to the sheet."
        )


def load_config(path: str | Path, overrides: dict | None = None) -> dict[str, Any]:
    """Read a YAML config, apply ``overrides`` and validate it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: config file does not exist.")
    config = yaml.safe_load(path.read_text()) or {}
    config.update(overrides or {})
    return validate_config(config, str(path))
