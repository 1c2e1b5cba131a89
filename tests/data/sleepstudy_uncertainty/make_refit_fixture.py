"""Write the responses of refit_fixture (run from the repository root; then run make_refit_fixture.R).

Two sets of responses whose lme4 refits the tests compare with batchmix's bootstrap refits:
* ``sim``: 40 genes, 60 samples, ``y ~ x + (x | batch)`` with 7 batches (numpy seed 4);
* ``sleep``: 12 parametric-bootstrap replicates of sleepstudy's slopes model (batchmix's draws,
  seed 20261124) written out as full response vectors with the same sufficient statistics.
"""

import numpy as np
import pandas as pd
from batchmix import lmm
from batchmix import uncertainty as unc

out = "tests/data/sleepstudy_uncertainty/"
rng = np.random.default_rng(4)
n = 60
samples = pd.DataFrame({"batch": [f"b{i % 7}" for i in range(n)], "x": rng.normal(size=n)})
codes = pd.Categorical(samples.batch).codes
Y = (
    2
    + samples["x"].to_numpy()
    + rng.normal(size=(40, 7))[:, codes] * np.linspace(0, 2, 40)[:, None]
    + rng.normal(size=(40, n))
)
frame = samples.copy()
for i in range(40):
    frame[f"y{i}"] = np.round(Y[i], 10)
frame.to_csv(out + "refit_sim_data.tsv", sep="\t", index=False)

d = pd.read_csv(out + "sleepstudy.tsv", sep="\t")
prep = lmm.prepare("~ Days + (Days | Subject)", d)
f0 = lmm.fit_arrays(d["Reaction"].to_numpy()[None], prep)
comp = unc.CompressedDesign.of(prep.X, prep.Z)
m, rho = unc.simulate_compressed(["Reaction"], f0.theta, f0.beta, f0.sigma2, prep, comp, 2000, 20261124)
pick = [77, 207, 257, 263, 305, 324, 406, 507, 566, 623, 1140, 1495]
# a unit vector orthogonal to span[X Z] carries the residual sum of squares
extra = np.linalg.qr(np.column_stack([comp.U, np.random.default_rng(0).normal(size=(len(d), 1))]))[0][:, -1]
ys = m[pick] @ comp.U.T + np.sqrt(rho[pick])[:, None] * extra[None, :]
frame = d[["Subject", "Days"]].copy()
for j, i in enumerate(pick):
    frame[f"y{i}"] = np.round(ys[j], 10)
frame.to_csv(out + "refit_sleep_data.tsv", sep="\t", index=False)
