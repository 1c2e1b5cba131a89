# Reference values for batchmix.vst, computed with DESeq2 (see README.md).
#
# Run from the repository root:
#   Rscript tests/data/deseq2/generate.R
#
# Inputs (all inside the repository):
#   tests/data/deseq2/pasilla_counts.tsv.gz, tests/data/deseq2/pasilla_samples.tsv
#   resources/example/counts.tsv.gz, resources/example/samples.tsv   (gse147507)
# Every computation below uses the FULL gene set, so the dispersion trends are
# the real ones; only the stored VST matrices are restricted to a deterministic
# subset of genes (every STRIDE-th row of the count table: 50 for pasilla,
# 100 for gse147507) to keep fixtures small.

suppressPackageStartupMessages(library(DESeq2))

out_dir <- "tests/data/deseq2"
STRIDE <- c(pasilla = 50L, gse147507 = 100L)

read_counts <- function(path) {
  tab <- read.delim(gzfile(path), check.names = FALSE, stringsAsFactors = FALSE)
  m <- as.matrix(tab[, -1])
  rownames(m) <- tab[[1]]
  storage.mode(m) <- "integer"
  m
}

fmt <- function(x) trimws(formatC(x, digits = 10, format = "g"))

write_matrix_gz <- function(m, path) {
  df <- data.frame(gene_id = rownames(m), apply(m, 2, fmt), check.names = FALSE)
  con <- gzfile(file.path(out_dir, path), "w")
  write.table(df, con, sep = "\t", quote = FALSE, row.names = FALSE)
  close(con)
}

write_tsv <- function(df, path) {
  write.table(df, file.path(out_dir, path), sep = "\t", quote = FALSE, row.names = FALSE)
}

subset_rows <- function(n, name) seq(1L, n, by = STRIDE[[name]])

trend_row <- function(dataset, run, obj_or_fun, fit_type_requested, blind, nsub) {
  f <- if (is.function(obj_or_fun)) obj_or_fun else dispersionFunction(obj_or_fun)
  co <- attr(f, "coefficients")
  data.frame(
    dataset = dataset, run = run, fit_type_requested = fit_type_requested,
    fit_type = attr(f, "fitType"), blind = blind, nsub = nsub,
    a0 = if (is.null(co)) NA else fmt(co[["asymptDisp"]]),
    a1 = if (is.null(co)) NA else fmt(co[["extraPois"]]),
    mean_disp = if (is.null(attr(f, "mean"))) NA else fmt(attr(f, "mean"))
  )
}

# Exactly the steps of DESeq2::vst(), returning the dispersion function and the
# chosen subset so that the subset rule can be checked gene by gene.
vst_fast_steps <- function(dds, nsub, fitType) {
  baseMean <- rowMeans(counts(dds, normalized = TRUE))
  sub <- dds[baseMean > 5, ]
  bm <- baseMean[baseMean > 5]
  o <- order(bm)
  idx <- o[round(seq(from = 1, to = length(o), length = nsub))]
  sub <- sub[idx, ]
  sub <- estimateDispersionsGeneEst(sub, quiet = TRUE)
  sub <- estimateDispersionsFit(sub, fitType = fitType, quiet = TRUE)
  list(genes = rownames(sub), fun = dispersionFunction(sub))
}

run_dataset <- function(name, counts, coldata, design_formula) {
  trends <- list()
  rows <- subset_rows(nrow(counts), name)
  keep_genes <- rownames(counts)[rows]
  writeLines(keep_genes, file.path(out_dir, sprintf("%s_subset_genes.txt", name)))

  dds <- DESeqDataSetFromMatrix(counts, coldata, design = ~1)
  dds <- estimateSizeFactors(dds)
  pos <- estimateSizeFactors(DESeqDataSetFromMatrix(counts, coldata, design = ~1), type = "poscounts")
  write_tsv(data.frame(sample_id = colnames(counts),
                       size_factor_ratio = fmt(sizeFactors(dds)),
                       size_factor_poscounts = fmt(sizeFactors(pos))),
            sprintf("%s_size_factors.tsv", name))

  # varianceStabilizingTransformation, blind, parametric: also keep the
  # gene-wise dispersions so the estimator itself can be checked.
  dd1 <- estimateDispersionsGeneEst(dds, quiet = TRUE)
  dd1 <- estimateDispersionsFit(dd1, fitType = "parametric", quiet = TRUE)
  mc <- mcols(dd1)
  write_tsv(data.frame(gene_id = rownames(dd1), base_mean = fmt(mc$baseMean),
                       disp_gene_est = fmt(mc$dispGeneEst), disp_gene_iter = mc$dispGeneIter,
                       disp_fit = fmt(dispersionFunction(dd1)(mc$baseMean)))[rows, ],
            sprintf("%s_dispersions_blind.tsv", name))
  v <- assay(varianceStabilizingTransformation(dds, blind = TRUE, fitType = "parametric"))
  write_matrix_gz(v[rows, ], sprintf("%s_vst_full_parametric.tsv.gz", name))
  trends[[length(trends) + 1]] <- trend_row(name, "full_parametric", dd1, "parametric", TRUE, NA)

  for (ft in c("local", "mean")) {
    d <- estimateDispersionsFit(dd1, fitType = ft, quiet = TRUE)
    v <- assay(varianceStabilizingTransformation(dds, blind = TRUE, fitType = ft))
    write_matrix_gz(v[rows, ], sprintf("%s_vst_full_%s.tsv.gz", name, ft))
    trends[[length(trends) + 1]] <- trend_row(name, paste0("full_", ft), d, ft, TRUE, NA)
    if (ft == "local") {
      grid <- exp(seq(log(0.5), log(max(counts(dds, normalized = TRUE))), length.out = 200))
      write_tsv(data.frame(mean = fmt(grid), disp_fit = fmt(dispersionFunction(d)(grid))),
                sprintf("%s_local_trend_grid.tsv", name))
    }
  }

  # vst(): the nsub = 1000 subset path, parametric and local.
  for (ft in c("parametric", "local")) {
    steps <- vst_fast_steps(dds, 1000, ft)
    v <- vst(dds, blind = TRUE, nsub = 1000, fitType = ft)
    write_matrix_gz(assay(v)[rows, ], sprintf("%s_vst_fast_%s.tsv.gz", name, ft))
    trends[[length(trends) + 1]] <- trend_row(name, paste0("fast_", ft), steps$fun, ft, TRUE, 1000)
    if (ft == "parametric") {
      writeLines(steps$genes, file.path(out_dir, sprintf("%s_vst_fast_subset_genes.txt", name)))
    }
  }

  # blind = FALSE with the experimental design (fixed part of the model).
  ddd <- DESeqDataSetFromMatrix(counts, coldata, design = design_formula)
  ddd <- estimateSizeFactors(ddd)
  mm <- model.matrix(design_formula, data = as.data.frame(colData(ddd)))
  write_tsv(data.frame(sample_id = colnames(counts), mm, check.names = FALSE),
            sprintf("%s_design_matrix.tsv", name))
  ddd <- estimateDispersionsGeneEst(ddd, quiet = TRUE)
  ddd <- estimateDispersionsFit(ddd, fitType = "parametric", quiet = TRUE)
  mc <- mcols(ddd)
  write_tsv(data.frame(gene_id = rownames(ddd), base_mean = fmt(mc$baseMean),
                       disp_gene_est = fmt(mc$dispGeneEst), disp_gene_iter = mc$dispGeneIter)[rows, ],
            sprintf("%s_dispersions_design.tsv", name))
  v <- assay(varianceStabilizingTransformation(ddd, blind = FALSE, fitType = "parametric"))
  write_matrix_gz(v[rows, ], sprintf("%s_vst_full_parametric_design.tsv.gz", name))
  trends[[length(trends) + 1]] <- trend_row(name, "full_parametric_design", ddd, "parametric", FALSE, NA)
  v <- vst(DESeqDataSetFromMatrix(counts, coldata, design = design_formula), blind = FALSE, nsub = 1000)
  write_matrix_gz(assay(v)[rows, ], sprintf("%s_vst_fast_parametric_design.tsv.gz", name))
  steps <- vst_fast_steps(ddd, 1000, "parametric")
  trends[[length(trends) + 1]] <- trend_row(name, "fast_parametric_design", steps$fun,
                                            "parametric", FALSE, 1000)

  # poscounts on the genes that contain at least one zero ("ratio" must fail there).
  withzero <- counts[rowSums(counts == 0) > 0 & rowSums(counts) > 0, ]
  sfz <- estimateSizeFactors(DESeqDataSetFromMatrix(withzero, coldata, design = ~1), type = "poscounts")
  write_tsv(data.frame(sample_id = colnames(counts), size_factor_poscounts = fmt(sizeFactors(sfz))),
            sprintf("%s_size_factors_poscounts_zero_genes.tsv", name))
  do.call(rbind, trends)
}

pasilla_counts <- read_counts(file.path(out_dir, "pasilla_counts.tsv.gz"))
pasilla_samples <- read.delim(file.path(out_dir, "pasilla_samples.tsv"), check.names = FALSE,
                              stringsAsFactors = TRUE)
rownames(pasilla_samples) <- pasilla_samples$sample_id
stopifnot(identical(rownames(pasilla_samples), colnames(pasilla_counts)))

gse_counts <- read_counts("resources/example/counts.tsv.gz")
gse_samples <- read.delim("resources/example/samples.tsv", check.names = FALSE, stringsAsFactors = TRUE)
rownames(gse_samples) <- gse_samples$sample_id
stopifnot(identical(rownames(gse_samples), colnames(gse_counts)))

trends <- rbind(
  run_dataset("pasilla", pasilla_counts, pasilla_samples, ~ type + condition),
  run_dataset("gse147507", gse_counts, gse_samples, ~ Batch)
)
write_tsv(trends, "trends.tsv")

# Gene-wise dispersions of a few genes of the benchmark matrix (benchmarks/bench_vst.py,
# make_counts(5000, 100): real gse147507 counts, binomially thinned), with the size
# factors of the full matrix.  Three of them leave DESeq2's line search through
# log(alpha) < log(minDisp / 10) in the first step and end on the grid search.
thin <- read_counts(file.path(out_dir, "thinned_counts.tsv.gz"))
thin_sf <- read.delim(file.path(out_dir, "thinned_size_factors.tsv"))
stopifnot(identical(thin_sf$sample_id, colnames(thin)))
dth <- DESeqDataSetFromMatrix(thin, data.frame(row.names = colnames(thin)), ~1)
sizeFactors(dth) <- thin_sf$size_factor
dth <- estimateDispersionsGeneEst(dth, quiet = TRUE)
write_tsv(data.frame(gene_id = rownames(dth), disp_gene_est = fmt(mcols(dth)$dispGeneEst),
                     disp_gene_iter = mcols(dth)$dispGeneIter),
          "thinned_dispersions.tsv")

writeLines(capture.output(sessionInfo()), file.path(out_dir, "sessionInfo.txt"))
