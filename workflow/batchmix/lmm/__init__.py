"""Per-gene linear mixed models, vectorised across genes (lme4 + lmerTest results).

Typical use::

    from batchmix import lmm
    result = lmm.fit(vst_table, samples, "~ condition + (1 | batch)")
    result.gene_fits.head()
    result.metadata.to_dict()        # which column holds which parameter
    corrected = lmm.corrected_expression(vst_table, samples, result, groups=["batch"])

Modules: :mod:`.results` (column names, θ → Σ, :class:`ModelMetadata`), :mod:`.core`
(shared design and evaluation), :mod:`.onecomp`, :mod:`.block` (the engines),
:mod:`.fitting` (orchestration over genes).
"""

from .core import PreparedDesign
from .fitting import (
    FIXED_VCOV_COLUMNS,
    ArrayFit,
    LMMFit,
    corrected_expression,
    fit,
    fit_arrays,
    prepare,
)
from .results import ModelMetadata, model_metadata

__all__ = [
    "FIXED_VCOV_COLUMNS",
    "ArrayFit",
    "LMMFit",
    "ModelMetadata",
    "PreparedDesign",
    "corrected_expression",
    "fit",
    "fit_arrays",
    "model_metadata",
    "prepare",
]
