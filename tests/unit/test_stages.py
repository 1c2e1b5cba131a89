"""The gather stage's moderation: the trend covariate is the mean on the stabilised scale."""

from __future__ import annotations

import numpy as np
import pandas as pd
from batchmix import moderate
from batchmix.io import write_table
from batchmix.pipeline.lmm import gather_lmm_stage


def test_trended_moderation_uses_the_mean_stabilised_expression(tmp_path):
    rng = np.random.default_rng(3)
    G = 300
    genes = [f"g{i}" for i in range(G)]
    # a variance trend on the log scale, and linear-scale base means that are a very different covariate
    mean_expression = rng.uniform(2, 14, G)
    var = np.exp(-0.25 * mean_expression) * rng.chisquare(20, G) / 20
    fits = pd.DataFrame(
        {
            "gene_id": genes,
            "status": "ok",
            "n": 24.0,
            "var_residual": var,
            "df_residual": 20.0,
            "coef_x": rng.normal(size=G),
            "se_x": np.sqrt(var / 12),
            "df_x": 20.0,
            "p_x": 0.5,
        }
    )
    status = pd.DataFrame(
        {
            "gene_id": genes,
            "status": "ok",
            "base_mean": 2.0**mean_expression,
            "mean_expression": mean_expression,
            "n_observed": 24,
        }
    )
    write_table(fits, tmp_path / "1-of-1.fits.tsv")
    write_table(pd.DataFrame(columns=["gene_id", "group", "level", "term", "value"]), tmp_path / "1-of-1.blups.tsv")
    write_table(status, tmp_path / "gene_status.tsv")
    config = {"moderate": {"enabled": True, "trend": True, "robust": False}}
    out = {"gene_fits": str(tmp_path / "gene_fits.tsv"), "blups": str(tmp_path / "blups.tsv")}
    inputs = {
        "fits": [str(tmp_path / "1-of-1.fits.tsv")],
        "blups": [str(tmp_path / "1-of-1.blups.tsv")],
        "corrected": [],
        "gene_status": str(tmp_path / "gene_status.tsv"),
    }
    gather_lmm_stage(config, inputs, out, {})
    got = pd.read_csv(out["gene_fits"], sep="\t")
    on_log_scale = moderate.squeeze_var(var, 20.0, covariate=mean_expression)
    on_linear_scale = moderate.squeeze_var(var, 20.0, covariate=2.0**mean_expression)
    np.testing.assert_allclose(got["s0"] ** 2, on_log_scale.var_prior, rtol=1e-8)
    # and the choice matters: the linear-scale covariate gives a visibly different prior
    assert np.max(np.abs(np.log(on_linear_scale.var_prior / on_log_scale.var_prior))) > 0.1
