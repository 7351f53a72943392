"""What a run writes beside its result file: the saved adapter and the predictions, each moved into place whole
(a reader never sees half of one), before the result file, the last write (`harness.results.write_result`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from harness import methods


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
