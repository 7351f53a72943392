"""`harness.submit` on a real Slurm (Debian's slurm-wlm, one node on localhost, started by tools/local_slurm.sh):
a tiny experiment as a job array gives the serial run's results and table; a job killed mid-cell and
submitted again completes the grid with every cell run once. Skipped where Slurm cannot be started."""

import json
import os
import subprocess
import time

import pytest

from harness.config import PROJECT_ROOT
from harness.results import load_df
from harness.status import cell_states
from harness.submit import submit
from grids import TINY_TABLE1  # tests/grids.py

pytestmark = pytest.mark.slow

TINY = TINY_TABLE1 + ["launcher=slurm", "meta.launcher.partition=debug", "meta.launcher.gpus_per_node=0",
                      "meta.launcher.cpus_per_task=1", "meta.launcher.mem_gb=null", "meta.launcher.timeout_min=15"]


@pytest.fixture(scope="module")
def slurm():
    proc = subprocess.run([str(PROJECT_ROOT / "tools" / "local_slurm.sh"), "start"], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"no local Slurm: {proc.stderr.strip() or proc.stdout.strip()}")
    conf = proc.stdout.strip().splitlines()[-1].split("=", 1)[1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def scores(results) -> dict:
    return {(row.run_id, row.dataset): row.accuracy for row in load_df(results).itertuples()}


def test_a_slurm_array_gives_the_serial_runs_results(slurm, serial_tiny_table1, tmp_path, capsys):
    out = submit(TINY + [f"meta.run.results_dir={tmp_path / 'slurm'}"], wait=True)
    assert len(out["jobs"]) == 5 and all(job.split("_")[0] == out["jobs"][0].split("_")[0] for job in out["jobs"])
    assert scores(tmp_path / "slurm") == scores(serial_tiny_table1) and len(scores(serial_tiny_table1)) == 25
    results = [json.loads(p.read_text()) for p in (tmp_path / "slurm" / "runs").glob("*.json")]
    tasks = sorted(r["run"]["environment"]["scheduler"]["array_task_id"] for r in results)
    assert tasks == ["0", "1", "2", "3", "4"] and all(r["run"]["environment"]["scheduler"]["kind"] == "slurm" for r in results)
    assert "| model" in capsys.readouterr().out


def test_a_killed_job_submitted_again_completes_the_grid_once(slurm, tmp_path, monkeypatch):
    # (five cells in one array task: one process start instead of five; the killed task leaves its lock behind all
    # the same)
    overrides = TINY + [f"meta.run.results_dir={tmp_path}", "meta.launcher.cells_per_task=5"]
    monkeypatch.setenv("HARNESS_PAUSE_AT", "train")  # every cell stops in training (sbatch exports the environment)
    first = submit(overrides)
    array = first["jobs"][0].split("_")[0]
    deadline = time.time() + 120
    while time.time() < deadline and not any(s["state"] == "running" for s in cell_states(overrides)[1]):
        time.sleep(1)
    assert any(s["state"] == "running" for s in cell_states(overrides)[1])
    subprocess.run(["scancel", "--signal=KILL", array], check=True)  # killed mid-cell: no requeue, locks left
    deadline = time.time() + 60
    while time.time() < deadline and subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True).stdout.strip():
        time.sleep(1)
    assert not any((tmp_path / "runs").glob("*.json"))  # nothing finished
    monkeypatch.delenv("HARNESS_PAUSE_AT")
    again = submit(overrides, wait=True)
    assert len(again["submitted"]) == 5  # the killed cell's lock is stale: every cell runs again
    states = cell_states(overrides)[1]
    assert [s["state"] for s in states] == ["finished"] * 5
    assert len(list((tmp_path / "runs").glob("*.json"))) == 5


def test_a_preempted_task_is_requeued_and_finishes_its_cells(slurm, tmp_path, monkeypatch):
    """Slurm's warning signal before preemption or the time limit (USR2, as submitit asks for): submitit
    requeues the task, which runs its cells again from the start and finishes them."""
    overrides = TINY + [f"meta.run.results_dir={tmp_path}", "meta.launcher.cells_per_task=5"]
    flag = tmp_path / "pause"
    flag.touch()
    monkeypatch.setenv("HARNESS_PAUSE_AT", "train")
    monkeypatch.setenv("HARNESS_PAUSE_FILE", str(flag))  # paused while it exists
    job = submit(overrides)["jobs"][0]
    deadline = time.time() + 120
    while time.time() < deadline and not any(s["state"] == "running" for s in cell_states(overrides)[1]):
        time.sleep(1)
    assert any(s["state"] == "running" for s in cell_states(overrides)[1])
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    deadline = time.time() + 60
    while time.time() < deadline and "1" not in subprocess.run(
            ["scontrol", "show", "job", job], capture_output=True, text=True).stdout.split("Restarts=")[-1][:1]:
        time.sleep(1)
    flag.unlink()  # the requeued task goes on
    # (Slurm holds a requeued job back for two minutes before it may start again: once it is pending again, let it
    # start now; an update sent while the old run is still completing is lost)
    deadline = time.time() + 150
    while time.time() < deadline:
        state = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        if "JobState=PENDING" in state:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        elif "JobState=COMPLETING" not in state:
            break  # running again (or done)
        time.sleep(0.5)
    deadline = time.time() + 300
    while time.time() < deadline and not all(s["state"] == "finished" for s in cell_states(overrides)[1]):
        time.sleep(2)

    results = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert len(results) == 5 and all(r["status"] == "finished" for r in results)
    assert {r["run"]["environment"]["scheduler"]["restarts"] for r in results} == {"1"}
