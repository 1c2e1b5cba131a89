"""Several analyses in one config: merging, names, errors, shared stabilisation, per-stage settings."""

from __future__ import annotations

import json

import pytest
from batchmix.analyses import merge_overrides, resolve_analyses, stabilise_key, stage_settings
from batchmix.io import InputError

BASE = {
    "expression": "e.tsv",
    "samples": "s.tsv",
    "input_type": "counts",
    "model": "~ c + (1|b)",
    "batch": "b",
    "simpson": {"fdr": 0.1, "genes": 500},
    "levels": {"c": ["ctrl", "trt"]},
}


def test_a_config_without_analyses_is_one_unnamed_analysis_under_results():
    (only,) = resolve_analyses(dict(BASE))
    assert only.name is None and only.outdir == "results" and only.stabilise_outdir == "results"
    assert only.rule("stabilise") == "stabilise" and only.rule("lmm_chunk") == "lmm_chunk"
    assert only.config["reml"] is True and only.config["simpson"]["fdr"] == 0.1


def test_overrides_merge_nested_keys_and_replace_the_rest():
    merged = merge_overrides(BASE, {"simpson": {"fdr": 0.2}, "model": "~ c + b", "levels": {"b": ["x", "y"]}})
    assert merged["simpson"] == {"fdr": 0.2, "genes": 500}
    assert merged["model"] == "~ c + b"
    # levels are replaced whole, not merged column by column
    assert merged["levels"] == {"b": ["x", "y"]}
    # the base is not changed
    assert BASE["simpson"] == {"fdr": 0.1, "genes": 500}


def test_each_analysis_gets_its_folder_its_rules_and_its_merged_config():
    config = {**BASE, "analyses": {"random": {}, "fixed": {"model": "~ c + b"}, "strict": {"simpson": {"fdr": 0.01}}}}
    analyses = resolve_analyses(config)
    assert [a.name for a in analyses] == ["random", "fixed", "strict"]
    assert [a.outdir for a in analyses] == ["results/random", "results/fixed", "results/strict"]
    assert analyses[1].config["model"] == "~ c + b" and analyses[0].config["model"] == "~ c + (1|b)"
    assert analyses[2].config["simpson"] == {**analyses[0].config["simpson"], "fdr": 0.01}
    assert analyses[1].rule("gather_lmm") == "gather_lmm_fixed"
    assert "analyses" not in analyses[0].config


def test_analyses_on_the_same_data_share_one_stabilise_folder_and_others_do_not():
    config = {
        **BASE,
        "analyses": {
            "a": {},
            "b": {"model": "~ c + b", "simpson": {"enabled": False}},
            "other_trend": {"vst": {"fit_type": "mean"}},
            "other_data": {"expression": "f.tsv"},
        },
    }
    a, b, trend, data = resolve_analyses(config)
    assert a.stabilise_outdir == b.stabilise_outdir
    assert a.stabilise_outdir.startswith("results/shared/stabilise-")
    assert len({a.stabilise_outdir, trend.stabilise_outdir, data.stabilise_outdir}) == 3
    assert a.shares_stabilise_with == ("a", "b") and trend.shares_stabilise_with == ("other_trend",)
    # a and b differ in their model only (the scan does not read it) but b does not scan
    assert a.simpson_outdir.startswith("results/shared/simpson-")


def test_analyses_that_differ_only_in_their_model_share_the_simpson_scan():
    config = {
        **BASE,
        "analyses": {"random": {}, "fixed": {"model": "~ c + b"}, "stricter": {"simpson": {"fdr": 0.01}}},
    }
    random, fixed, stricter = resolve_analyses(config)
    assert random.simpson_outdir == fixed.simpson_outdir != stricter.simpson_outdir
    (single,) = resolve_analyses(dict(BASE))
    assert single.simpson_outdir == "results"


def test_the_model_matters_to_stabilisation_only_when_the_vst_is_not_blind():
    blind = resolve_analyses(dict(BASE))[0].config
    other_model = {**blind, "model": "~ c + b"}
    assert stabilise_key(blind) == stabilise_key(other_model)
    not_blind = {**blind, "vst": {**blind["vst"], "blind": False}}
    assert stabilise_key(not_blind) != stabilise_key({**not_blind, "model": "~ c + b"})


def test_stage_settings_hold_only_what_the_stage_depends_on():
    config = resolve_analyses(dict(BASE))[0].config
    simpson_changed = {**config, "simpson": {**config["simpson"], "fdr": 0.2}}
    assert stage_settings(config, "gather_lmm") == stage_settings(simpson_changed, "gather_lmm")
    assert stage_settings(config, "simpson") != stage_settings(simpson_changed, "simpson")
    assert stage_settings(config, "report") != stage_settings(simpson_changed, "report")
    model_changed = {**config, "model": "~ c + b"}
    assert stage_settings(config, "stabilise") == stage_settings(model_changed, "stabilise")
    assert stage_settings(config, "lmm_chunk") != stage_settings(model_changed, "lmm_chunk")
    assert json.loads(stage_settings(config, "de"))["de"] == {"fdr": 0.05}


@pytest.mark.parametrize(
    "analyses, fragments",
    [
        ({"1st": {}}, ["analyses.1st", "starting with a letter"]),
        ({"a b": {}}, ["analyses.a b", "letters, digits"]),
        ({"shared": {}}, ["analyses.shared", "taken by results/shared"]),
        ({"Fixed": {}, "fixed": {}}, ["analyses.fixed", "clashes with analyses.Fixed"]),
        ({"a-b": {}, "a_b": {}}, ["analyses.a_b", "clashes with analyses.a-b"]),
        ({"a": {"chunks": 8}}, ["analyses.a.chunks", "whole run", "top level"]),
        ({"a": "~ c"}, ["analyses.a must be a mapping"]),
        ({"a": {}, "b": {"reml": "maybe"}}, ["analyses.b", "reml: 'maybe'", "REML (true) or ML (false)"]),
        ({"a": {}, "b": {"modle": "~ c"}}, ["analyses.b", "modle: unknown key", "did you mean 'model'?"]),
    ],
)
def test_errors_name_the_analysis_and_the_key(analyses, fragments):
    with pytest.raises(InputError) as err:
        resolve_analyses({**BASE, "analyses": analyses}, "study.yaml")
    message = str(err.value)
    assert message.startswith("study.yaml")
    for fragment in fragments:
        assert fragment in message, message


def test_analyses_must_be_a_mapping():
    with pytest.raises(InputError, match="analyses must map each analysis's name"):
        resolve_analyses({**BASE, "analyses": ["a", "b"]})
