"""The conda environments mirror the pins of pyproject.toml, so --sdm conda runs the same versions."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# PyPI and conda-forge spell a few packages differently.
CONDA_NAME = {"matplotlib": "matplotlib-base"}


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9.]+)", dep).groups()
        pins[CONDA_NAME.get(name.lower(), name.lower())] = version
    return pins


def test_every_dependency_is_pinned_exactly():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert deps and all("==" in d for d in deps)


def test_conda_envs_mirror_the_pins():
    pins = _pyproject_pins()
    seen = set()
    for env in sorted((REPO / "envs").glob("*.yaml")):
        for dep in yaml.safe_load(env.read_text())["dependencies"]:
            name, _, version = dep.partition("=")
            if name == "python":
                continue
            assert name in pins, f"{env.name}: {name} is not a dependency in pyproject.toml"
            assert version == pins[name], f"{env.name}: {name}={version}, pyproject.toml pins {pins[name]}"
            seen.add(name)
    assert seen == set(pins), f"not in any envs/*.yaml: {sorted(set(pins) - seen)}"
