"""Dependencies: compatible ranges in pyproject.toml, one exact lock for the workflow's environment,
conda environments that mirror the lock, and the lock in step with the environment the tests run in."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "envs/requirements.lock"
# PyPI and conda-forge spell a few packages differently.
CONDA_NAME = {"matplotlib-base": "matplotlib"}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirements() -> list[Requirement]:
    project = _project()
    extras = project.get("optional-dependencies", {})
    return [Requirement(r) for r in project["dependencies"] + [r for group in extras.values() for r in group]]


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", line.strip())
        assert match, f"{LOCK.name}: not an exact pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{LOCK.name}: {name} twice"
        pins[name] = match[2]
    return pins


def test_library_dependencies_are_compatible_ranges():
    for requirement in [Requirement(r) for r in _project()["dependencies"]]:
        operators = {spec.operator for spec in requirement.specifier}
        assert "==" not in operators, f"{requirement}: an exact pin belongs in {LOCK.name}"
        assert ">=" in operators and "<" in operators, f"{requirement}: give a lower and an upper bound"


def test_statsmodels_is_not_a_runtime_dependency():
    assert "statsmodels" not in {canonicalize_name(Requirement(r).name) for r in _project()["dependencies"]}


def test_the_lock_pins_every_requirement_within_its_range():
    lock = _lock()
    for requirement in _requirements():
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement} is not in {LOCK.name}"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={lock[name]}, outside pyproject.toml's {requirement}"
        )


def test_the_lock_is_closed_under_dependencies_and_installed_as_locked():
    """Every locked package's own requirements are locked too (transitive ones included), and this
    environment has the locked versions: the lock was made from, and still describes, a working environment."""
    lock = _lock()
    for name, version in lock.items():
        installed = importlib.metadata.version(name)
        assert installed == version, f"{name}: {LOCK.name} pins {version}, the environment has {installed}"
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            assert canonicalize_name(requirement.name) in lock, f"{name} needs {requirement.name}, not in {LOCK.name}"


def test_conda_envs_mirror_the_lock():
    lock = _lock()
    for env in sorted((REPO / "envs").glob("*.yaml")):
        for dep in yaml.safe_load(env.read_text())["dependencies"]:
            if not isinstance(dep, str) or dep in ("pip",):
                continue
            name, _, version = dep.partition("=")
            if name == "python":
                continue
            pypi = canonicalize_name(CONDA_NAME.get(name, name))
            assert pypi in lock, f"{env.name}: {name} is not in {LOCK.name}"
            assert version == lock[pypi], f"{env.name}: {name}={version}, {LOCK.name} pins {lock[pypi]}"
