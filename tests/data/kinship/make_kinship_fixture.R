# lme4 references for batchmix's known-covariance term (1 | kinship): the lme4qtl approach.
# R 4.2.2, lme4 1.1-31 (Debian packages). Run from this folder:  Rscript make_kinship_fixture.R
# Writes kinship.tsv (samples x samples), samples.tsv, expression.tsv (genes x samples) and
# lme4_kinship.tsv (per gene and model: REML logLik, variances, h2).
#
# lme4 fits a random effect with known covariance K when the design of a per-sample factor is
# replaced by a factor of K: with Z0 the n x n indicator of `kinship` (one level per sample, levels
# in sample order) and K = L L', the random effect Z0 L b, b ~ N(0, s2k I), has covariance s2k K.
# lFormula() builds the model, its Zt block for `kinship` is replaced by t(L) %*% Zt0, then
# mkLmerDevfun() and optimizeLmer() fit it and mkMerMod() makes the merMod (as lme4qtl does).
suppressMessages({library(lme4); library(Matrix)})
set.seed(20261124)
n <- 80
ids <- sprintf("i%03d", seq_len(n))
fam <- rep(seq_len(n / 4), each = 4)
K <- outer(fam, fam, function(a, b) ifelse(a == b, 0.5, 0))
diag(K) <- 1
P <- matrix(rnorm(n * 2), n, 2)
K <- 0.8 * K + 0.2 * tcrossprod(P) / mean(rowSums(P^2))
K <- round(K, 6)  # written to 6 decimals: the fixture and the file are the same matrix
dimnames(K) <- list(ids, ids)
samples <- data.frame(sample_id = ids, cond = ifelse(seq_len(n) %% 2 == 0, "t", "c"),
                      batch = paste0("b", (seq_len(n) - 1) %% 5 + 1), stringsAsFactors = FALSE)
h2 <- c(0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.5, 0.3)
batch_sd <- c(0, 0, 0, 0, 0, 0, 0.6, 1.0)
Lc <- t(chol(K))
be <- matrix(rnorm(5 * length(h2)), 5)
Y <- sapply(seq_along(h2), function(g) {
  5 + 0.3 * (samples$cond == "t") + sqrt(h2[g]) * (Lc %*% rnorm(n))[, 1] +
    sqrt(1 - h2[g]) * rnorm(n) + batch_sd[g] * be[as.integer(sub("b", "", samples$batch)), g]
})
Y <- round(Y, 6)
genes <- sprintf("g%d", seq_along(h2))

# the factor of K used for Z (any L with L L' = K gives the same model)
e <- eigen(K, symmetric = TRUE)
keep <- e$values > 1e-10 * max(e$values)
Lk <- e$vectors[, keep] %*% diag(sqrt(e$values[keep]))

fit_kinship <- function(y, formula) {
  d <- samples
  d$y <- y
  d$kinship <- factor(ids, levels = ids)
  ctrl <- lmerControl(check.nobs.vs.nlev = "ignore", check.nobs.vs.nRE = "ignore", check.nlev.gtr.1 = "ignore")
  lf <- lFormula(formula, data = d, REML = TRUE, control = ctrl)
  which_k <- which(names(lf$reTrms$cnms) == "kinship")
  Ztlist <- lf$reTrms$Ztlist
  Zt0 <- Ztlist[[which_k]]  # levels (rows) in `ids` order
  Ztlist[[which_k]] <- Matrix(t(Lk) %*% as.matrix(Zt0), sparse = TRUE)
  lf$reTrms$Ztlist <- Ztlist
  lf$reTrms$Zt <- do.call(rbind, Ztlist)
  # the Lambda pattern for kinship stays the identity of size ncol(Lk) = n (rank n here)
  stopifnot(ncol(Lk) == n)
  devfun <- do.call(mkLmerDevfun, lf)
  opt <- optimizeLmer(devfun, control = list(xtol_abs = 1e-10, ftol_abs = 1e-12))
  m <- mkMerMod(environment(devfun), opt, lf$reTrms, fr = lf$fr)
  vc <- as.data.frame(VarCorr(m))
  vk <- vc$vcov[vc$grp == "kinship"]
  ve <- vc$vcov[vc$grp == "Residual"]
  vb <- if (any(vc$grp == "batch")) vc$vcov[vc$grp == "batch"] else 0
  c(logLik = as.numeric(logLik(m)), var_kinship = vk, var_residual = ve, var_batch = vb,
    h2 = vk / (vk + ve + vb))
}

rows <- list()
for (model in c("~ cond + (1 | kinship)", "~ cond + (1 | batch) + (1 | kinship)")) {
  for (g in seq_along(genes)) {
    r <- fit_kinship(Y[, g], as.formula(paste("y", model)))
    rows[[length(rows) + 1]] <- data.frame(model = model, gene_id = genes[g], planted_h2 = h2[g],
                                          t(r), check.names = FALSE)
  }
}
out <- do.call(rbind, rows)
write.table(data.frame(sample_id = ids, K, check.names = FALSE), "kinship.tsv", sep = "\t",
            quote = FALSE, row.names = FALSE)
write.table(samples, "samples.tsv", sep = "\t", quote = FALSE, row.names = FALSE)
write.table(data.frame(gene_id = genes, t(Y), check.names = FALSE) |> setNames(c("gene_id", ids)),
            "expression.tsv", sep = "\t", quote = FALSE, row.names = FALSE)
write.table(format(out, digits = 15), "lme4_kinship.tsv", sep = "\t", quote = FALSE, row.names = FALSE)
writeLines(c(paste("R", R.version.string), paste("lme4", packageVersion("lme4")),
             paste("Matrix", packageVersion("Matrix"))), "versions.txt")
