"""Text-to-SQL as RoSA trains and scores it (IST-DASLab/RoSA scripts/train/finetune_example/preprocessing.py
`sql_preprocessing_function`, scripts/train/sql_eval.py @5f70c49; its data scripts/train/data/sql/*.jsonl @2f44817):
a CREATE TABLE context and a question -> the query.

`task.source` says whose data:
- `rosa` (the paper profile): RoSA's own files, train.jsonl for training and valid.jsonl (1,000 records) for the
  test, as its yamls and sql_eval.py read them, fetched at the pinned commit (`task.rosa_files`, harness.downloads)
  or read from `task.train_file` / `task.test_file`; offline and uncached, the run stops naming both;
- `hub`: b-mc2/sql-create-context, whose one split is cut by a seeded draw (`task.split_seed`) into
  `task.test_size` test records and the rest for training (harness choice: RoSA's repository does not say how its
  records were drawn). Not RoSA's data: the table's caption says so (`data_note`).
Two record formats are read: sql-create-context's own (`context`, `question`, `answer`) and RoSA's (`messages`: the
user turn "Write a SQL query ... context: ... question: ..." and the assistant's query).

Whatever the source, a training record whose question is also a test record's (compared without case and
surrounding or repeated white space) is dropped: RoSA's files may come from sql-create-context, and a hub-trained run
scored on RoSA's valid.jsonl would otherwise see its test questions.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Mapping

from harness.benchmarks.base import test_subset
from harness.benchmarks.records import read_hub_records, read_json_records, read_jsonl_records, subset_and_split
from harness.errors import DataError
from harness.provenance import Hub, LocalFile, PinnedUrl

SOURCES = ("rosa", "hub")
ROLES = (("train", "train_file"), ("test", "test_file"))

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


def source_of(task: Mapping) -> str:
    source = task.get("source", "hub")
    if source not in SOURCES:
        raise DataError(f"task.source={source!r}: use rosa (RoSA's own files) or hub (b-mc2/sql-create-context)")
    return source


def data_sources(task: Mapping) -> list:
    source, sources = source_of(task), []
    for which, key in ROLES:
        role = "train" if which == "train" else "test/sql"
        local = task.get(key)
        if local:
            sources.append(LocalFile(role, Path(str(local))))
        elif source == "rosa":
            sources.append(PinnedUrl(role, str(task["rosa_files"][which]["url"])))
        else:
            sources.append(Hub(role, task["hub"], "dataset", None, "train", local_key=f"task.{key}"))
    return sources


def _records(task: Mapping, which: str, hub_split: tuple | None = None) -> list[dict]:
    """The train or test records; `hub_split`: the hub's split already read (training_records reads it once)."""
    key = dict(ROLES)[which]
    if task.get(key):
        return _read_local(Path(str(task[key])), key)
    if source_of(task) == "rosa":
        from harness.downloads import fetched

        return _read_local(fetched(str(task["rosa_files"][which]["url"]), f"task.{key}"), key)
    train, test = hub_split or _hub_split(task)
    return train if which == "train" else test


def _reads_the_hub(task: Mapping) -> bool:
    return source_of(task) == "hub" and not (task.get("train_file") and task.get("test_file"))


def git_blob_sha1(path: Path) -> str:
    """The id git gives a file's content (RoSA's repository names its data files by it)."""
    content = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def is_rosas_data(task: Mapping) -> bool:
    """Whether both files are RoSA's: its pinned URLs, or local files whose git blob ids are RoSA's."""
    if source_of(task) != "rosa":
        return False
    for which, key in ROLES:
        local = task.get(key)
        if local and (not Path(str(local)).is_file()
                      or git_blob_sha1(Path(str(local))) != task["rosa_files"][which]["git_blob"]):
            return False
    return True


def data_note(task: Mapping) -> str | None:
    if is_rosas_data(task):
        return None
    if source_of(task) == "hub" and not task.get("train_file") and not task.get("test_file"):
        return (f"SQL: not RoSA's data (b-mc2/sql-create-context, {task['test_size']} records held out by a seeded "
                "draw; RoSA trains on its train.jsonl and tests on its valid.jsonl: task.source=rosa)")
    return "SQL: not RoSA's data (task.train_file / task.test_file are not RoSA's train.jsonl / valid.jsonl)"


def _question_key(question: str) -> str:
    return " ".join(str(question).split()).lower()


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
    hub_split = _hub_split(task) if _reads_the_hub(task) else None
    tested = {_question_key(r["question"]) for r in _records(task, "test", hub_split)}
    train = _records(task, "train", hub_split)
    kept = [r for r in train if _question_key(r["question"]) not in tested]
    if len(kept) < len(train):
        print(f"[harness] sql: dropped {len(train) - len(kept)} of {len(train)} training records whose question is "
              "a test record's", flush=True)
    records = [{"prompt": training_prompt(r), "response": target_of(r), "joint": False} for r in kept]
    return subset_and_split(records, task, seed)


def test_sets(task: Mapping) -> dict[str, list[dict]]:
    return {"sql": test_subset(_records(task, "test"), task)}
