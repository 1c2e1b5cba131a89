"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

SLEEPSTUDY = Path(__file__).resolve().parents[1] / "data" / "sleepstudy_uncertainty" / "sleepstudy.tsv"


@pytest.fixture(scope="session")
def sleep() -> tuple[pd.DataFrame, pd.DataFrame]:
    """lme4's sleepstudy as batchmix sees it: a one-gene (Reaction) × 180-sample table and its sheet."""
    d = pd.read_csv(SLEEPSTUDY, sep="\t")
    d.index = [f"s{i}" for i in range(len(d))]
    expr = pd.DataFrame([d["Reaction"].to_numpy()], index=["Reaction"], columns=d.index)
    return expr, d
