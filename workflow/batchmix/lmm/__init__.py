"""Per-gene linear mixed models, vectorised across genes (lme4 + lmerTest results).

Typical use::

    from batchmix import lmm
    result = lmm.fit(vst_table, samples, "~ condition + (1 | batch)")
    result.gene_fits.head()
    result.metadata.to_dict()        # which column holds which parameter
    corrected = lmm.corrected_expression(vst_table, samples, result, groups=["batch"])

Modules (each imports only those listed before it):

- :mod:`.results`: the ``gene_fits`` column names, θ → Σ, :class:`ModelMetadata`;
- :mod:`.missing`: genes grouped by missingness pattern, the gene statuses;
- :mod:`.core`: the design shared by all genes (with the engines' precomputation),
  evaluation of lme4's profiled deviance and its derivatives, Satterthwaite;
- :mod:`.onecomp`: one variance component, the EMMA / FaST-LMM rotation and the λ search;
- :mod:`.block`: one grouping factor with several columns, level by level;
- :mod:`.general`: any model, projected Newton in θ;
- :mod:`.fitting`: :func:`prepare`, :func:`fit_arrays`, :func:`fit`, :func:`refit_sufficient`,
  :func:`corrected_expression`.
"""

from .core import PreparedDesign
from .fitting import (
    FIXED_VCOV_COLUMNS,
    ArrayFit,
    LMMFit,
    SufficientFit,
    corrected_expression,
    fit,
    fit_arrays,
    prepare,
    refit_sufficient,
)
from .results import ModelMetadata, model_metadata

__all__ = [
    "FIXED_VCOV_COLUMNS",
    "ArrayFit",
    "LMMFit",
    "ModelMetadata",
    "PreparedDesign",
    "SufficientFit",
    "corrected_expression",
    "fit",
    "fit_arrays",
    "model_metadata",
    "prepare",
    "refit_sufficient",
]
