"""Run identity holds still: every experiment's cells, mini and paper, hash as tests/golden_run_ids.json records
(written by tools/golden_run_ids.py). A refactoring must leave them all; a change that alters what a run computes
bumps a behaviour version, rewrites the file and says so."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from golden_run_ids import GOLDEN, grid_identities  # noqa: E402  (tools/golden_run_ids.py)

RECORDED = json.loads(GOLDEN.read_text())
MINI = sorted(key for key in RECORDED if key.endswith("/mini"))
PAPER = sorted(key for key in RECORDED if key.endswith("/paper"))


def test_every_experiment_has_its_golden_ids():
    from harness.config import CONFIG_DIR

    experiments = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
    assert sorted({key.split("/")[0] for key in RECORDED}) == experiments


@pytest.mark.parametrize("grid", MINI)
def test_the_mini_cells_keep_their_ids(grid):
    assert grid_identities(*grid.split("/")) == RECORDED[grid]


@pytest.mark.slow
@pytest.mark.parametrize("grid", PAPER)
def test_the_paper_cells_keep_their_ids(grid):
    assert grid_identities(*grid.split("/")) == RECORDED[grid]


def test_a_semantic_change_moves_the_identity():
    from golden_run_ids import cell_identity

    from harness.config import compose

    base = cell_identity(compose(["method=lora"]))
    assert cell_identity(compose(["method=lora", "method.r=8"])) != base
    assert cell_identity(compose(["method=lora", "run.results_dir=/elsewhere"])) == base
