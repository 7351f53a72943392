"""A per-run-id lock, so that two invocations of the same grid never run the same cell.

Two terminals on one machine, or the tasks of a Slurm array on a shared filesystem, may walk the same grid at the
same time; the result file only says that a cell *finished*, not that somebody is running it. Before a cell
runs, its runner takes `<lock_dir>/<run_id>.lock`:

    lock = RunLock(lock_dir, rid)
    if not lock.acquire():
        print(f"[harness] {rid}: skipped, {describe(lock.holder())}")
    else:
        try:
            ...  # the run
        finally:
            lock.release()

    with RunLock(lock_dir, rid):   # or: raises LockBusy (with .holder) when a live owner holds it
        ...

Why a lock *file* with a heartbeat rather than `fcntl.flock`: flock has the one property we would like (the
kernel drops it when the holder dies), but on the filesystems that clusters share between nodes, NFS and Lustre,
it is not reliably supported (a no-op, node-local only, or an error, depending on mount options and client
version), and it says nothing about *who* holds a lock, which a "skipped: running on host X pid Y since Z"
message needs. Nor can flock tell a requeued Slurm task that the lock it finds is its own previous incarnation's.
So the lock is a file created atomically (`O_CREAT | O_EXCL`, which NFSv3+ and Lustre honour) holding its owner
as JSON, and the owner's liveness is judged by the one who finds it:

* on the same machine (same host name, boot and pid namespace) by the owner's pid: a dead pid, or a pid now
  used by a process started at another time, is a dead owner; a live one is never stale, however old its
  heartbeat (a process stopped with Ctrl-Z resumes where it was);
* elsewhere by the heartbeat: while the lock is held, a daemon thread touches the file's mtime every
  `heartbeat_s` seconds, so a nine-hour run stays fresh; a lock whose mtime is older than `stale_after_s`
  belongs to a machine (or process) that stopped beating. Hosts' clocks are assumed to agree to well within
  `stale_after_s` (on NFS the touch sets the server's time);
* a Slurm task that finds a lock written by an earlier run of the same job and array task (same job id and
  array task id, a smaller `SLURM_RESTART_COUNT`) takes it over at once: it is its own requeued predecessor,
  killed by preemption or a node failure, whose heartbeat would otherwise keep it for `stale_after_s`. Two
  processes of the *same* run of a job (two `srun` steps, two shells in one `salloc`) have equal restart counts
  and so are judged by the rules above, never by this one.

Taking over a stale lock is serialized by a short-lived mutex, `<run_id>.lock.takeover` (`O_EXCL` again; one
older than `TAKEOVER_STALE_S` belongs to a process that died inside it and is removed). Inside it the lock is
read again and must still be the same stale one (same token, not refreshed) before it is removed and ours is
created, again with `O_EXCL`: of any number of processes that find the same stale lock, exactly one holds it
afterwards. Files are only ever removed by renaming them to a private name and checking what was moved (then
put back if it was not the expected one), so no process removes a lock that is not the one it judged.

A reader can find a lock file that was just created and not yet written: unreadable content counts as "being
written" and is judged by its mtime alone (stale after `min(stale_after_s, PARTIAL_STALE_S)`).

Standard library only. Not handled here: a process killed by SIGTERM without running its `finally`
(Slurm's preemption and time limit) leaves its lock behind; it is found stale by the rules above.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TAKEOVER_STALE_S = 60.0  # a takeover mutex older than this belongs to a process that died holding it
PARTIAL_STALE_S = 60.0  # a lock file still unreadable after this long was never finished by its creator
SUFFIX = ".lock"
TAKEOVER_SUFFIX = ".lock.takeover"
_MAX_READ = 1 << 16


class LockBusy(RuntimeError):
    """Raised by `with RunLock(...)` when a live owner holds the lock; `.holder` is that owner (or None)."""

    def __init__(self, run_id: str, holder: dict | None):
        self.run_id = run_id
        self.holder = holder
        super().__init__(f"{run_id}: {describe(holder)}")


# ----------------------------------------------------------------------------------------------------------------
# Who we are


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"; differs between containers on one host
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks after boot (Linux /proc), to tell a reused pid; None if unknown."""
    stat = _read_text(f"/proc/{pid}/stat")
    if not stat:
        return None
    # "pid (comm) state ppid ..." where comm may hold spaces and parentheses; starttime is field 22.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def _slurm_identity() -> dict:
    env = os.environ
    job = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")  # an array's tasks share the array's id
    try:
        restart = int(env.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restart = 0
    return {"slurm_job_id": job or None, "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID") or None,
            "slurm_restart_count": restart if job else None}


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _identity_now() -> dict:
    """This process as a lock's owner would record it (without the token)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, **_slurm_identity(), "started": _now_iso(),
            "boot_id": _read_text("/proc/sys/kernel/random/boot_id"), "pid_ns": _pid_namespace(),
            "process_start": _process_start(pid)}


# ----------------------------------------------------------------------------------------------------------------
# Reading and judging a lock file


@dataclass(frozen=True)
class _Seen:
    """One read of a lock (or mutex) file: its content (None: unreadable, being written) and its stat."""

    content: dict | None
    st: os.stat_result

    @property
    def token(self) -> str | None:
        return self.content.get("token") if self.content else None

    @property
    def identity(self) -> tuple:
        # The token names a lock; an unreadable file is named by its inode and, being unwritten, its mtime and size.
        if self.token:
            return (self.st.st_dev, self.st.st_ino, self.token)
        return (self.st.st_dev, self.st.st_ino, self.st.st_mtime_ns, self.st.st_size)

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.st.st_mtime


def _read(path: Path) -> _Seen | None:
    """The file's content and stat from one open (so both are of the same inode); None if there is no file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        data = b""
        while len(data) < _MAX_READ:
            chunk = os.read(fd, _MAX_READ - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    try:
        content = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        content = None
    if not isinstance(content, dict) or not content.get("token"):
        content = None
    return _Seen(content, st)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    except OSError:
        return True  # cannot tell: assume alive
    return True


def _same_machine(owner: dict, me: dict) -> bool:
    """Whether the owner's pid can be checked here: same host name, same boot, same pid namespace."""
    return (owner.get("host") == me["host"] and owner.get("boot_id") == me["boot_id"]
            and owner.get("pid_ns") == me["pid_ns"])


def _stale_reason(seen: _Seen, me: dict, stale_after_s: float, now: float | None = None) -> str | None:
    """Why the lock's owner is gone (a short text), or None if it may be alive."""
    age = seen.age(now)
    owner = seen.content
    if owner is None:
        limit = min(stale_after_s, PARTIAL_STALE_S)
        return f"unreadable for {age:.0f}s" if age > limit else None
    pid = owner.get("pid")
    if _same_machine(owner, me) and isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
        if not _pid_alive(pid):
            return f"pid {pid} is not running on {me['host']}"
        recorded, current = owner.get("process_start"), _process_start(pid)
        if recorded and current and recorded != current:
            return f"pid {pid} now belongs to another process"
        return None  # a live process here: never stale, whatever its heartbeat
    if age > stale_after_s:
        return f"no heartbeat for {age:.0f}s"
    return None


def _is_requeued_predecessor(seen: _Seen, me: dict) -> bool:
    """The lock was written by an earlier run of this very Slurm job and array task (a requeue)."""
    owner = seen.content
    if owner is None or not me.get("slurm_job_id"):
        return False
    if (str(owner.get("slurm_job_id")), str(owner.get("slurm_array_task_id"))) != (
            str(me["slurm_job_id"]), str(me["slurm_array_task_id"])):
        return False
    theirs = owner.get("slurm_restart_count", 0)
    if theirs is None:
        theirs = 0
    return isinstance(theirs, int) and theirs < (me.get("slurm_restart_count") or 0)


def _public(content: dict | None) -> dict:
    if content is None:
        return {"partial": True}
    return {k: v for k, v in content.items() if k != "token"}


def describe(owner: dict | None) -> str:
    """A short text for messages: "held by host X pid Y (Slurm job J task T) since Z"."""
    if owner is None:
        return "not locked"
    if owner.get("partial"):
        return "lock file being written"
    slurm = ""
    if owner.get("slurm_job_id"):
        task = owner.get("slurm_array_task_id")
        slurm = f" (Slurm job {owner['slurm_job_id']}" + (f" task {task}" if task is not None else "") + ")"
    return f"held by host {owner.get('host')} pid {owner.get('pid')}{slurm} since {owner.get('started')}"


def lock_path(lock_dir: str | Path, run_id: str) -> Path:
    return Path(lock_dir) / f"{run_id}{SUFFIX}"


def lock_state(lock_dir: str | Path, run_id: str, stale_after_s: float = 900) -> dict | None:
    """For status displays: the owner's fields plus `heartbeat_age_s` and `stale`, or None if not locked.

    `stale` is judged from this process's point of view by the rules of the module docstring (the Slurm-requeue
    takeover aside, which concerns only the requeued task itself). `stale_reason` says why, when stale.
    """
    try:
        seen = _read(lock_path(lock_dir, run_id))
    except OSError:
        return None
    if seen is None:
        return None
    reason = _stale_reason(seen, _identity_now(), stale_after_s)
    return {**_public(seen.content), "heartbeat_age_s": round(seen.age(), 3), "stale": reason is not None,
            "stale_reason": reason}


# ----------------------------------------------------------------------------------------------------------------
# Creating and removing files


def _create_exclusive(path: Path, content: dict) -> bool:
    """Creates `path` with `content` (JSON, fsynced) if no file has that name; False if one has."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        data = memoryview((json.dumps(content, indent=1) + "\n").encode())
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)  # ours, half written
        raise
    os.close(fd)
    return True


def _remove_if(path: Path, identity: tuple) -> bool:
    """Removes `path` only if it is the file named by `identity`; True if it removed it.

    Atomic with respect to other removers: the file is first renamed to a private name, and what was moved is
    checked; a file that turns out not to be the expected one is linked back under its name (unless a newer one
    took the name meanwhile).
    """
    private = path.with_name(f"{path.name}.{secrets.token_hex(6)}.removing")
    try:
        os.rename(path, private)
    except FileNotFoundError:
        return False
    try:
        moved = _read(private)
    except OSError:
        moved = None
    if moved is not None and moved.identity == identity:
        private.unlink(missing_ok=True)
        return True
    try:
        os.link(private, path)
    except FileExistsError:
        pass  # a newer file holds the name; the one we moved has been replaced anyway
    except OSError:  # a filesystem without hard links
        if not path.exists():
            os.rename(private, path)
            return False
    private.unlink(missing_ok=True)
    return False


# ----------------------------------------------------------------------------------------------------------------
# The lock


class RunLock:
    """A lock on one run id, held by this process while `held`; see the module docstring.

    `stale_after_s` is how old another machine's heartbeat may be before its lock counts as abandoned; it should
    be several `heartbeat_s` (the interval at which this process touches its own lock while holding it).
    """

    takeover_wait_s = 5.0  # how long acquire() waits for another process's takeover before giving up

    def __init__(self, lock_dir: str | Path, run_id: str, stale_after_s: float = 900, heartbeat_s: float = 30):
        if not run_id or "/" in run_id or run_id in (".", ".."):
            raise ValueError(f"not a run id usable as a file name: {run_id!r}")
        if stale_after_s <= 0 or heartbeat_s <= 0:
            raise ValueError("stale_after_s and heartbeat_s must be positive")
        self.lock_dir = Path(lock_dir)
        self.run_id = run_id
        self.path = lock_path(lock_dir, run_id)
        self.mutex_path = self.lock_dir / f"{run_id}{TAKEOVER_SUFFIX}"
        self.stale_after_s = float(stale_after_s)
        self.heartbeat_s = float(heartbeat_s)
        self.lost = False  # set by the heartbeat when the file vanished or another process took it over
        self.took_over: str | None = None  # why the lock we now hold was someone else's stale one, if it was
        self._token: str | None = None
        self._owner_pid: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- public ---------------------------------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        return self._token is not None and not self.lost and self._owner_pid == os.getpid()

    def acquire(self) -> bool:
        """True if this process now holds the lock; False if a live owner holds it."""
        if self.held:
            return True
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        me = _identity_now()
        token = secrets.token_hex(16)
        content = {"run_id": self.run_id, "token": token, **me}
        deadline = time.monotonic() + self.takeover_wait_s
        while True:
            if _create_exclusive(self.path, content):
                self._start(token)
                return True
            seen = _read(self.path)
            if seen is None:  # released between our create and our read
                if time.monotonic() > deadline:
                    return False  # (a name that O_EXCL refuses and open cannot follow: a dangling symlink)
                continue
            if _is_requeued_predecessor(seen, me):
                reason = "written by this Slurm task before its requeue"
            else:
                reason = _stale_reason(seen, me, self.stale_after_s)
            if reason is None:
                return False
            outcome = self._take_over(seen, me, content)
            if outcome is True:
                self.took_over = reason
                self._start(token)
                return True
            if outcome is False or time.monotonic() > deadline:
                return False
            time.sleep(0.02)  # None: another process is taking over; see what it left

    def release(self) -> None:
        """Stops the heartbeat and removes the lock file if it is still ours."""
        self._stop_heartbeat()
        token, self._token = self._token, None
        if token is None or self._owner_pid != os.getpid():
            return  # not held, or a forked child's copy of the parent's lock
        try:
            seen = _read(self.path)
        except OSError:
            return
        if seen is not None and seen.token == token:
            _remove_if(self.path, seen.identity)

    def holder(self) -> dict | None:
        """The current owner's fields (host, pid, slurm_job_id, slurm_array_task_id, started, ...), or None.

        A lock file still being written reads as {"partial": True}.
        """
        try:
            seen = _read(self.path)
        except OSError:
            return None
        return None if seen is None else _public(seen.content)

    def __enter__(self) -> RunLock:
        if not self.acquire():
            raise LockBusy(self.run_id, self.holder())
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else ("lost" if self.lost else "not held")
        return f"RunLock({str(self.path)!r}, {state})"

    # -- internals ------------------------------------------------------------------------------------------------

    def _take_over(self, stale: _Seen, me: dict, content: dict) -> bool | None:
        """Replaces the stale lock `stale` by ours under the takeover mutex.

        True: we hold the lock. False: it is no longer the stale one (refreshed, or taken by another). None: the
        mutex is busy (another process is taking over), look again shortly.
        """
        mutex_token = secrets.token_hex(16)
        if not _create_exclusive(self.mutex_path, {"token": mutex_token, "host": me["host"], "pid": me["pid"],
                                                   "created": _now_iso()}):
            mutex = _read(self.mutex_path)
            if mutex is not None and mutex.age() > TAKEOVER_STALE_S:
                _remove_if(self.mutex_path, mutex.identity)  # its owner died inside it
            return None
        mutex = _read(self.mutex_path)
        try:
            current = _read(self.path)
            if current is None:
                return _create_exclusive(self.path, content)  # released meanwhile: an ordinary acquire
            if current.identity != stale.identity or current.st.st_mtime_ns != stale.st.st_mtime_ns:
                return False  # another process took it over, or its owner's heartbeat came back
            if not _remove_if(self.path, stale.identity):
                return False
            return _create_exclusive(self.path, content)  # O_EXCL still: an ordinary acquirer may have won
        finally:
            if mutex is not None and mutex.token == mutex_token:
                _remove_if(self.mutex_path, mutex.identity)

    def _start(self, token: str) -> None:
        self._token = token
        self._owner_pid = os.getpid()
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(token, self._stop), daemon=True,
                                        name=f"runlock-heartbeat-{self.run_id}")
        self._thread.start()

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(timeout=5)

    def _beat(self, token: str, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                seen = _read(self.path)
                if seen is not None and seen.token == token:
                    os.utime(self.path)  # now (on NFS: the server's now)
                    continue
            except FileNotFoundError:
                seen = None
            except OSError:
                continue  # a passing filesystem error: try at the next beat
            if stop.is_set():
                return  # released meanwhile
            self.lost = True
            now_held_by = "nobody (the file is gone)" if seen is None else describe(_public(seen.content))
            print(f"[harness] lock {self.path} lost: {now_held_by}; heartbeat stopped", file=sys.stderr, flush=True)
            return
