"""Runs `harness.run` on one process or on N (torchrun, gloo), as the multi-process tests compare them."""

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.config import PROJECT_ROOT


def launch(processes: int, results: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HARNESS_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "-m"] if processes > 1 else [sys.executable, "-m"]
    hydra = [f"hydra.run.dir={results / 'hydra'}", f"meta.run.results_dir={results}"]
    proc = subprocess.run([*launcher, "harness.run", *args, *hydra], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def only_result(results: Path) -> dict:
    """The one result file under `results` (the main process alone writes it), with its predictions' lines."""
    files = sorted((results / "runs").glob("*.json"))
    assert len(files) == 1, files
    record = json.loads(files[0].read_text())
    record["predictions"] = files[0].with_suffix(".predictions.jsonl").read_text().splitlines()
    return record
