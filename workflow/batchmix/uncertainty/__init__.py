"""Uncertainty for every gene: a parametric bootstrap and the posterior of every model.

Two methods, each checked against its own reference (lme4 ``bootMer`` and Stan/brms on the
sleepstudy data, see ``tests/data/sleepstudy_uncertainty/``):

* :func:`bootstrap` (:mod:`.bootstrap`): lme4's ``bootMer(type = "parametric", use.u = FALSE)``
  for all genes at once, refitting simulated responses from their sufficient statistics with
  :func:`batchmix.lmm.refit_sufficient`;
* :func:`posterior` (:mod:`.posterior`): the exact grid posterior of a model with one
  variance component, with the priors on λ = σ_b²/σ² of :mod:`.priors`; every other model (random
  slopes, several or crossed factors) and brms 2.18's default priors (``prior="brms_default"``) by
  importance sampling over the variance parameters with per-gene Pareto k̂ and ESS
  (:mod:`.multicomp`, checked against brms in ``tests/data/brms_slopes/``).

Figures are in :mod:`batchmix.plots.uncertainty`; the workflow stage that runs these is
:mod:`batchmix.pipeline.uncertainty` (statistics never run stages).
"""

from .bootstrap import BOOT_COLUMNS, BootstrapResult, CompressedDesign, bootstrap, refit_compressed, simulate_compressed
from .multicomp import DIAGNOSTIC_COLUMNS, importance_posterior, pareto_khat
from .posterior import (
    SUMMARY_COLUMNS,
    PosteriorGrid,
    PosteriorResult,
    posterior,
    posterior_arrays,
    posterior_draws,
    quantile_columns,
    single_component,
)
from .priors import BRMS_DEFAULT, PRIORS, brms_default_location_scale, log_prior_lambda

__all__ = [
    "BOOT_COLUMNS",
    "BRMS_DEFAULT",
    "DIAGNOSTIC_COLUMNS",
    "brms_default_location_scale",
    "importance_posterior",
    "pareto_khat",
    "PRIORS",
    "SUMMARY_COLUMNS",
    "BootstrapResult",
    "CompressedDesign",
    "PosteriorGrid",
    "PosteriorResult",
    "bootstrap",
    "log_prior_lambda",
    "posterior",
    "posterior_arrays",
    "posterior_draws",
    "quantile_columns",
    "refit_compressed",
    "simulate_compressed",
    "single_component",
]
