# brms 2.18 default-prior posteriors on batchmix's own data (not sleepstudy): crossed factors and
# random slopes on an unbalanced design. Run from this folder:  Rscript make_brms_other.R
# (Debian packages r-cran-brms r-cran-rstan; a few minutes, mostly the two Stan compilations.)
# Writes other_crossed.tsv, other_slopes_unbalanced.tsv (the data), brms_posterior_other.tsv,
# brms_priors_other.tsv and timings_other.tsv.
suppressMessages({library(brms); library(posterior)})
# Debian's r-cran-bh is a virtual package without include/; the Boost headers come from libboost-dev
if (!nzchar(system.file("include", package = "BH"))) rstan::rstan_options(boost_lib = "/usr/include")
SEED <- 20261124
set.seed(SEED)
# 1. crossed: 8 levels of a x 6 levels of b, one sample per cell and a covariate
cr <- expand.grid(a = paste0("A", 1:8), b = paste0("B", 1:6), stringsAsFactors = FALSE)
cr$x <- round(rnorm(nrow(cr)), 4)
ea <- rnorm(8, 0, 1.5); eb <- rnorm(6, 0, 0.8)
cr$y <- round(5 + 0.5 * cr$x + ea[as.integer(sub("A", "", cr$a))] + eb[as.integer(sub("B", "", cr$b))] +
              rnorm(nrow(cr)), 4)
# 2. random slopes, unbalanced: 12 groups with 4 to 12 observations each
ng <- sample(4:12, 12, replace = TRUE)
sl <- data.frame(g = rep(sprintf("G%02d", 1:12), ng), stringsAsFactors = FALSE)
sl$x <- round(runif(nrow(sl), 0, 5), 3)
b0 <- rnorm(12, 0, 2); b1 <- 0.4 * b0 / 2 * 0.6 + rnorm(12, 0, 0.6)
gi <- as.integer(sub("G", "", sl$g))
sl$y <- round(20 + 1.5 * sl$x + b0[gi] + b1[gi] * sl$x + rnorm(nrow(sl), 0, 1.5), 4)
write.table(cr, "other_crossed.tsv", sep = "\t", quote = FALSE, row.names = FALSE)
write.table(sl, "other_slopes_unbalanced.tsv", sep = "\t", quote = FALSE, row.names = FALSE)

qp <- c(0.025, 0.5, 0.975)
summ <- function(x) {
  v <- as.vector(x); q <- quantile(v, qp, type = 7, names = FALSE)
  data.frame(mean = mean(v), sd = sd(v), q2.5 = q[1], q50 = q[2], q97.5 = q[3],
             mcse_mean = mcse_mean(x), mcse_q2.5 = mcse_quantile(x, 0.025), mcse_q50 = mcse_quantile(x, 0.5),
             mcse_q97.5 = mcse_quantile(x, 0.975), rhat = rhat(x), ess_bulk = ess_bulk(x), ess_tail = ess_tail(x))
}
specs <- list(
  list(label = "crossed_default", f = y ~ x + (1 | a) + (1 | b), data = cr),
  list(label = "slopes_unbalanced_default", f = y ~ x + (x | g), data = sl))
post <- list(); pri <- list(); tim <- list()
for (s in specs) {
  tc <- system.time(f0 <- brm(s$f, data = s$data, family = gaussian(), chains = 0, refresh = 0, silent = 2))["elapsed"]
  ps <- as.data.frame(prior_summary(f0))
  pri[[length(pri) + 1]] <- data.frame(model = s$label, ps[, c("prior", "class", "coef", "group", "lb", "ub", "source")])
  ts <- system.time(f <- update(f0, recompile = FALSE, chains = 4, iter = 4000, warmup = 1000, seed = SEED,
                                cores = 2, refresh = 0, silent = 2, control = list(adapt_delta = 0.95)))["elapsed"]
  tim[[length(tim) + 1]] <- data.frame(model = s$label, compile_seconds = tc, sample_seconds = ts,
                                       n_divergent = rstan::get_num_divergent(f$fit))
  d <- as_draws_df(f)
  vars <- grep("^(b_|sd_|cor_|sigma$)", variables(d), value = TRUE)
  for (v in vars) post[[length(post) + 1]] <- data.frame(model = s$label, seed = SEED, draws = 12000L, param = v,
                                                        summ(extract_variable_matrix(d, v)))
  cat(s$label, "done\n")
}
wt <- function(x, f) write.table(x, f, sep = "\t", quote = FALSE, row.names = FALSE)
wt(do.call(rbind, post), "brms_posterior_other.tsv")
wt(do.call(rbind, pri), "brms_priors_other.tsv")
wt(do.call(rbind, tim), "timings_other.tsv")
