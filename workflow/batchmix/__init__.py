"""batchmix: batch-effect analysis of omics expression tables.

Layers, one concept per module:

- :mod:`batchmix.io`          reading, validating and writing tables (ids always kept verbatim as text)
- :mod:`batchmix.design`      lme4-style formulas to fixed (X) and random (Z) design matrices
- :mod:`batchmix.vst`         DESeq2-compatible size factors and variance-stabilising transformation
- :mod:`batchmix.lmm`         per-gene linear mixed models, vectorised across genes; the results contract
- :mod:`batchmix.moderate`    limma-style empirical-Bayes variance moderation
- :mod:`batchmix.simpson`     Simpson's-paradox co-expression reversals
- :mod:`batchmix.uncertainty` parametric bootstrap and exact grid posteriors
- :mod:`batchmix.plots`       figures (one shared style)
- :mod:`batchmix.report`      the HTML report
- :mod:`batchmix.pipeline`    the workflow's stages (one registry, one signature), their logs and every output path
- :mod:`batchmix.config`      the config schema and its defaults
- :mod:`batchmix.runrecord`   the run record (run.json) of an analysis, and the checks of a replay
- :mod:`batchmix.cli`         the ``batchmix`` command, generated from the stage registry

The package never imports Snakemake: the same code serves the workflow,
a notebook and the ``batchmix`` command line.
"""

__version__ = "0.1.0"
