"""`harness.submit` through submitit's local executor (real processes, no Slurm): the unfinished cells of a tiny
experiment as an array, run in parallel, the same results and table as a serial reproduction."""

import json

import pytest

from harness.results import load_df
from harness.submit import main, submit
from grids import TINY_TABLE1  # tests/grids.py

pytestmark = pytest.mark.slow

TINY = TINY_TABLE1


def scores(results) -> dict:
    frame = load_df(results)
    return {(row.run_id, row.dataset): row.accuracy for row in frame.itertuples()}


def test_local_array_runs_the_missing_cells_in_parallel_as_a_serial_run_does(serial_tiny_table1, tmp_path, capsys):
    serial, parallel = serial_tiny_table1, tmp_path / "parallel"
    capsys.readouterr()
    dry = submit(TINY + [f"meta.run.results_dir={parallel}", "launcher=local", "meta.launcher.cells_per_task=2"], dry_run=True)
    assert dry["jobs"] == [] and not (parallel / "runs").exists()
    out = submit(TINY + [f"meta.run.results_dir={parallel}", "launcher=local", "meta.launcher.cells_per_task=2"], wait=True)
    assert len(out["jobs"]) == 3 and len(out["submitted"]) == 5  # 5 cells, 2 per task
    assert "| model" in capsys.readouterr().out  # the table, once every cell finished
    assert scores(parallel) == scores(serial) and len(scores(serial)) == 5 * 5
    for path in (serial / "runs").glob("*.predictions.jsonl"):
        assert (parallel / "runs" / path.name).read_text() == path.read_text()
    results = [json.loads(p.read_text()) for p in (parallel / "runs").glob("*.json")]
    schedulers = {r["run"]["environment"]["scheduler"]["job_id"] for r in results}
    assert len(schedulers) == 3 and all(r["run"]["environment"]["scheduler"]["kind"] == "submitit-local" for r in results)
    # a second protocol setting scored from the trained runs as array tasks, without training
    scored = submit(TINY + [f"meta.run.results_dir={parallel}", "launcher=local"], wait=True, evaluate=["protocol.num_beams=2"])
    assert len(scored["submitted"]) == 5
    rescored = [json.loads(p.read_text()) for p in (parallel / "runs").glob("*.json")]
    rescored = [r for r in rescored if r.get("evaluated_from")]
    assert len(rescored) == 5 and all(r["run"]["config"]["protocol"]["num_beams"] == 2 for r in rescored)
    trained = {r["run"]["id"]: r for r in results}
    assert all(r["train"] == trained[r["evaluated_from"]["run_id"]]["train"] for r in rescored)
    # submitted again: nothing left to run
    again = submit(TINY + [f"meta.run.results_dir={parallel}", "launcher=local"])
    assert again["submitted"] == [] and again["jobs"] == []
    main(TINY + [f"meta.run.results_dir={parallel}", "--dry-run"])
    assert "0 of 5 cells to run" in capsys.readouterr().out


def test_a_task_runs_its_cells_on_two_processes(tmp_path):
    """`meta.launcher.processes_per_cell=2`: the array task's two processes run each cell together (DDP over gloo,
    ranks from submitit), one result per cell."""
    overrides = [o if o != "training.micro_batch_size=4" else "training.micro_batch_size=2" for o in TINY]
    out = submit(overrides + [f"meta.run.results_dir={tmp_path}", "launcher=local", "meta.launcher.processes_per_cell=2",
                              "meta.launcher.cells_per_task=5"], wait=True)
    assert len(out["jobs"]) == 1
    results = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert len(results) == 5 and all(r["train"]["processes"] == 2 and r["status"] == "finished" for r in results)
