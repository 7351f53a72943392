"""Reading instruction records (JSON list files, or a hub dataset id) with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

REQUIRED_FIELDS = ("instruction", "output")


class DataError(ValueError):
    pass


def read_json_records(path: Path, required: tuple[str, ...] = REQUIRED_FIELDS) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {i} is a {type(record).__name__}, expected an object")
        missing = [f for f in required if f not in record]
        if missing:
            raise DataError(f"{path}: record {i} lacks field(s) {missing}")
    return data


def read_hub_records(dataset_id: str, split: str = "train", what: str = "task.train_file") -> list[dict]:
    from datasets import load_dataset

    from harness.offline import ensure_hub_available

    ensure_hub_available(dataset_id, "dataset", what=what)
    return [dict(r) for r in load_dataset(dataset_id, split=split)]
