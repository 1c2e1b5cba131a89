#!/usr/bin/env Rscript
# Reference fits for batchmix's per-gene linear mixed models (batchmix.lmm), made with
# lme4 + lmerTest. Run from the repository root:
#   Rscript tests/data/lme4/make_fixtures.R DATA_DIR
# Inputs: DATA_DIR/sleepstudy/sleepstudy.csv and DATA_DIR/{bottomly,gse147507}/{counts,samples}.tsv,
# the public data sets described in the *_SOURCE.md files next to this script (their origins and
# licenses; README.md says where to get them). Writes, next to this script:
#   sleepstudy.csv.gz                    the data (copied)
#   <set>_vst.tsv.gz, <set>_samples.tsv  DESeq2 vst(blind=TRUE) of a gene subset (the *input* of the tests)
#   fits.tsv.gz                          long table: dataset, model, gene_id, stat, value
#   blups.tsv.gz                         long table: dataset, model, gene_id, group, level, term, value
#   versions.tsv                         R and package versions
suppressPackageStartupMessages({
  library(lme4); library(lmerTest); library(DESeq2)
})
args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 1) stop("usage: Rscript tests/data/lme4/make_fixtures.R DATA_DIR (see README.md)")
shared <- args[1]
out <- dirname(normalizePath(sub("--file=", "", grep("--file=", commandArgs(), value = TRUE))))

sanitize <- function(x) gsub("[^A-Za-z0-9_.]", "_", gsub("^\\(Intercept\\)$", "Intercept", x))

# one lmer fit -> named numeric vector of statistics, plus its BLUPs
fit_one <- function(formula, data, reml) {
  warn <- character(0)
  fit <- withCallingHandlers(
    do.call(lmerTest::lmer, list(formula = formula, data = data, REML = reml)),
    warning = function(w) { warn <<- c(warn, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) invokeRestart("muffleMessage"))
  conv_msgs <- fit@optinfo$conv$lme4$messages
  stats <- c()
  n <- nobs(fit); p <- ncol(getME(fit, "X"))
  ll <- logLik(fit)
  k <- attr(ll, "df")
  stats["n"] <- n
  stats["loglik"] <- as.numeric(ll)
  stats["aic"] <- -2 * as.numeric(ll) + 2 * k
  stats["bic"] <- -2 * as.numeric(ll) + log(n) * k
  # OLS without random terms, on the same scale (REML or ML) as the mixed model
  lmfit <- do.call(lm, list(formula = nobars(formula), data = data))
  oll <- as.numeric(logLik(lmfit, REML = reml))
  stats["ols_loglik"] <- oll
  stats["ols_aic"] <- -2 * oll + 2 * (p + 1)
  stats["ols_bic"] <- -2 * oll + log(n) * (p + 1)
  ntheta <- length(getME(fit, "theta"))
  lrt <- max(2 * (as.numeric(ll) - oll), 0)
  stats["lrt_stat"] <- lrt
  stats["lrt_p"] <- if (ntheta == 1) 0.5 * pchisq(lrt, 1, lower.tail = FALSE) else pchisq(lrt, ntheta, lower.tail = FALSE)
  if (length(findbars(formula)) == 1) {
    # lmerTest's ranova compares REML (or ML) criteria against the lm fit: same statistic
    rv <- ranova(fit)
    stats["ranova_stat"] <- rv[2, "LRT"]
    stats["ranova_p"] <- rv[2, "Pr(>Chisq)"]
  }
  stats["singular"] <- as.numeric(isSingular(fit, tol = 1e-4))
  # lme4's convergence checks (the "boundary (singular) fit" note is not one of them) and
  # any other warning (lmerTest warns when the deviance Hessian is not positive definite)
  conv_msgs <- grep("singular", conv_msgs, value = TRUE, invert = TRUE)
  stats["conv_warning"] <- as.numeric(length(conv_msgs) > 0 || any(grepl("converge", warn)))
  stats["other_warning"] <- as.numeric(length(warn) > 0)
  stats["sigma"] <- sigma(fit)
  stats["var_residual"] <- sigma(fit)^2
  stats["df_residual"] <- n - qr(cbind(as.matrix(getME(fit, "X")), as.matrix(getME(fit, "Z"))))$rank
  th <- getME(fit, "theta")
  for (i in seq_along(th)) stats[paste0("theta_", i)] <- th[i]
  stats["deviance_crit"] <- if (reml) REMLcrit(fit) else deviance(fit)
  vc <- VarCorr(fit)
  for (g in names(vc)) {
    m <- vc[[g]]
    grp <- sub("\\.[0-9]+$", "", g)  # lme4 suffixes repeated groups (|| terms) with .1, .2
    terms <- sanitize(colnames(m))
    if (nrow(m) == 1 && terms == "Intercept") {
      stats[paste0("var_", grp)] <- m[1, 1]
    } else {
      for (i in seq_len(nrow(m))) stats[paste0("var_", grp, "_", terms[i])] <- m[i, i]
      if (nrow(m) > 1) {
        cm <- attr(m, "correlation")
        for (i in 1:(nrow(m) - 1)) for (j in (i + 1):nrow(m))
          stats[paste0("cor_", grp, "_", terms[i], "_", terms[j])] <- cm[i, j]
      }
    }
  }
  co <- summary(fit)$coefficients
  nm <- sanitize(rownames(co))
  stats[paste0("coef_", nm)] <- co[, "Estimate"]
  stats[paste0("se_", nm)] <- co[, "Std. Error"]
  stats[paste0("df_", nm)] <- co[, "df"]
  stats[paste0("t_", nm)] <- co[, "t value"]
  stats[paste0("p_", nm)] <- co[, "Pr(>|t|)"]
  re <- ranef(fit)
  blups <- do.call(rbind, lapply(names(re), function(g) {
    d <- re[[g]]
    do.call(rbind, lapply(colnames(d), function(tm) data.frame(
      group = g, level = rownames(d), term = sanitize(tm), value = d[[tm]])))
  }))
  list(stats = stats, blups = blups)
}

fits <- list(); blups <- list()
record <- function(dataset, model, gene, res) {
  fits[[length(fits) + 1]] <<- data.frame(dataset = dataset, model = model, gene_id = gene,
                                          stat = names(res$stats), value = unname(res$stats))
  blups[[length(blups) + 1]] <<- cbind(data.frame(dataset = dataset, model = model, gene_id = gene), res$blups)
}

# ---- sleepstudy: the four models of its SOURCE.md plus ML slopes and uncorrelated slopes
ss <- read.csv(file.path(shared, "sleepstudy", "sleepstudy.csv"))
ss$Subject <- factor(ss$Subject)
copy_rw <- function(from, to) { unlink(to); file.copy(from, to); Sys.chmod(to, "0644") }
unlink(file.path(out, "sleepstudy.csv.gz"))
copy_rw(file.path(shared, "sleepstudy", "sleepstudy.csv"), file.path(out, "sleepstudy.csv"))
system2("gzip", c("-nf", file.path(out, "sleepstudy.csv")))
sleep_models <- list(
  intercept_reml = list("Reaction ~ Days + (1 | Subject)", TRUE),
  intercept_ml = list("Reaction ~ Days + (1 | Subject)", FALSE),
  slopes_reml = list("Reaction ~ Days + (Days | Subject)", TRUE),
  slopes_ml = list("Reaction ~ Days + (Days | Subject)", FALSE),
  nullfixed_reml = list("Reaction ~ 1 + (1 | Subject)", TRUE),
  uncorrelated_reml = list("Reaction ~ Days + (Days || Subject)", TRUE))
for (m in names(sleep_models)) {
  spec <- sleep_models[[m]]
  record("sleepstudy", m, "Reaction", fit_one(as.formula(spec[[1]]), ss, spec[[2]]))
}
models_tab <- data.frame(dataset = "sleepstudy", model = names(sleep_models),
                         formula = sapply(sleep_models, `[[`, 1), reml = sapply(sleep_models, `[[`, 2))

# ---- RNA-seq sets on DESeq2's VST scale, a gene subset
rnaseq <- list(
  bottomly = list(batch = "experiment.number", models = list(
    batch_reml = list("~ strain + (1 | experiment.number)", TRUE),
    batch_ml = list("~ strain + (1 | experiment.number)", FALSE),
    two_reml = list("~ strain + (1 | experiment.number) + (1 | lane.number)", TRUE))),
  gse147507 = list(batch = "Batch", models = list(
    batch_reml = list("~ Infection + (1 | Batch)", TRUE),
    batch_ml = list("~ Infection + (1 | Batch)", FALSE),
    two_reml = list("~ Infection + (1 | Celltype) + (1 | Batch)", TRUE))))
set.seed(20240501)
for (ds in names(rnaseq)) {
  counts <- as.matrix(read.delim(file.path(shared, ds, "counts.tsv"), row.names = 1, check.names = FALSE))
  samples <- read.delim(file.path(shared, ds, "samples.tsv"), check.names = FALSE,
                        colClasses = "character")
  rownames(samples) <- samples$sample_id
  counts <- counts[, samples$sample_id]
  dds <- DESeqDataSetFromMatrix(counts, colData = data.frame(row.names = colnames(counts), x = rep(1, ncol(counts))), design = ~ 1)
  vsd <- assay(vst(dds, blind = TRUE))
  mean_norm <- rowMeans(counts(estimateSizeFactors(dds), normalized = TRUE))
  top <- names(sort(mean_norm, decreasing = TRUE))[1:200]
  rest <- setdiff(names(mean_norm)[mean_norm > 0], top)
  genes <- c(top, sample(rest, 100))
  y <- vsd[genes, , drop = FALSE]
  vst_out <- data.frame(gene_id = genes, signif(y, 17), check.names = FALSE)
  con <- gzfile(file.path(out, paste0(ds, "_vst.tsv.gz")), "w")
  write.table(vst_out, con, sep = "\t", quote = FALSE, row.names = FALSE)
  close(con)
  copy_rw(file.path(shared, ds, "samples.tsv"), file.path(out, paste0(ds, "_samples.tsv")))
  copy_rw(file.path(shared, ds, "SOURCE.md"), file.path(out, paste0(ds, "_SOURCE.md")))
  for (m in names(rnaseq[[ds]]$models)) {
    spec <- rnaseq[[ds]]$models[[m]]
    f <- as.formula(paste("expr", spec[[1]]))
    for (g in genes) {
      d <- samples; d$expr <- y[g, rownames(samples)]
      record(ds, m, g, fit_one(f, d, spec[[2]]))
    }
    models_tab <- rbind(models_tab, data.frame(dataset = ds, model = m, formula = spec[[1]], reml = spec[[2]]))
  }
}
copy_rw(file.path(shared, "sleepstudy", "SOURCE.md"), file.path(out, "sleepstudy_SOURCE.md"))
write.table(models_tab, file.path(out, "models.tsv"), sep = "\t", quote = FALSE, row.names = FALSE)
fits_df <- do.call(rbind, fits)
con <- gzfile(file.path(out, "fits.tsv.gz"), "w")
write.table(fits_df, con, sep = "\t", quote = FALSE, row.names = FALSE)
close(con)
blups_df <- do.call(rbind, blups)
con <- gzfile(file.path(out, "blups.tsv.gz"), "w")
write.table(blups_df, con, sep = "\t", quote = FALSE, row.names = FALSE)
close(con)
versions <- data.frame(package = c("R", "lme4", "lmerTest", "DESeq2", "Matrix"),
                       version = c(R.version.string, sapply(c("lme4", "lmerTest", "DESeq2", "Matrix"),
                                                            function(p) as.character(packageVersion(p)))))
write.table(versions, file.path(out, "versions.tsv"), sep = "\t", quote = FALSE, row.names = FALSE)
