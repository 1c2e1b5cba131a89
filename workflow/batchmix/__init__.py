"""batchmix: batch-effect analysis of omics expression tables.

Modules, one concept each:

- :mod:`batchmix.io`          reading and validating the expression table and sample sheet
- :mod:`batchmix.design`      lme4-style formulas to fixed (X) and random (Z) design matrices
- :mod:`batchmix.vst`         DESeq2-compatible size factors and variance-stabilising transformation
- :mod:`batchmix.lmm`         per-gene linear mixed models, vectorised across genes
- :mod:`batchmix.moderate`    limma-style empirical-Bayes variance moderation
- :mod:`batchmix.simpson`     Simpson's-paradox co-expression reversals
- :mod:`batchmix.uncertainty` parametric bootstrap and exact grid posteriors
- :mod:`batchmix.report`      the HTML report

The package never imports Snakemake: the same code serves the workflow,
a notebook and the ``batchmix`` command line.
"""

__version__ = "0.1.0"
