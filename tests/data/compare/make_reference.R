#!/usr/bin/env Rscript
# Reference information criteria for batchmix.compare.information_criteria, made with lme4.
# Run from the repository root (after tests/data/compare/make_input.py wrote the input):
#   Rscript tests/data/compare/make_reference.R
# Input, next to this script: vst_200.tsv.gz (the stabilised expression of 200 genes of the embedded
# example, resources/example) and samples.tsv. For every gene and each of three models, fitted by
# maximum likelihood,
#   ~ Infection + (1|Batch)   lmer(..., REML = FALSE)
#   ~ Infection + Batch       lm(...)        (logLik of lm is the ML log-likelihood)
#   ~ Infection               lm(...)
# writes reference.tsv: gene_id, model, loglik (logLik), df (attr(logLik, "df")), aic (AIC), bic (BIC),
# nobs, singular (isSingular, lmer only); and versions.tsv.
suppressPackageStartupMessages(library(lme4))
out <- dirname(normalizePath(sub("--file=", "", grep("--file=", commandArgs(), value = TRUE))))
expr <- as.matrix(read.delim(gzfile(file.path(out, "vst_200.tsv.gz")), row.names = 1, check.names = FALSE))
samples <- read.delim(file.path(out, "samples.tsv"), row.names = 1, check.names = FALSE)
stopifnot(identical(colnames(expr), rownames(samples)))
samples$Infection <- factor(samples$Infection)
samples$Batch <- factor(samples$Batch)

models <- c("~ Infection + (1|Batch)", "~ Infection + Batch", "~ Infection")
# tight optimiser tolerances, so that the reference is lme4's optimum and not its stopping rule
control <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5),
                       check.conv.singular = "ignore")
rows <- list()
for (gene in rownames(expr)) {
  d <- samples
  d$y <- as.numeric(expr[gene, ])
  for (m in models) {
    f <- as.formula(paste("y", m))
    if (grepl("|", m, fixed = TRUE)) {
      fit <- lmer(f, data = d, REML = FALSE, control = control)
      singular <- isSingular(fit)
    } else {
      fit <- lm(f, data = d)
      singular <- NA
    }
    ll <- logLik(fit)
    rows[[length(rows) + 1]] <- data.frame(
      gene_id = gene, model = m, loglik = as.numeric(ll), df = attr(ll, "df"),
      aic = AIC(fit), bic = BIC(fit), nobs = nobs(fit), singular = singular)
  }
}
ref <- do.call(rbind, rows)
num <- c("loglik", "aic", "bic")
ref[num] <- lapply(ref[num], function(x) sprintf("%.17g", x))
write.table(ref, file.path(out, "reference.tsv"), sep = "\t", quote = FALSE,
            row.names = FALSE)
versions <- data.frame(
  package = c("R", "lme4", "Matrix"),
  version = c(paste(R.version$major, R.version$minor, sep = "."),
              as.character(packageVersion("lme4")), as.character(packageVersion("Matrix"))))
write.table(versions, file.path(out, "versions.tsv"), sep = "\t", quote = FALSE, row.names = FALSE)
cat("wrote", nrow(ref), "rows to", file.path(out, "reference.tsv"), "\n")
