"""Commonsense170K training data and the eight commonsense test sets, in the LLM-Adapters record format."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from harness.prompts import train_prompt
from harness.tasks import text_encoder
from harness.tasks.records import DataError, read_json_records, read_train_file, subset_and_split

TEST_FIELDS = ("instruction", "answer")
PROTOCOLS = {"paper_gen": "harness.protocols.commonsense", "lmeval": "harness.protocols.lmeval"}


def _train_records(task: Mapping) -> list[dict]:
    if task.get("train_file"):
        return read_train_file(task["train_file"], ("instruction", "output"))
    data_dir = Path(task["data_dir"])
    records, found, missing = [], [], []
    for name in task["datasets"]:
        path = data_dir / name / "train.json"
        if path.is_file():
            records.extend(read_json_records(path))
            found.append(name)
        else:
            missing.append(name)
    if not found:
        raise DataError(
            f"no training data: none of {list(task['datasets'])} has {data_dir}/<set>/train.json; set data_dir "
            f"(or HARNESS_DATA_DIR) to the folder that holds commonsense/, or task.train_file to commonsense_170k.json"
        )
    if missing:
        print(f"[harness] training on {found}; no train split for {missing} in {data_dir}", flush=True)
    return records


def training_records(task: Mapping, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation) records: an optional seeded subset, then LLM-Adapters' seeded validation hold-out."""
    return subset_and_split(_train_records(task), task, seed)


def test_sets(task: Mapping) -> dict[str, list[dict]]:
    """Every configured test set that exists: {name: records}, the first `test_subset` of each."""
    data_dir = Path(task["data_dir"])
    limit = task.get("test_subset")
    sets, absent = {}, []
    for name in task["datasets"]:
        path = data_dir / name / "test.json"
        if not path.is_file():
            if not task.get("missing_ok", True):
                raise DataError(f"test set {name!r} not found at {path} (task.missing_ok=false)")
            absent.append(name)
            continue
        records = read_json_records(path, TEST_FIELDS)
        sets[name] = records[: int(limit)] if limit is not None else records
    if absent:
        print(f"[harness] no test set {absent} under {data_dir}; their columns will show '-'", flush=True)
    if not sets:
        raise DataError(f"no test set of {list(task['datasets'])} found under {data_dir}")
    return sets


def tokenize(record: Mapping, tokenizer, cutoff_len: int, train_on_inputs: bool, add_eos_token: bool = True) -> dict:
    """LLM-Adapters' tokenisation: truncate to cutoff_len, append eos if room, optionally mask the prompt."""

    def encode(text: str, add_eos: bool) -> dict:
        ids = tokenizer(text, truncation=True, max_length=cutoff_len, padding=False)["input_ids"]
        if add_eos and ids and ids[-1] != tokenizer.eos_token_id and len(ids) < cutoff_len:
            ids = ids + [tokenizer.eos_token_id]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}

    instruction, input_, output = record["instruction"], record.get("input", ""), record["output"]
    example = encode(train_prompt(instruction, input_, output), add_eos_token)
    if not train_on_inputs:
        prompt_len = len(encode(train_prompt(instruction, input_, ""), False)["input_ids"])
        example["labels"] = [-100] * prompt_len + example["labels"][prompt_len:]
    return example


def encoder(task_cfg, tokenizer):
    return text_encoder(tokenize, task_cfg, tokenizer)
