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
    assert cell_identity(compose(["method=lora", "meta.run.results_dir=/elsewhere"])) == base


def test_everything_under_meta_stays_out_of_the_identity_and_a_result_written_before_meta_keeps_its_id():
    """The run id hashes the config less `meta`; a config a result wrote before `meta` existed (its keys at the
    root) hashes to the same id and reads as this code composes (harness.identity.with_meta)."""
    from golden_run_ids import cell_identity
    from omegaconf import OmegaConf

    from harness.config import compose, resolved
    from harness.identity import MOVED_UNDER_META, with_meta

    cfg = compose(["method=lora", "model=tiny-llama"])
    base = cell_identity(cfg)
    assert cell_identity(compose(["method=lora", "model=tiny-llama", "+meta.anything_new=1", "meta.seeds=[1,2]",
                                  "launcher=slurm", "gpu=h200", "meta.gpus=8"])) == base
    written_before = resolved(cfg)
    written_before.update(written_before.pop("meta"))
    born_under_meta = {"vllm"}  # keys added after meta existed: no result holds them at the root
    assert set(MOVED_UNDER_META) | born_under_meta >= set(resolved(cfg)["meta"]) and "run" in written_before
    for key in born_under_meta:
        written_before.pop(key)
    assert cell_identity(OmegaConf.create(written_before)) == base
    moved = OmegaConf.create(with_meta(written_before))
    assert moved.meta.run.results_dir == cfg.meta.run.results_dir and "run" not in moved
    assert with_meta(resolved(cfg)) == resolved(cfg)
