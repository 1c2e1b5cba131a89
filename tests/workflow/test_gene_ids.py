"""Gene ids that look like missing values or numbers go through every stage verbatim (issue 14, section 3).

The fixture's counts with ten genes renamed: ``007``, ``1e5``, ``NA``, ``null``, ``gene with space``,
``NULL`` (fitted genes, six of them in the fixture's Simpson reversals) and ``None``, ``n/a``, ``#N/A``,
``<NA>`` (all-zero or low-count genes, filtered). The workflow runs with the uncertainty stage on,
and every per-gene output must hold those ids as written: nothing lost, nothing turned into NaN or
a number.
"""

from __future__ import annotations

import base64
import re

import pandas as pd
import pytest
import yaml
from batchmix.io import read_matrix, read_result_table
from conftest import make_run_dir, run_snakemake

# Old name in the fixture -> new name. The first six are fitted; SFN and NAGLU, SFN and IQGAP3 are
# reversal pairs of the fixture at FDR 0.05 (the random-effects test, the default); the last four are filtered.
RENAMED = {
    "CCL2": "NA",
    "SFN": "007",
    "KIF4A": "1e5",
    "NAGLU": "null",
    "IQGAP3": "gene with space",
    "FANCI": "NULL",
    "FAM138A": "None",
    "FAM138F": "n/a",
    "OR4F5": "#N/A",
    "RXRG": "<NA>",
}
FITTED = ["NA", "007", "1e5", "null", "gene with space", "NULL"]
FILTERED = ["None", "n/a", "#N/A", "<NA>"]
REVERSAL_PAIRS = [{"007", "null"}, {"007", "gene with space"}]


@pytest.fixture(scope="module")
def renamed_run(tmp_path_factory):
    run_dir = make_run_dir(tmp_path_factory.mktemp("gene_ids"))
    counts = (run_dir / "data/counts.tsv").read_text().splitlines(keepends=True)
    renamed = [counts[0]]
    for line in counts[1:]:
        gene, _, rest = line.partition("\t")
        renamed.append(f"{RENAMED.get(gene, gene)}\t{rest}")
    (run_dir / "data/counts.tsv").write_text("".join(renamed))
    config = yaml.safe_load((run_dir / "fixture.yaml").read_text())
    config["report"]["genes"] = ["NA"]
    config["uncertainty"] = {"bootstrap": 20, "bayes": True, "genes": FITTED, "figure_genes": ["NA"]}
    (run_dir / "fixture.yaml").write_text(yaml.safe_dump(config))
    # --keep-going: a stage that fails on these ids still lets the others run, and each test below
    # checks its own stage's files.
    proc = run_snakemake(run_dir, "--keep-going")
    input_ids = [line.partition("\t")[0] for line in renamed[1:]]
    assert all(new in input_ids for new in RENAMED.values())
    return run_dir, input_ids, proc


def _results(renamed_run, *files: str):
    """The run's results folder, after checking that ``files`` were written (else the run's errors)."""
    run_dir, _, proc = renamed_run
    missing = [f for f in files if not (run_dir / "results" / f).exists()]
    if missing:
        pytest.fail(f"not written: {missing}; the run's errors:\n{proc.stderr[-5000:]}")
    return run_dir / "results"


def _ids(table: pd.DataFrame, column: str = "gene_id") -> list[str]:
    return table[column].tolist()


def test_every_gene_table_lists_every_input_gene_verbatim(renamed_run):
    _, input_ids, _ = renamed_run
    results = _results(renamed_run, "vst/gene_status.tsv", "lmm/gene_fits.tsv", "corrected/expression.parquet")
    assert _ids(read_result_table(results / "vst/gene_status.tsv")) == input_ids
    assert _ids(read_result_table(results / "lmm/gene_fits.tsv")) == input_ids
    assert read_matrix(results / "vst/expression.parquet").index.tolist() == input_ids
    assert read_matrix(results / "corrected/expression.parquet").index.tolist() == input_ids


def test_renamed_genes_keep_their_status(renamed_run):
    results = _results(renamed_run, "lmm/gene_fits.tsv")
    status = read_result_table(results / "lmm/gene_fits.tsv").set_index("gene_id")["status"]
    assert status.loc[FITTED].isin(["ok", "singular"]).all(), status.loc[FITTED]
    assert (status.loc[FILTERED] == "filtered:low_counts").all(), status.loc[FILTERED]


def test_blups_and_fixed_vcov_hold_the_fitted_renamed_genes(renamed_run):
    results = _results(renamed_run, "lmm/blups.tsv", "lmm/fixed_vcov.tsv")
    blups = read_result_table(results / "lmm/blups.tsv")
    vcov = read_result_table(results / "lmm/fixed_vcov.tsv")
    for gene in FITTED:
        assert (blups["gene_id"] == gene).sum() == 4, gene  # one BLUP per batch
        assert (vcov["gene_id"] == gene).sum() == 3, gene  # Intercept and Infection: 2 x 2 upper triangle
    assert not set(FILTERED) & (set(blups["gene_id"]) | set(vcov["gene_id"]))
    assert blups["gene_id"].notna().all() and vcov["gene_id"].notna().all()


def test_simpson_tables_name_the_renamed_genes(renamed_run):
    results = _results(renamed_run, "simpson/excluded_genes.tsv", "simpson/reversals.tsv")
    excluded = read_result_table(results / "simpson/excluded_genes.tsv")
    assert set(FILTERED) <= set(excluded["gene_id"])
    reversals = read_result_table(results / "simpson/reversals.tsv")
    pairs = [{a, b} for a, b in zip(reversals["gene_a"], reversals["gene_b"])]
    for pair in REVERSAL_PAIRS:
        assert pair in pairs, pair


def test_uncertainty_tables_name_the_renamed_genes(renamed_run):
    results = _results(renamed_run, "uncertainty/bootstrap.tsv", "uncertainty/posterior.tsv")
    for name in ("bootstrap", "posterior"):
        table = read_result_table(results / f"uncertainty/{name}.tsv")
        done = table.loc[table["status"] == "ok", "gene_id"]
        assert set(FITTED) <= set(done), (name, sorted(set(FITTED) - set(done)))


def _report_gene_ids(page: str) -> set[str]:
    """The gene ids (columns gene_id, gene_a, gene_b) of every table the report offers as TSV."""
    ids = set()
    for payload in re.findall(r'href="data:text/tab-separated-values;base64,([^"]+)"', page):
        lines = base64.b64decode(payload).decode().splitlines()
        header = lines[0].split("\t")
        columns = [i for i, name in enumerate(header) if name in ("gene_id", "gene_a", "gene_b")]
        for line in lines[1:]:
            cells = line.split("\t")
            ids.update(cells[i] for i in columns)
    return ids


def test_the_report_shows_the_renamed_genes(renamed_run):
    results = _results(renamed_run, "report.html")
    ids = _report_gene_ids((results / "report.html").read_text())
    missing = [gene for gene in FITTED + FILTERED if gene not in ids]
    assert not missing, f"not in the report's gene tables: {missing}"
