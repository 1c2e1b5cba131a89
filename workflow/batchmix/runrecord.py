"""The run record (``run.json``): what one analysis was run on and with, so that anyone can replay it.

A run record holds

- ``format``: the record's format version (:data:`FORMAT`);
- ``analysis``: the analysis's name under ``analyses:`` (null for a config without ``analyses:``);
- ``config``: the analysis's fully resolved config, defaults included (as
  :func:`batchmix.analyses.resolve_analyses` returns it);
- ``inputs``: every input file the config names (``expression``, ``samples``, ``kinship`` when
  ``covariance: {kinship: path}``), by role, each with its ``path`` as the config gives it, its size
  in ``bytes`` and its ``md5``;
- ``workdir``: the working directory the run's relative paths were relative to;
- ``batchmix``: its ``version`` and, when the package lives in a git checkout, ``git``:
  ``{"commit": ..., "dirty": ...}`` (null otherwise);
- ``dependencies``: the versions of Python and of the numerical and workflow packages (null for one
  not installed);
- ``command``: the command line that started the run (null when unknown);
- ``created``: when the record was written (UTC). No table of a run contains it, so replayed tables
  are byte-identical to the recorded ones.

``batchmix replay run.json --outdir DIR`` (:mod:`batchmix.cli`) reads a record
(:func:`read_run_record`), checks its inputs (:func:`verify_inputs`) and runs the analysis again.
This module never imports Snakemake (its version is read from the installed metadata).
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from batchmix.io import InputError, file_md5, write_json

__all__ = [
    "FORMAT",
    "DEPENDENCIES",
    "RECORD_NAME",
    "build_run_record",
    "config_inputs",
    "dependency_versions",
    "batchmix_provenance",
    "write_run_record",
    "read_run_record",
    "locate_inputs",
    "verify_inputs",
    "replay_config",
]

# The version of the record's layout; read_run_record refuses any other.
FORMAT = 1

# The file name of the run record in an analysis's output folder.
RECORD_NAME = "run.json"

# The packages whose versions the record holds (besides Python itself).
DEPENDENCIES = (
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "anndata",
    "formulaic",
    "statsmodels",
    "jinja2",
    "matplotlib",
    "snakemake",
)

_REQUIRED_KEYS = ("format", "config", "inputs")


def config_inputs(config: dict) -> dict[str, str]:
    """The input files ``config`` names, by role: ``expression``, ``samples`` and (when given) ``kinship``.

    For an ``.h5ad`` expression without a separate sheet, ``samples`` is the same file.
    """
    inputs = {"expression": str(config["expression"]), "samples": str(config["samples"])}
    kinship = (config.get("covariance") or {}).get("kinship")
    if kinship:
        inputs["kinship"] = str(kinship)
    return inputs


def dependency_versions() -> dict[str, str | None]:
    """The versions of Python and of :data:`DEPENDENCIES` (installed metadata; null when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in DEPENDENCIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(args: list[str], cwd: Path) -> str | None:
    """The output of ``git <args>`` in ``cwd``, stripped; None when git is missing or fails."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def batchmix_provenance() -> dict[str, Any]:
    """batchmix's version and, when its source is a git checkout, the commit and whether it is dirty.

    Returns
    -------
    dict
        ``{"version": str, "git": {"commit": str, "dirty": bool} or None}``. ``git`` is None when git is
        not installed or the package's files are not tracked by a git repository (an installed wheel
        inside some other repository is not mistaken for a checkout). ``dirty``: a tracked file differs
        from the commit (untracked files do not count).
    """
    import batchmix

    try:
        version = metadata.version("batchmix")
    except metadata.PackageNotFoundError:
        version = batchmix.__version__
    package_dir = Path(batchmix.__file__).resolve().parent
    git = None
    # the package's own file must be tracked: otherwise the enclosing repository is not batchmix's
    if _git(["ls-files", "--error-unmatch", "__init__.py"], package_dir) is not None:
        commit = _git(["rev-parse", "HEAD"], package_dir)
        status = _git(["status", "--porcelain", "--untracked-files=no"], package_dir)
        if commit:
            git = {"commit": commit, "dirty": None if status is None else bool(status)}
    return {"version": version, "git": git}


def _resolve(config: dict, analysis: str | None) -> dict:
    """The resolved config of ``analysis`` (of the only analysis without ``analyses:``)."""
    from batchmix.analyses import has_analyses, resolve_analyses

    analyses = resolve_analyses(config)
    if not has_analyses(config):
        return analyses[0].config
    names = [a.name for a in analyses]
    for candidate in analyses:
        if candidate.name == analysis:
            return candidate.config
    raise InputError(
        f"config: analysis {analysis!r} is not under analyses: (its analyses are {', '.join(names)}); "
        "name one of them to record it."
    )


def build_run_record(config: dict, *, analysis: str | None = None, command: str | None = None) -> dict[str, Any]:
    """The run record of one analysis.

    Parameters
    ----------
    config : dict
        The analysis's config (resolved or not: it is resolved again, which changes nothing in a
        resolved config), or a whole config with ``analyses:``, of which ``analysis`` is recorded.
    analysis : str, optional
        The analysis's name under ``analyses:``; None for a config without ``analyses:``.
    command : str, optional
        The command line that started the run; None when unknown.

    Returns
    -------
    dict
        The record (see the module's docstring); JSON-serialisable.

    Raises
    ------
    batchmix.io.InputError
        An input file the config names does not exist, or the config is invalid.
    """
    resolved = _resolve(config, analysis)
    inputs: dict[str, dict] = {}
    digests: dict[str, tuple[int, str]] = {}
    for role, name in config_inputs(resolved).items():
        file = Path(name)
        if not file.is_file():
            raise InputError(f"{name}: the {role} input does not exist (run record of {analysis or 'the analysis'}).")
        if name not in digests:  # an .h5ad is both expression and sheet: read it once
            digests[name] = (file.stat().st_size, file_md5(file))
        size, md5 = digests[name]
        inputs[role] = {"path": name, "bytes": size, "md5": md5}
    return {
        "format": FORMAT,
        "analysis": analysis,
        "config": copy.deepcopy(resolved),
        "inputs": inputs,
        "workdir": os.getcwd(),
        "batchmix": batchmix_provenance(),
        "dependencies": dependency_versions(),
        "command": command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_run_record(path: str | Path, record: dict) -> None:
    """Write ``record`` to ``path`` as JSON (sorted keys; parent folders created)."""
    write_json(record, path)


def read_run_record(path: str | Path) -> dict[str, Any]:
    """Read a run record written by :func:`write_run_record`.

    Raises
    ------
    batchmix.io.InputError
        The file is missing, is not JSON, is not a run record, or has another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{path}: the run record does not exist. Give the run.json of an analysis's results folder "
            "(e.g. results/run.json, or results/<analysis>/run.json)."
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(
            f"{path}: the run record is not valid JSON ({err}). It is damaged: take the run.json of the results "
            "folder again, or rerun the analysis to write a new one."
        ) from None
    missing = [k for k in _REQUIRED_KEYS if not isinstance(record, dict) or k not in record]
    if missing:
        raise InputError(
            f"{path}: not a batchmix run record (no {', '.join(missing)}). Give the run.json that batchmix wrote "
            "in an analysis's results folder."
        )
    if record["format"] != FORMAT:
        raise InputError(
            f"{path}: run record format {record['format']!r}; this batchmix reads format {FORMAT}. Replay it with "
            f"the batchmix version that wrote it ({(record.get('batchmix') or {}).get('version', 'unknown')})."
        )
    if not isinstance(record["config"], dict) or not isinstance(record["inputs"], dict):
        raise InputError(f"{path}: the run record's config and inputs must be mappings; the file is damaged.")
    return record


def _candidates(name: str, workdir: str | None) -> list[Path]:
    """Where an input path of a record may be: as given (relative to here), then relative to the recorded workdir."""
    given = Path(name)
    if given.is_absolute() or not workdir:
        return [given]
    return [given, Path(workdir) / given]


def locate_inputs(record: dict) -> dict[str, str]:
    """Where each recorded input is now, by role.

    A relative path is looked up relative to the current directory, then relative to the record's
    ``workdir``; the first that exists is taken (its MD5 is checked by :func:`verify_inputs`).

    Raises
    ------
    batchmix.io.InputError
        An input is in neither place: the message names the file and where it was looked for.
    """
    found = {}
    for role, entry in record["inputs"].items():
        places = _candidates(entry["path"], record.get("workdir"))
        existing = [p for p in places if p.is_file()]
        if not existing:
            tried = " or ".join(str(p) for p in places)
            raise InputError(
                f"{entry['path']}: the {role} input of the run record is missing (looked for {tried}). Put the "
                f"original file there (MD5 {entry['md5']}, {entry['bytes']:,} bytes), or run from the folder whose "
                "relative paths the record uses. Nothing was written."
            )
        found[role] = str(existing[0])
    return found


def verify_inputs(record: dict) -> dict[str, str]:
    """Check that every recorded input exists with its recorded size and MD5.

    Parameters
    ----------
    record : dict
        A run record (:func:`read_run_record`).

    Returns
    -------
    dict
        Where each input is (role to path), as :func:`locate_inputs` finds it.

    Raises
    ------
    batchmix.io.InputError
        An input is missing, or its MD5 differs from the recorded one: the message names the file, the
        recorded and the actual MD5 and size, and what to do.
    """
    located = locate_inputs(record)
    for role, where in located.items():
        entry = record["inputs"][role]
        size = Path(where).stat().st_size
        md5 = file_md5(where)
        if md5 != entry["md5"]:
            raise InputError(
                f"{where}: the {role} input differs from the one the run record was made with: recorded MD5 "
                f"{entry['md5']} ({entry['bytes']:,} bytes), now MD5 {md5} ({size:,} bytes). A replay needs the "
                "exact inputs: restore the original file (or point the record at a copy with the recorded MD5), "
                "or run the changed data as a new analysis (batchmix run). Nothing was written."
            )
    return located


def replay_config(record: dict, located: dict[str, str] | None = None) -> dict[str, Any]:
    """The record's config with its input paths replaced by where they are now (:func:`verify_inputs`)."""
    config = copy.deepcopy(record["config"])
    located = located or {}
    for role in ("expression", "samples"):
        if role in located:
            config[role] = located[role]
    if "kinship" in located:
        config.setdefault("covariance", {})["kinship"] = located["kinship"]
    return config
