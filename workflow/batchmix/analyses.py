"""Several analyses in one config: ``analyses:`` maps a name to overrides of the top-level keys.

The top level of a config holds the defaults; each entry of ``analyses:`` overrides some of them
(nested mappings are merged key by key, anything else is replaced), and the merged config of every
analysis is validated as a whole config is. A config without ``analyses:`` is one analysis without a
name, written under ``results/`` exactly as before.

With ``analyses:``

- each analysis writes under ``results/<name>/`` with the layout of a single run's ``results/``;
- analyses with the same expression input and stabilisation settings share one stabilise job, whose
  outputs live under ``results/shared/stabilise-<key>/`` (``key``: a digest of those settings, so
  that changing one analysis's stabilisation never moves another's files); likewise analyses whose
  Simpson scan reads the same data with the same settings share it, under ``results/shared/simpson-<key>/``;
- ``results/compare/`` and ``results/index.html`` compare the analyses.

Every stage of an analysis depends on some of its settings only (:data:`STAGE_SETTINGS`): the
workflow passes them to the rule as a parameter, so that Snakemake's ``params`` rerun trigger reruns
exactly the jobs whose settings changed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from batchmix.io import InputError

__all__ = [
    "ANALYSIS_NAME",
    "RESERVED_NAMES",
    "RUN_WIDE_KEYS",
    "STAGE_SETTINGS",
    "SHARED_DIR",
    "Analysis",
    "has_analyses",
    "merge_overrides",
    "resolve_analyses",
    "stage_settings",
    "stabilise_key",
    "simpson_key",
]

# A name is a folder under results/ and part of rule names: letters, digits, '_' and '-', starting
# with a letter.
ANALYSIS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")

# results/ holds these next to the analyses' folders.
SHARED_DIR = "shared"
RESERVED_NAMES = frozenset({SHARED_DIR, "compare", "logs", "index"})

# Keys that hold for the whole run, not per analysis: the LMM's chunk count is Snakemake's scatter
# (one per workflow, --set-scatter lmm=N).
RUN_WIDE_KEYS = frozenset({"chunks", "analyses"})

# The settings of the stabilise stage (with vst.blind: false the model's fixed part too).
_STABILISE_KEYS = (
    "expression",
    "samples",
    "expression_layer",
    "featurecounts_samples",
    "input_type",
    "filter",
    "vst",
    "outputs",
)
_MODEL_KEYS = ("model", "batch", "levels", "covariance")

# The config keys each stage's outputs depend on (besides its input files). The report and the run
# record depend on the whole analysis.
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "stabilise": _STABILISE_KEYS,
    "split_genes": ("chunks",),
    "lmm_chunk": (*_MODEL_KEYS, "reml", "outputs"),
    "gather_lmm": (*_MODEL_KEYS, "reml", "moderate", "outputs"),
    "design": (*_MODEL_KEYS, "input_type"),
    "de": (*_MODEL_KEYS, "reml", "moderate", "de"),
    "diagnostics": (*_MODEL_KEYS, "outputs"),
    "summary": (*_MODEL_KEYS, "reml", "de"),
    "simpson_prepare": ("samples", "batch", "levels", "simpson"),
    "simpson_block": ("samples", "batch", "levels", "simpson"),
    "simpson_null": ("samples", "batch", "levels", "simpson"),
    "simpson": ("samples", "batch", "levels", "simpson", "report"),
    "uncertainty": (*_MODEL_KEYS, "reml", "uncertainty", "report"),
}


def has_analyses(config: dict) -> bool:
    """Whether ``config`` declares several analyses (a non-empty ``analyses:``)."""
    return bool(config.get("analyses"))


def merge_overrides(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied: nested mappings merged key by key, other values replaced."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "levels":
            out[key] = merge_overrides(out[key], value)
        else:
            # levels are replaced whole: an analysis that orders one column's levels must not
            # inherit an order of the same column that no longer matches its sheet
            out[key] = copy.deepcopy(value)
    return out


def stage_settings(config: dict, stage: str) -> str:
    """The settings ``stage`` depends on, as canonical JSON (a Snakemake ``params`` value).

    Stages not in :data:`STAGE_SETTINGS` (the report, the run record) depend on the whole config.
    """
    keys = STAGE_SETTINGS.get(stage)
    if stage == "stabilise" and not (config.get("vst") or {}).get("blind", True):
        keys = (*keys, *_MODEL_KEYS)
    chosen = {k: config.get(k) for k in keys} if keys else {k: v for k, v in config.items() if k != "analyses"}
    return json.dumps(chosen, sort_keys=True, default=str)


def stabilise_key(config: dict) -> str:
    """A short digest of the stabilise settings: analyses with the same key share one stabilise job."""
    return hashlib.sha256(stage_settings(config, "stabilise").encode()).hexdigest()[:10]


def simpson_key(config: dict) -> str:
    """A short digest of what the Simpson scan depends on: the stabilisation and the scan's settings.

    The scan reads the stabilised matrix, the sheet and the batch, and the model only through
    ``simpson.adjust_for`` (sheet columns): analyses that differ only in their model share one scan.
    """
    text = stabilise_key(config) + stage_settings(config, "simpson")
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Analysis:
    """One analysis of a config.

    Attributes
    ----------
    name : str or None
        The name under ``analyses:``; None for a config without ``analyses:``.
    config : dict
        The merged config, validated, defaults filled in, without ``analyses``.
    outdir : str
        Where its outputs go: ``results`` or ``results/<name>``.
    stabilise_outdir : str
        Where its stabilise outputs are: ``outdir`` without ``analyses:``, else the shared
        ``results/shared/stabilise-<key>``.
    shares_stabilise_with : tuple of str
        The analyses (this one included) whose stabilise job is this one's.
    simpson_outdir : str
        Where its Simpson scan's outputs are: ``outdir`` without ``analyses:``, else the shared
        ``results/shared/simpson-<key>`` (:func:`simpson_key`).
    """

    name: str | None
    config: dict = field(repr=False)
    outdir: str
    stabilise_outdir: str
    shares_stabilise_with: tuple[str, ...] = ()
    simpson_outdir: str = ""

    def __post_init__(self):
        if not self.simpson_outdir:
            object.__setattr__(self, "simpson_outdir", self.outdir)

    def rule(self, stage: str) -> str:
        """The Snakemake rule of ``stage`` for this analysis: ``stage``, or ``stage_<name>``."""
        return stage if self.name is None else f"{stage}_{self.name.replace('-', '_')}"

    @property
    def label(self) -> str:
        """How messages name the analysis."""
        return "the analysis" if self.name is None else f"analysis {self.name!r}"


def _check_names(names: list[str], source: str) -> None:
    problems = []
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not ANALYSIS_NAME.match(name):
            problems.append(
                f"  analyses.{name}: the name is not usable as a folder and a rule name; use letters, digits, "
                "'_' and '-', starting with a letter (e.g. random_batch)."
            )
            continue
        if name.lower() in RESERVED_NAMES:
            problems.append(
                f"  analyses.{name}: the name is taken by results/{name.lower()}; choose another "
                f"(reserved: {', '.join(sorted(RESERVED_NAMES))})."
            )
        folded = name.lower().replace("-", "_")
        if folded in seen:
            problems.append(
                f"  analyses.{name}: clashes with analyses.{seen[folded]} (names must differ other than in "
                "letter case and '-' against '_': they become folders and rule names)."
            )
        seen.setdefault(folded, name)
    if problems:
        raise InputError(f"{source}: the analysis names are invalid:\n" + "\n".join(problems))


def resolve_analyses(config: dict[str, Any], source: str = "config", *, outdir: str = "results") -> list[Analysis]:
    """The analyses of ``config``, each merged with the top-level defaults and validated.

    Parameters
    ----------
    config : dict
        A config as read (Snakemake's ``config``, or YAML), with or without ``analyses:``.
    source : str
        Where it came from, for messages.
    outdir : str
        The results folder.

    Returns
    -------
    list of Analysis
        One analysis without a name when ``config`` has no ``analyses:``; else one per entry, in the
        config's order.

    Raises
    ------
    batchmix.io.InputError
        For an invalid name, a run-wide key set in an analysis, or an analysis whose merged config
        fails validation: the message names the analysis and the key.
    """
    from batchmix.config import validate_config

    if not has_analyses(config):
        resolved = validate_config({k: v for k, v in config.items() if k != "analyses"}, source)
        return [Analysis(None, resolved, outdir, outdir)]
    entries = config["analyses"]
    if not isinstance(entries, dict):
        raise InputError(
            f"{source}: analyses must map each analysis's name to its overrides of the top-level keys, "
            f"e.g. analyses: {{random_batch: {{model: '~ condition + (1|batch)'}}}}; it is {entries!r}."
        )
    _check_names(list(entries), source)
    base = {k: v for k, v in config.items() if k != "analyses"}
    merged: list[tuple[str, dict]] = []
    for name, overrides in entries.items():
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise InputError(
                f"{source}: analyses.{name} must be a mapping of top-level keys to override (e.g. model: ...); "
                f"it is {overrides!r}."
            )
        run_wide = sorted(set(overrides) & RUN_WIDE_KEYS)
        if run_wide:
            raise InputError(
                f"{source}: analyses.{name}.{run_wide[0]}: {run_wide[0]} holds for the whole run; "
                "set it at the top level of the config, not in an analysis."
            )
        resolved = validate_config(merge_overrides(base, overrides), f"{source}: analyses.{name}")
        merged.append((name, resolved))
    root = str(outdir).rstrip("/")
    keys = {name: stabilise_key(resolved) for name, resolved in merged}
    return [
        Analysis(
            name,
            resolved,
            f"{root}/{name}",
            f"{root}/{SHARED_DIR}/stabilise-{keys[name]}",
            tuple(other for other, _ in merged if keys[other] == keys[name]),
            f"{root}/{SHARED_DIR}/simpson-{simpson_key(resolved)}",
        )
        for name, resolved in merged
    ]
