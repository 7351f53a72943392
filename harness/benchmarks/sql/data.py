"""Text-to-SQL as RoSA trains and scores it (IST-DASLab/RoSA scripts/train/finetune_example/preprocessing.py
`sql_preprocessing_function`, scripts/train/sql_eval.py @5f70c49; its data scripts/train/data/sql/*.jsonl @2f44817):
a CREATE TABLE context and a question -> the query.

Two record formats are read: b-mc2/sql-create-context's own (`context`, `question`, `answer`), from the hub or a
local copy, and RoSA's files (`messages`: the user turn "Write a SQL query ... context: ... question: ..." and the
assistant's query), e.g. RoSA's train.jsonl / valid.jsonl given as task.train_file / task.test_file. The hub
dataset has one split; RoSA's repository does not say how its 1,000 validation records were drawn, so a hub run
holds out `task.test_size` records by a seeded draw (`task.split_seed`) and trains on the rest (harness choice).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Mapping

from harness.benchmarks.base import test_subset
from harness.benchmarks.records import read_hub_records, read_json_records, read_jsonl_records, subset_and_split
from harness.errors import DataError
from harness.provenance import Hub, LocalFile

INSTRUCTION = "Write a SQL query to answer the question based on the table schema.\n\n context: {context}\n\n question: {question}"
ANSWER_PREFIX = "\n\n answer: "  # sql_preprocessing_function: f"{messages[0]['content']}\n\n answer: "


def from_messages(record: Mapping, where: str) -> dict:
    """RoSA's chat record as the hub's fields."""
    try:
        user, assistant = record["messages"][0]["content"], record["messages"][1]["content"]
        head, question = user.rsplit("\n\n question: ", 1)
        context = head.split("\n\n context: ", 1)[1]
    except (KeyError, IndexError, TypeError, ValueError):
        raise DataError(f"{where}: a record's `messages` is not RoSA's SQL format (a user turn '... context: ... "
                        "question: ...' and the assistant's query)") from None
    return {"context": context, "question": question, "answer": assistant}


def _read_local(path: Path, role: str) -> list[dict]:
    if not path.is_file():
        raise DataError(f"task.{role}={path}: file not found (b-mc2/sql-create-context records, or RoSA's "
                        "messages records)")
    raw = read_jsonl_records(path, ()) if path.suffix == ".jsonl" else read_json_records(path, ())
    if raw and "messages" in raw[0]:
        return [from_messages(r, str(path)) for r in raw]
    missing = [f for f in ("context", "question", "answer") if raw and f not in raw[0]]
    if missing:
        raise DataError(f"{path}: records lack field(s) {missing} (b-mc2/sql-create-context's format)")
    return raw


def _hub_split(task: Mapping) -> tuple[list[dict], list[dict]]:
    """(train, test) of the hub's single split: a seeded draw of `test_size` records for the test."""
    records = read_hub_records(task["hub"], split="train", what="task.train_file / task.test_file")
    order = list(range(len(records)))
    random.Random(int(task["split_seed"])).shuffle(order)
    held = set(order[: int(task["test_size"])])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


def data_sources(task: Mapping) -> list:
    sources = []
    for role, key in (("train", "train_file"), ("test/sql", "test_file")):
        local = task.get(key)
        sources.append(LocalFile(role, Path(str(local))) if local else
                       Hub(role, task["hub"], "dataset", None, "train", local_key=f"task.{key}"))
    return sources


def _records(task: Mapping, which: str) -> list[dict]:
    key = "train_file" if which == "train" else "test_file"
    if task.get(key):
        return _read_local(Path(str(task[key])), key)
    train, test = _hub_split(task)
    return train if which == "train" else test


def training_prompt(record: Mapping) -> str:
    return INSTRUCTION.format(context=record["context"], question=record["question"]) + ANSWER_PREFIX


def prompt_of(record: Mapping, task: Mapping) -> str:
    """The evaluation prompt: RoSA's sql_eval.py applies its template twice (in `dataset.map` and again in
    `batch_eval`), so the model it scored saw "... answer: \\n\\n answer: "; `task.eval_prompt=rosa` keeps that,
    `train` gives the training prompt."""
    mode = task.get("eval_prompt", "rosa")
    if mode not in ("rosa", "train"):
        raise DataError(f"task.eval_prompt={mode!r}: use rosa (as RoSA's sql_eval.py) or train")
    return training_prompt(record) + (ANSWER_PREFIX if mode == "rosa" else "")


def target_of(record: Mapping) -> str:
    return record["answer"]


def training_records(task: Mapping, seed: int) -> tuple[list[dict], list[dict]]:
    records = [{"prompt": training_prompt(r), "response": target_of(r), "joint": False} for r in _records(task, "train")]
    return subset_and_split(records, task, seed)


def test_sets(task: Mapping) -> dict[str, list[dict]]:
    return {"sql": test_subset(_records(task, "test"), task)}
