"""The config contract: schema errors name the key; defaults are filled in."""

from __future__ import annotations

import re

import pytest
import yaml
from batchmix.config import SCHEMA_PATH, validate_config
from batchmix.io import InputError

BASE = {"expression": "e.tsv", "samples": "s.tsv", "input_type": "counts", "model": "~ c + (1|b)", "batch": "b"}


def test_defaults_are_filled_recursively():
    config = validate_config(dict(BASE))
    assert config["reml"] is True and config["chunks"] == 4
    assert config["vst"]["fit_type"] == "parametric" and config["simpson"]["fdr"] == 0.05


def test_partial_section_keeps_given_values_and_fills_the_rest():
    config = validate_config({**BASE, "vst": {"nsub": None}})
    assert config["vst"]["nsub"] is None and config["vst"]["blind"] is True


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"input_type": "fpkm"}, "input_type"),
        ({"chunks": 0}, "chunks"),
        ({"simpson": {"genes": "some"}}, "simpson.genes"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_schema_errors_name_the_key(change, fragment):
    with pytest.raises(InputError) as err:
        validate_config({**BASE, **change}, "my.yaml")
    assert "my.yaml" in str(err.value) and fragment in str(err.value)


def test_missing_required_key():
    config = dict(BASE)
    del config["model"]
    with pytest.raises(InputError, match="'model' is a required property"):
        validate_config(config)


def test_shipped_config_is_valid_and_every_key_is_commented():
    from batchmix.config import load_config

    path = SCHEMA_PATH.parents[2] / "config" / "config.yaml"
    load_config(path)
    lines = path.read_text().splitlines()
    keys = [(i, line) for i, line in enumerate(lines) if re.match(r"^\s*[A-Za-z_]+:", line)]
    assert len(keys) > 20
    for i, line in keys:
        assert lines[i - 1].strip().startswith("#"), f"no comment above config key: {line!r}"
    assert yaml.safe_load(path.read_text())["input_type"] == "counts"


@pytest.mark.parametrize(
    "change, words",
    [
        ({"reml": "maybe"}, ["reml: 'maybe'", "Allowed: a boolean", "REML (true) or ML (false)"]),
        ({"input_type": "fpkm"}, ["input_type: 'fpkm'", "'counts', 'estimated_counts', 'log'"]),
        ({"simpson": {"genes": "some"}}, ["simpson.genes: 'some'", "one of 'all' or an integer >= 2"]),
        ({"modle": "~ x"}, ["modle: unknown key", "did you mean 'model'?"]),
    ],
)
def test_schema_errors_give_the_value_what_is_allowed_and_the_keys_description(change, words):
    with pytest.raises(InputError) as err:
        validate_config({**BASE, **change}, "my.yaml")
    message = str(err.value)
    for word in words:
        assert word in message, message
    assert len(message.splitlines()) < 10, "the message must not print the schema"


def test_adjust_for_columns_are_checked_against_the_sheet(tmp_path):
    sheet = tmp_path / "s.tsv"
    sheet.write_text("sample_id\tb\tc\ns1\tA\tx\ns2\tB\ty\n")
    config = {**BASE, "samples": str(sheet), "simpson": {"adjust_for": ["c", "Treatment"]}}
    with pytest.raises(InputError) as err:
        validate_config(config, check_inputs=True)
    assert str(sheet) in str(err.value) and "'Treatment'" in str(err.value) and "adjust_for" in str(err.value)
    validate_config(config)  # without check_inputs the files are not read
