# Reference values for batchmix.de: limma lmFit + eBayes on the fixed part of a model (see README.md).
#
# Run from the repository root:
#   Rscript tests/data/limma_de/generate.R [BOTTOMLY_DIR]
#
# With BOTTOMLY_DIR (a folder holding the bottomly counts.tsv and samples.tsv described in SOURCE.md)
# the input table bottomly_logcpm.tsv.gz is rebuilt from the raw counts first; without it the committed
# input is used. Every output is computed from the input as written (rounded to 6 decimals).

suppressPackageStartupMessages(library(limma))

out_dir <- "tests/data/limma_de"
args <- commandArgs(trailingOnly = TRUE)
fmt <- function(x) trimws(formatC(x, digits = 12, format = "g"))
write_tsv <- function(df, path) {
  con <- if (grepl("\\.gz$", path)) gzfile(file.path(out_dir, path), "w") else file(file.path(out_dir, path), "w")
  write.table(df, con, sep = "\t", quote = FALSE, row.names = FALSE, na = "NA")
  close(con)
}

if (length(args) >= 1) {
  counts <- read.delim(file.path(args[1], "counts.tsv"), check.names = FALSE)
  samples <- read.delim(file.path(args[1], "samples.tsv"), check.names = FALSE, stringsAsFactors = FALSE)
  y <- as.matrix(counts[, samples$sample_id])
  rownames(y) <- counts$gene_id
  lib <- colSums(y)
  # genes with a count of at least 10 in at least 3 samples, then every 3rd of them (about 3,000)
  keep <- which(rowSums(y >= 10) >= 3)
  keep <- keep[seq(1, length(keep), by = 3)]
  # log2 counts per million with voom's offsets
  logcpm <- log2(t((t(y[keep, ]) + 0.5) / (lib + 1)) * 1e6)
  logcpm <- round(logcpm, 6)
  # a few missing values (log input allows them): gene i (1-based) in 0, 97, 194, ... loses sample
  # (i %% 21) + 1, and every 291st gene a second one
  for (i in seq(97, nrow(logcpm), by = 97)) logcpm[i, (i %% 21) + 1] <- NA
  for (i in seq(291, nrow(logcpm), by = 291)) logcpm[i, ((i + 5) %% 21) + 1] <- NA
  con <- gzfile(file.path(out_dir, "bottomly_logcpm.tsv.gz"), "w")
  write.table(data.frame(gene_id = rownames(logcpm), format(logcpm, nsmall = 6, trim = TRUE), check.names = FALSE),
              con, sep = "\t", quote = FALSE, row.names = FALSE, na = "NA")
  close(con)
  write.table(samples, file.path(out_dir, "bottomly_samples.tsv"), sep = "\t", quote = FALSE, row.names = FALSE)
}

tab <- read.delim(gzfile(file.path(out_dir, "bottomly_logcpm.tsv.gz")), check.names = FALSE)
y <- as.matrix(tab[, -1])
rownames(y) <- tab$gene_id
samples <- read.delim(file.path(out_dir, "bottomly_samples.tsv"), check.names = FALSE, stringsAsFactors = FALSE)
stopifnot(identical(samples$sample_id, colnames(y)))
# the genes the mixed models "fitted": every gene but each 10th (1-based 10, 20, ...), which the tests
# mark as filtered; limma sees only the fitted genes, as batchmix.de's OLS does
fitted <- (seq_len(nrow(y)) %% 10) != 0
writeLines(rownames(y)[fitted], file.path(out_dir, "fitted_genes.txt"))
yf <- y[fitted, ]

case_table <- function(fit, eb, design) {
  out <- data.frame(gene_id = rownames(fit$coefficients), amean = fmt(fit$Amean), sigma = fmt(fit$sigma),
                    df_residual = fit$df.residual, s2_post = fmt(eb$s2.post),
                    df_prior = fmt(rep_len(eb$df.prior, nrow(fit))), df_total = fmt(eb$df.total))
  for (j in colnames(design)) {
    t_ord <- fit$coefficients[, j] / fit$stdev.unscaled[, j] / fit$sigma
    out[[paste0("coef_", j)]] <- fmt(fit$coefficients[, j])
    out[[paste0("t_ord_", j)]] <- fmt(t_ord)
    out[[paste0("p_ord_", j)]] <- fmt(2 * pt(-abs(t_ord), df = fit$df.residual))
    out[[paste0("t_", j)]] <- fmt(eb$t[, j])
    out[[paste0("p_", j)]] <- fmt(eb$p.value[, j])
    # topTable's adj.P.Val (BH over the fitted genes), in the genes' own order
    out[[paste0("q_", j)]] <- fmt(p.adjust(eb$p.value[, j], method = "BH"))
  }
  out
}
clean_names <- function(x) gsub("[^A-Za-z0-9_.]", "_", sub("^\\(Intercept\\)$", "Intercept", x))

# case strain: model "~ strain + (1|experiment.number)"; the OLS ignoring the batch is ~ strain
strain <- factor(samples$strain)                  # sorted levels: C57BL/6J is the reference
design <- model.matrix(~ strain)
colnames(design) <- clean_names(colnames(design))
fit <- lmFit(yf, design)
write_tsv(case_table(fit, eBayes(fit), design), "strain_plain.tsv.gz")
write_tsv(case_table(fit, eBayes(fit, trend = TRUE), design), "strain_trend.tsv.gz")
write_tsv(case_table(fit, eBayes(fit, robust = TRUE), design), "strain_robust.tsv.gz")

# case relevel: levels {strain: [DBA/2J, C57BL/6J]} and a numeric covariate (lane.number)
strain_d2 <- relevel(strain, ref = "DBA/2J")
lane.number <- samples$lane.number
design_rl <- model.matrix(~ strain_d2 + lane.number)
colnames(design_rl) <- clean_names(sub("^strain_d2", "strain", colnames(design_rl)))
fit_rl <- lmFit(yf, design_rl)
write_tsv(case_table(fit_rl, eBayes(fit_rl), design_rl), "relevel_plain.tsv.gz")

# the design with the batch as a categorical fixed effect (experiment.number coded 4, 6, 7)
design_batch <- model.matrix(~ strain + factor(experiment.number), data = samples)
colnames(design_batch) <- clean_names(sub("^factor\\(experiment.number\\)", "experiment.number",
                                          colnames(design_batch)))
write_tsv(data.frame(sample_id = samples$sample_id, design_batch, check.names = FALSE), "design_batch_fixed.tsv")

writeLines(capture.output(sessionInfo()), file.path(out_dir, "sessionInfo.txt"))
