"""Constants named once: defaults shared by the config schema, the API and the tests."""

# Seed of every random stream batchmix draws (bootstrap, permutation and calibration replicates),
# unless the config sets its own: the same input gives the same tables.
DEFAULT_SEED = 20261124
