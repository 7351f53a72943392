"""Whether this environment is the locked one (requirements/lock-{cpu,cuda}.txt), for every result file.

A result is only reproducible if the environment that produced it can be rebuilt: `make setup` installs from
the lock, and each result records which lock applies, its sha256, and every installed version that differs
from its pins. The lock is the CUDA one when torch is a CUDA build (`torch.version.cuda`), else the CPU one;
torch's local label (`+cpu`) is ignored and names are compared PEP 503-normalized. Without the lock files (an
installed wheel, no repository) the file is None and `matches` None.

    python -m harness.envlock      # one line: matches the lock, or what differs
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {"cpu": "requirements/lock-cpu.txt", "cuda": "requirements/lock-cuda.txt"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(lock_path: Path) -> dict[str, str]:
    """{normalized name: version} of a lock's `name==version` lines (comments and options skipped)."""
    pins = {}
    for line in lock_path.read_text().splitlines():
        line = re.sub(r"(^|\s+)#.*$", "", line).strip()  # pip's own comment rule
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            pins[normalize(name.strip())] = version.strip()
    return pins


def installed_versions() -> dict[str, str]:
    """{normalized name: version} of the installed distributions (the first found wins, as for imports)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize(name), dist.version)
    return found


def compare(lock_path: str | Path, root: Path = ROOT) -> dict:
    """lock_status's dict for the lock at `lock_path` (file relative to `root` where it lies under it)."""
    lock_path = Path(lock_path)
    if not lock_path.is_file():
        return {"file": None, "sha256": None, "matches": None, "mismatches": {}}
    installed = installed_versions()
    mismatches = {}
    for name, locked in read_pins(lock_path).items():
        have = installed.get(name)
        if have is None or have.split("+")[0] != locked:
            mismatches[name] = {"locked": locked, "installed": have}
    resolved = lock_path.resolve()
    return {"file": str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved),
            "sha256": hashlib.sha256(lock_path.read_bytes()).hexdigest(),
            "matches": not mismatches,
            "mismatches": mismatches}


def lock_kind() -> str:
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.version.cuda else "cpu"


@functools.cache
def _lock_status() -> dict:
    return compare(ROOT / LOCKS[lock_kind()])


def lock_status() -> dict:
    """{"file", "sha256", "matches", "mismatches": {name: {"locked", "installed"}}}, computed once per process
    (a copy each call, so a caller may change it)."""
    return copy.deepcopy(_lock_status())


if __name__ == "__main__":
    status = lock_status()
    if status["file"] is None:
        print("envlock: no lock file here (requirements/ is in the repository, not in the package)")
    elif status["matches"]:
        print(f"envlock: the environment matches {status['file']}")
    else:
        mismatches = sorted(status["mismatches"].items())
        diff = ", ".join(f"{n} {m['installed']} (locked {m['locked']})" for n, m in mismatches)
        print(f"envlock: {len(mismatches)} package(s) differ from {status['file']}: {diff}")
