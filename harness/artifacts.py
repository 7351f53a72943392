"""What a run writes beside its result file: the saved adapter and the predictions, each moved into place whole
(a reader never sees half of one), before the result file, the last write (`harness.results.write_result`);
and what is measured on it afterwards, its side results (`harness.results.SideResult`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from harness import methods
from harness.results import SIDE_KINDS, SIDE_SCHEMA_VERSION, SideResult, side_result_path, write_json_atomic


def move_into_place(tmp: Path, target: Path) -> None:
    """Replaces `target` (a file or folder) by `tmp` with renames, so a reader never sees half of either."""
    if target.is_dir():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def save_adapter(adapted, adapters_dir: Path, rid: str) -> Path:
    """The run's trained method (`harness.methods.save`) under `<adapters_dir>/<run id>/`."""
    adapters_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=adapters_dir, prefix=f".{rid}.tmp-"))
    try:
        methods.save(adapted, tmp)
        move_into_place(tmp, adapters_dir / rid)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return adapters_dir / rid


def write_predictions(path: Path, predictions: dict) -> None:
    """One JSON line per scored record: {"dataset", "index", ...the scorer's row}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            for name, rows in predictions.items():
                for i, row in enumerate(rows):
                    f.write(json.dumps({"dataset": name, "index": i, **row}) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_side_result(results_dir: Path, record: SideResult) -> Path:
    """A side result beside its run's result (atomic); the run's own files are not touched."""
    if record.get("kind") not in SIDE_KINDS or not record.get("run_id") or not record.get("name"):
        raise ValueError(f"not a side result: kind {record.get('kind')!r}, run_id {record.get('run_id')!r}, "
                         f"name {record.get('name')!r}")
    path = side_result_path(results_dir, record["run_id"], record["kind"], record["name"])
    write_json_atomic(path, {"schema": SIDE_SCHEMA_VERSION, **record})
    return path
