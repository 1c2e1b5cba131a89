# Reference values for batchmix.moderate, computed with limma (see README.md).
#
# Run from the repository root:
#   Rscript tests/data/limma/generate.R
#
# Input: tests/data/limma/gse5859subset_expression.tsv.gz (every 9th probe set of
# gse5859subset, RMA log2 values, 977 x 24) and gse5859subset_samples.tsv.

suppressPackageStartupMessages(library(limma))

out_dir <- "tests/data/limma"
fmt <- function(x) trimws(formatC(x, digits = 12, format = "g"))
write_tsv <- function(df, path) {
  con <- if (grepl("\\.gz$", path)) gzfile(file.path(out_dir, path), "w") else file(file.path(out_dir, path), "w")
  write.table(df, con, sep = "\t", quote = FALSE, row.names = FALSE)
  close(con)
}

tab <- read.delim(gzfile(file.path(out_dir, "gse5859subset_expression.tsv.gz")), check.names = FALSE)
y <- as.matrix(tab[, -1])
rownames(y) <- tab$gene_id
samples <- read.delim(file.path(out_dir, "gse5859subset_samples.tsv"), check.names = FALSE,
                      stringsAsFactors = FALSE)
stopifnot(identical(samples$sample_id, colnames(y)))

# group (the condition) adjusted for the processing month (the batch)
design <- model.matrix(~ factor(group) + factor(month), data = samples)
colnames(design) <- c("Intercept", "group1", "month2005_10")
write_tsv(data.frame(sample_id = samples$sample_id, design, check.names = FALSE), "design_matrix.tsv")

fit <- lmFit(y, design)
s2 <- fit$sigma^2
df <- fit$df.residual
amean <- fit$Amean

# ---- squeezeVar on these residual variances
sq_plain <- squeezeVar(s2, df)
sq_trend <- squeezeVar(s2, df, covariate = amean)
sq_robust <- squeezeVar(s2, df, robust = TRUE)
# unequal residual df (deterministic pattern 19, 20, 21, ...) on the same variances
df_vec <- df - (seq_along(s2) - 1L) %% 3L
sq_dfvec <- squeezeVar(s2, df_vec)
sq_dfvec_robust <- squeezeVar(s2, df_vec, robust = TRUE)

write_tsv(data.frame(
  case = c("plain", "trend", "robust", "df_vector", "df_vector_robust"),
  df_prior = fmt(c(sq_plain$df.prior, sq_trend$df.prior, NA, sq_dfvec$df.prior, NA)),
  var_prior = fmt(c(sq_plain$var.prior, NA, sq_robust$var.prior, sq_dfvec$var.prior,
                    sq_dfvec_robust$var.prior))
), "squeeze_summary.tsv")

write_tsv(data.frame(
  gene_id = rownames(y), var = fmt(s2), df = df, df_vector = df_vec, amean = fmt(amean),
  var_post_plain = fmt(sq_plain$var.post),
  var_prior_trend = fmt(sq_trend$var.prior), var_post_trend = fmt(sq_trend$var.post),
  df_prior_robust = fmt(sq_robust$df.prior), var_post_robust = fmt(sq_robust$var.post),
  var_post_df_vector = fmt(sq_dfvec$var.post),
  df_prior_df_vector_robust = fmt(sq_dfvec_robust$df.prior),
  var_post_df_vector_robust = fmt(sq_dfvec_robust$var.post)
), "squeeze_var.tsv.gz")

# ---- eBayes: moderated t and p for every coefficient
ebayes_table <- function(eb) {
  out <- data.frame(gene_id = rownames(y), s2_post = fmt(eb$s2.post),
                    s2_prior = fmt(rep_len(eb$s2.prior, nrow(y))),
                    df_prior = fmt(rep_len(eb$df.prior, nrow(y))),
                    df_total = fmt(eb$df.total))
  for (j in colnames(design)) {
    out[[paste0("coef_", j)]] <- fmt(eb$coefficients[, j])
    out[[paste0("t_", j)]] <- fmt(eb$t[, j])
    out[[paste0("p_", j)]] <- fmt(eb$p.value[, j])
  }
  out
}
write_tsv(ebayes_table(eBayes(fit)), "ebayes_plain.tsv.gz")
write_tsv(ebayes_table(eBayes(fit, trend = TRUE)), "ebayes_trend.tsv.gz")
write_tsv(ebayes_table(eBayes(fit, robust = TRUE)), "ebayes_robust.tsv.gz")

writeLines(capture.output(sessionInfo()), file.path(out_dir, "sessionInfo.txt"))
