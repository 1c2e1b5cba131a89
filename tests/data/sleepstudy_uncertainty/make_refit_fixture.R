# lme4 refits of the responses written by make_refit_fixture.py (run from this folder).
# Rscript make_refit_fixture.R   -> refit_lme4.tsv
suppressMessages(library(lme4))
rows <- list()
fit_all <- function(file, formula_rhs, set) {
  d <- read.delim(file)
  for (g in intersect(c("batch", "Subject"), names(d))) d[[g]] <- factor(d[[g]])
  for (v in grep("^y", names(d), value = TRUE)) {
    f <- suppressMessages(lmer(as.formula(paste(v, formula_rhs)), d, REML = TRUE))
    th <- getME(f, "theta")
    rows[[length(rows) + 1]] <<- data.frame(set = set, response = v, theta1 = th[1], theta2 = th[2], theta3 = th[3],
      b1 = fixef(f)[1], b2 = fixef(f)[2], sigma = sigma(f), REMLcrit = REMLcrit(f), singular = isSingular(f))
  }
}
fit_all("refit_sim_data.tsv", "~ x + (x | batch)", "sim")
fit_all("refit_sleep_data.tsv", "~ Days + (Days | Subject)", "sleep")
out <- do.call(rbind, rows)
write.table(format(out, digits = 15), "refit_lme4.tsv", sep = "\t", quote = FALSE, row.names = FALSE)
cat(R.version.string, "lme4", as.character(packageVersion("lme4")), "\n")
