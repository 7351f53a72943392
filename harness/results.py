"""One JSON file per run under results/runs/, named by the run id; written atomically."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.config import PROJECT_ROOT
from harness.errors import HarnessError

VERSIONED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "hydra-core", "lm_eval", "peft-harness")


class ResultFileError(HarnessError, ValueError):
    default_hint = "move the damaged file away; the run is redone when its result file is absent"


def runs_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "runs"


def result_path(results_dir: str | Path, run_id: str) -> Path:
    return runs_dir(results_dir) / f"{run_id}.json"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


STATUSES = ("finished", "failed", "diverged")


def read_result(path: Path) -> dict:
    """A result file: finished (with metrics) or a failure record. Files written before statuses existed are
    finished ones."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ResultFileError(f"{path}: not a harness result file (a JSON {type(data).__name__})")
    data.setdefault("status", "finished")
    required = ("run_id", "config", "metrics") if data["status"] == "finished" else ("run_id", "config", "error")
    for key in required:
        if key not in data:
            raise ResultFileError(f"{path}: not a harness result file (no {key!r})")
    if data["status"] not in STATUSES:
        raise ResultFileError(f"{path}: unknown status {data['status']!r} (one of {list(STATUSES)})")
    return data


def previous_result(path: Path) -> dict | None:
    """The result file of a run id if there is one (finished or failed); a damaged one raises ResultFileError."""
    return read_result(path) if Path(path).is_file() else None


def load_results(results_dir: str | Path) -> list[dict]:
    """Every result under results_dir/runs; a damaged file is reported and skipped, never deleted."""
    results = []
    for path in sorted(runs_dir(results_dir).glob("*.json")):
        try:
            results.append(read_result(path))
        except ResultFileError as exc:
            print(f"[harness] skipping {exc}", flush=True)
    return results


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment() -> dict[str, Any]:
    import torch

    env = {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    from harness.envlock import lock_status

    env["lock"] = lock_status()  # which requirements lock, its sha256, and whether the installed versions match
    return env
