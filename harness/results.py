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

VERSIONED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "hydra-core", "lm_eval", "peft-harness")


class ResultFileError(ValueError):
    pass


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


def read_result(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    for key in ("run_id", "config", "metrics"):
        if key not in data:
            raise ResultFileError(f"{path}: not a harness result file (no {key!r})")
    return data


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
    return env
