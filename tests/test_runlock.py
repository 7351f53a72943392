"""The per-run-id lock: real files, real processes (killed, racing), no mocks."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import runlock
from harness.runlock import LockBusy, RunLock, describe, lock_path, lock_state

ROOT = Path(__file__).resolve().parents[1]
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")

HOLD_THEN_SLEEP = """
import sys, time
from harness.runlock import RunLock
lock = RunLock(sys.argv[1], sys.argv[2], heartbeat_s=0.1)
assert lock.acquire()
print("held", flush=True)
time.sleep(60)
"""

RACER = """
import os, sys
from harness.runlock import RunLock
locks = [RunLock(sys.argv[1], run_id, stale_after_s=float(sys.argv[4])) for run_id in sys.argv[2].split(",")]
print("ready", flush=True)
os.read(int(sys.argv[3]), 1)  # returns at EOF, when the parent closes the pipe: every racer starts at once
print("".join(str(int(lock.acquire())) for lock in locks), flush=True)
sys.stdin.readline()  # hold until the parent has every answer, so that nobody acquires after a release
for lock in locks:
    lock.release()
"""


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch):
    """Runs as if outside Slurm (the suite itself may run in a Slurm job); children inherit this environment."""
    for name in SLURM_VARS:
        monkeypatch.delenv(name, raising=False)


def python(script, *args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env, text=True, **kwargs)


@pytest.fixture
def live_process():
    """A process of ours that stays alive for the test (a live pid that is not the test's)."""
    proc = python("import time; time.sleep(60)")
    yield proc
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = python("pass")
    proc.wait()
    return proc.pid


def write_lock(lock_dir: Path, run_id: str, age_s: float = 0.0, **owner) -> Path:
    """A lock file written by hand, as another process (or host) would have left it; `age_s`: its mtime's age."""
    path = lock_path(lock_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"run_id": run_id, "token": "foreign-token", "host": "other-node", "pid": 4242,
               "slurm_job_id": None, "slurm_array_task_id": None, "started": "2025-01-01T00:00:00+00:00", **owner}
    path.write_text(json.dumps(content))
    set_age(path, age_s)
    return path


def set_age(path: Path, age_s: float) -> None:
    t = time.time() - age_s
    os.utime(path, (t, t))


def real_owner(lock_dir: Path) -> dict:
    """The content a real RunLock of this process writes (host, boot, pid namespace, process start ...)."""
    lock = RunLock(lock_dir, "probe")
    assert lock.acquire()
    content = json.loads(lock.path.read_text())
    lock.release()
    return content


def heartbeat_threads(run_id: str):
    return [t for t in threading.enumerate() if t.name == f"runlock-heartbeat-{run_id}"]


def test_acquire_release_and_a_second_lock_in_the_same_process(tmp_path):
    first, second = RunLock(tmp_path, "cell-a"), RunLock(tmp_path, "cell-a")
    assert first.acquire() and first.held
    assert first.acquire()  # already ours
    path = lock_path(tmp_path, "cell-a")
    owner = json.loads(path.read_text())
    assert owner["host"] == socket.gethostname() and owner["pid"] == os.getpid() and owner["token"]
    assert owner["slurm_job_id"] is None and owner["slurm_array_task_id"] is None and owner["started"]

    assert second.acquire() is False and not second.held  # a live owner: this very process, another object
    holder = second.holder()
    assert holder["pid"] == os.getpid() and "token" not in holder
    assert "since" in describe(holder) and socket.gethostname() in describe(holder)
    second.release()  # not its lock: removes nothing
    assert path.is_file() and first.held

    assert RunLock(tmp_path, "cell-b").acquire()  # another id is another lock
    first.release()
    assert not path.exists() and not first.held and first.holder() is None
    assert lock_state(tmp_path, "cell-a") is None
    assert second.acquire()
    second.release()
    assert not heartbeat_threads("cell-a")


def test_context_manager(tmp_path):
    with RunLock(tmp_path, "cell") as lock:
        assert lock.held
        with pytest.raises(LockBusy) as busy:
            with RunLock(tmp_path, "cell"):
                pass
        assert busy.value.holder["pid"] == os.getpid()
        assert lock.path.is_file()  # the refused one removed nothing
    assert not lock.path.exists()


def test_a_lock_of_a_killed_process_on_this_host_is_taken_over(tmp_path):
    holder = python(HOLD_THEN_SLEEP, tmp_path, "cell", stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
    finally:
        holder.kill()  # SIGKILL: no finally, no release; the file stays with a fresh heartbeat
        holder.wait()
    path = lock_path(tmp_path, "cell")
    assert json.loads(path.read_text())["pid"] == holder.pid
    state = lock_state(tmp_path, "cell")
    assert state["stale"] and state["pid"] == holder.pid and state["heartbeat_age_s"] < 5
    assert "not running" in state["stale_reason"]

    lock = RunLock(tmp_path, "cell")
    assert lock.acquire()
    assert "not running" in lock.took_over
    assert lock.holder()["pid"] == os.getpid()
    lock.release()
    assert sorted(os.listdir(tmp_path)) == []  # no takeover mutex or removal leftovers


def test_a_live_process_here_is_never_stale_even_with_an_old_heartbeat(tmp_path):
    owner = RunLock(tmp_path, "cell")  # heartbeat every 30 s: the mtime set below stays old
    assert owner.acquire()
    set_age(owner.path, 10_000)  # stopped with Ctrl-Z, say: its pid still answers
    assert RunLock(tmp_path, "cell", stale_after_s=60).acquire() is False
    assert lock_state(tmp_path, "cell", stale_after_s=60)["stale"] is False
    owner.release()


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="process start times come from Linux /proc")
def test_a_reused_pid_is_a_dead_owner(tmp_path, live_process):
    owner = {**real_owner(tmp_path), "pid": live_process.pid, "process_start": "1", "token": "old"}
    path = lock_path(tmp_path, "cell")
    path.write_text(json.dumps(owner))  # written by a process that had this pid before, started at tick 1
    lock = RunLock(tmp_path, "cell")
    assert lock.acquire() and "another process" in lock.took_over
    lock.release()


def test_another_hosts_lock_is_stale_only_after_stale_after_s(tmp_path):
    path = write_lock(tmp_path, "cell", age_s=30)
    lock = RunLock(tmp_path, "cell", stale_after_s=60)
    assert lock.acquire() is False  # heartbeat 30 s old: alive
    assert lock.holder()["host"] == "other-node"
    state = lock_state(tmp_path, "cell", stale_after_s=60)
    assert state["stale"] is False and 29 < state["heartbeat_age_s"] < 40 and state["host"] == "other-node"
    assert json.loads(path.read_text())["token"] == "foreign-token"  # untouched

    set_age(path, 120)  # its heartbeat stopped two minutes ago: the node died
    assert lock_state(tmp_path, "cell", stale_after_s=60)["stale"] is True
    assert lock.acquire()
    assert "no heartbeat" in lock.took_over and lock.holder()["pid"] == os.getpid()
    lock.release()
    assert not path.exists()


def test_a_file_still_being_written_is_fresh_until_old(tmp_path):
    path = lock_path(tmp_path, "cell")
    path.write_text("")  # created with O_EXCL, content not written yet
    lock = RunLock(tmp_path, "cell")
    assert lock.acquire() is False
    assert lock.holder() == {"partial": True}
    assert lock_state(tmp_path, "cell")["stale"] is False
    path.write_text('{"tok')  # half written
    assert lock.acquire() is False
    set_age(path, 120)  # its creator died before writing it
    assert lock.acquire() and "unreadable" in lock.took_over
    lock.release()


def test_heartbeat_keeps_the_mtime_fresh_and_stops_on_release(tmp_path):
    lock = RunLock(tmp_path, "cell", heartbeat_s=0.2)
    assert lock.acquire()
    set_age(lock.path, 100)
    old = lock.path.stat().st_mtime
    time.sleep(0.6)
    assert lock.path.stat().st_mtime > old + 90
    assert lock_state(tmp_path, "cell")["heartbeat_age_s"] < 1
    assert heartbeat_threads("cell") and not lock.lost
    lock.release()
    assert not heartbeat_threads("cell")


@pytest.mark.parametrize("how", ["removed", "taken over"])
def test_heartbeat_records_a_lost_lock_and_release_leaves_the_new_one(tmp_path, how):
    lock = RunLock(tmp_path, "cell", heartbeat_s=0.1)
    assert lock.acquire()
    lock.path.unlink()
    if how == "taken over":
        write_lock(tmp_path, "cell")
    deadline = time.monotonic() + 3
    while not lock.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.lost and not lock.held
    time.sleep(0.15)
    assert not heartbeat_threads("cell")  # stopped; the process goes on
    lock.release()
    if how == "taken over":
        assert json.loads(lock.path.read_text())["token"] == "foreign-token"  # not ours: kept
    else:
        assert not lock.path.exists()


def test_slurm_requeue_takes_over_its_own_earlier_lock(tmp_path, monkeypatch, live_process):
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # set by Slurm on a requeued job
    mine = {"host": socket.gethostname(), "pid": live_process.pid, "slurm_job_id": "777",
            "slurm_array_task_id": "3"}

    # Another array task, and the same task's own run (equal restart count: two srun steps of one job): alive.
    for other in ({"slurm_array_task_id": "4", "slurm_restart_count": 0}, {"slurm_restart_count": 1}):
        write_lock(tmp_path, "cell", **{**mine, **other})
        assert RunLock(tmp_path, "cell").acquire() is False

    write_lock(tmp_path, "cell", **mine, slurm_restart_count=0)  # fresh heartbeat, live pid: its predecessor
    lock = RunLock(tmp_path, "cell")
    assert lock.acquire() and "requeue" in lock.took_over
    holder = lock.holder()
    assert holder["pid"] == os.getpid() and holder["slurm_job_id"] == "777"
    assert holder["slurm_array_task_id"] == "3" and holder["slurm_restart_count"] == 1
    lock.release()


def test_array_tasks_record_the_array_job_id(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "1001")  # each task's own job id
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "1000")  # shared by the array, kept by a requeued task
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    with RunLock(tmp_path, "cell") as lock:
        holder = lock.holder()
        assert (holder["slurm_job_id"], holder["slurm_array_task_id"]) == ("1000", "1")
        assert "Slurm job 1000 task 1" in describe(holder)


def test_a_stale_takeover_mutex_is_broken_and_a_fresh_one_waited_for(tmp_path):
    write_lock(tmp_path, "cell", age_s=1000)
    mutex = tmp_path / "cell.lock.takeover"
    mutex.write_text(json.dumps({"token": "someone", "host": "other-node", "pid": 1}))
    lock = RunLock(tmp_path, "cell", stale_after_s=60)
    lock.takeover_wait_s = 0.3
    assert lock.acquire() is False  # another process is taking over (for all we know): we do not
    assert mutex.exists()
    set_age(mutex, 120)  # ... and died inside it
    assert lock.acquire()
    assert not mutex.exists()
    lock.release()
    assert os.listdir(tmp_path) == []


def race(lock_dir: Path, run_ids: list[str], n: int, stale_after_s: float = 900) -> dict[str, int]:
    """n processes call acquire() at the same moment on each id in turn; how many acquired each id."""
    start_r, start_w = os.pipe()
    racers = [python(RACER, lock_dir, ",".join(run_ids), start_r, stale_after_s, pass_fds=(start_r,),
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(n)]
    os.close(start_r)
    try:
        for p in racers:
            assert p.stdout.readline().strip() == "ready"
        os.close(start_w)  # go
        start_w = None
        answers = [p.stdout.readline().strip() for p in racers]
    finally:
        if start_w is not None:
            os.close(start_w)
        for p in racers:
            p.stdin.close()
        for p in racers:
            if p.wait(timeout=20) != 0:
                raise AssertionError(f"racer exited with {p.returncode}")
    return {run_id: sum(int(a[i]) for a in answers) for i, run_id in enumerate(run_ids)}


# Many ids per race: the racers meet on each in turn, so one start of six processes makes many contended races.
IDS = [f"cell-{i}" for i in range(60)]


def test_racing_processes_on_fresh_ids_exactly_one_acquires_each(tmp_path):
    winners = race(tmp_path, IDS, 6)
    assert all(n == 1 for n in winners.values()), winners
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("stale", ["dead pid here", "no heartbeat from another host"])
def test_racing_processes_on_stale_locks_exactly_one_takes_each_over(tmp_path, stale):
    if stale == "dead pid here":
        owner = {**real_owner(tmp_path), "token": "dead", "pid": dead_pid()}
        owner.pop("run_id")
        for run_id in IDS:
            write_lock(tmp_path, run_id, **owner)
    else:
        for run_id in IDS:
            write_lock(tmp_path, run_id, age_s=1000)
    assert all(lock_state(tmp_path, run_id, stale_after_s=60)["stale"] for run_id in IDS)
    winners = race(tmp_path, IDS, 6, stale_after_s=60)
    assert all(n == 1 for n in winners.values()), winners
    assert os.listdir(tmp_path) == []  # the winners released; no mutex or removal leftovers


# The races above are real but depend on the scheduler to interleave; these two make the losing interleavings
# by hand (through the module's internals), so that the checks which decide them are tested every time.


def test_a_takeover_that_comes_second_removes_nothing(tmp_path):
    path = write_lock(tmp_path, "cell", age_s=1000)
    late = RunLock(tmp_path, "cell", stale_after_s=60)
    seen_stale = runlock._read(path)  # the late process judged this lock stale ...
    first = RunLock(tmp_path, "cell", stale_after_s=60)
    assert first.acquire()  # ... but another took it over before the late one got the takeover mutex
    content = {"run_id": "cell", "token": "late", "host": socket.gethostname(), "pid": os.getpid()}
    assert late._take_over(seen_stale, runlock._identity_now(), content) is False
    assert first.held and json.loads(path.read_text())["token"] != "late"
    assert not (tmp_path / "cell.lock.takeover").exists()
    first.release()


def test_removal_puts_back_a_file_that_is_not_the_one_judged(tmp_path):
    path = write_lock(tmp_path, "cell", age_s=1000)
    judged = runlock._read(path).identity
    path.unlink()
    write_lock(tmp_path, "cell", token="newer")  # replaced after it was judged
    assert runlock._remove_if(path, judged) is False
    assert json.loads(path.read_text())["token"] == "newer"
    assert runlock._remove_if(path, runlock._read(path).identity) is True
    assert os.listdir(tmp_path) == []
