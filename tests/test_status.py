"""`harness.status`: every cell of an experiment as finished, running (where), failed (the error) or missing,
read from real result files and run locks."""

import pytest

from harness.grid import experiment_cells
from harness.errors import DataError
from harness.results import runs_dir, write_result
from harness.run import failure_record, run_cell
from harness.runlock import RunLock
from harness.status import cell_states, format_states, main
from grids import TINY_TABLE1  # tests/grids.py

pytestmark = pytest.mark.slow

TINY = TINY_TABLE1


def test_status_shows_finished_running_failed_and_missing_cells(tmp_path, capsys):
    overrides = TINY + [f"meta.run.results_dir={tmp_path}"]
    _, cells = experiment_cells(overrides)
    assert len(cells) == 5
    assert run_cell(cells[0]).status == "finished"
    _, rows = cell_states(overrides)
    lock = RunLock(runs_dir(tmp_path), rows[1]["run_id"])
    assert lock.acquire()
    try:
        write_result(tmp_path / "runs" / f"{rows[2]['run_id']}.json",
                     failure_record(cells[2], rows[2]["run_id"], "data", DataError("train.json: not valid JSON")))
        base, rows = cell_states(overrides)
        assert [r["state"] for r in rows] == ["finished", "running", "failed", "missing", "missing"]
        assert "pid" in rows[1]["detail"] and "phase data: error: train.json: not valid JSON" in rows[2]["detail"]
        text = format_states(base, rows)
        assert "5 cells" in text and "2 missing" in text and rows[0]["run_id"] in text
        with pytest.raises(SystemExit) as exit_info:
            main(overrides)
        assert exit_info.value.code == 1 and "running" in capsys.readouterr().out
    finally:
        lock.release()
