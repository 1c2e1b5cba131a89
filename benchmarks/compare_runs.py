"""Compare the results of two workflow runs: are the tables the same after a performance change?

    .venv/bin/python benchmarks/compare_runs.py BEFORE/results AFTER/results

Every file under BEFORE is looked up under AFTER. Text tables, JSON and other text files must be
byte-identical; Parquet and ``.npy`` matrices must hold the same ids and exactly the same doubles (the
bytes of a Parquet file also depend on the writer's version and settings); figures (PNG), the HTML
report and the logs are listed but not compared (their bytes carry run times and rendering
details). Files present on one side only are listed. The exit status is 1 when a compared file
differs or is missing from AFTER, so the script can gate a change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

NOT_COMPARED = (".png", ".html", ".log")
# run records and logs carry times; the run record carries the command and the machine
NOT_COMPARED_NAMES = ("run.json",)
NOT_COMPARED_DIRS = ("logs", "figures")


def _same_matrix(before: Path, after: Path) -> bool:
    if before.suffix == ".npy":
        a, b = np.load(before, allow_pickle=False), np.load(after, allow_pickle=False)
        # bit for bit, whatever the memory order (the chunks' corrected matrices are column-major)
        same_bytes = np.array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))
        return a.shape == b.shape and a.dtype == b.dtype and same_bytes
    import pandas as pd

    a, b = pd.read_parquet(before), pd.read_parquet(after)
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return False
    for column in a.columns:
        x, y = a[column].to_numpy(), b[column].to_numpy()
        if x.dtype.kind == "f" and y.dtype.kind == "f":
            if not np.array_equal(x.view(np.uint64), y.view(np.uint64)):
                return False
        elif not np.array_equal(x.astype(str), y.astype(str)):
            return False
    return True


def compare(before: Path, after: Path) -> tuple[list[str], list[str], list[str], list[str]]:
    """(same, different, missing from after, not compared) relative paths."""
    same, different, missing, skipped = [], [], [], []
    for path in sorted(p for p in before.rglob("*") if p.is_file()):
        relative = path.relative_to(before)
        other = after / relative
        if (
            path.suffix in NOT_COMPARED
            or path.name in NOT_COMPARED_NAMES
            or any(part in NOT_COMPARED_DIRS for part in relative.parts)
        ):
            skipped.append(str(relative))
            continue
        if not other.exists():
            missing.append(str(relative))
            continue
        if path.suffix in (".parquet", ".npy"):
            equal = _same_matrix(path, other)
        else:
            equal = path.read_bytes() == other.read_bytes()
        (same if equal else different).append(str(relative))
    return same, different, missing, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    same, different, missing, skipped = compare(args.before, args.after)
    extra = sorted(
        str(p.relative_to(args.after))
        for p in args.after.rglob("*")
        if p.is_file() and not (args.before / p.relative_to(args.after)).exists()
    )
    print(f"{len(same)} files the same, {len(different)} different, {len(missing)} missing from {args.after}, "
          f"{len(skipped)} not compared (figures, report, logs, run record)")  # fmt: skip
    for label, items in (("different", different), ("missing", missing), ("only in after", extra)):
        for item in items:
            print(f"  {label}: {item}")
    return 1 if different or missing else 0


if __name__ == "__main__":
    sys.exit(main())
