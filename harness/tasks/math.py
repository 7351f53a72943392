"""MetaMathQA-style training (query / response ending in "The answer is: X") and the GSM8K test set.

Training data: a MetaMathQA json file or hub id (`meta-math/MetaMathQA`), or, offline, GSM8K's own train
split converted to that format (calculator annotations dropped, "#### N" -> "The answer is: N").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

from harness.protocols.math import ANSWER_MARKER
from harness.tasks.records import DataError, read_jsonl_records, read_train_file, subset_and_split

PROTOCOLS = {"math_greedy": "harness.protocols.math"}
# MetaMath's training prompt (Alpaca without input).
TRAIN_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                  "request.\n\n### Instruction:\n{query}\n\n### Response:\n")
_CALCULATOR = re.compile(r"<<[^>]*>>")


def gsm8k_to_metamath(record: Mapping) -> dict:
    reasoning, _, answer = record["answer"].rpartition("####")
    return {"query": record["question"],
            "response": f"{_CALCULATOR.sub('', reasoning).strip()}\n{ANSWER_MARKER}{answer.strip()}"}


def _train_records(task: Mapping) -> list[dict]:
    if task.get("train_file"):
        return read_train_file(task["train_file"], ("query", "response"))
    path = Path(task["data_dir"]) / "gsm8k" / "train.jsonl"
    if not path.is_file():
        raise DataError(f"no training data: {path} does not exist; set data_dir, or task.train_file to MetaMathQA")
    return [gsm8k_to_metamath(r) for r in read_jsonl_records(path, ("question", "answer"))]


def training_records(task: Mapping, seed: int) -> tuple[list[dict], list[dict]]:
    return subset_and_split(_train_records(task), task, seed)


def test_sets(task: Mapping) -> dict[str, list[dict]]:
    sets = {}
    for name in task["datasets"]:
        path = Path(task["data_dir"]) / name / "test.jsonl"
        if not path.is_file():
            if not task.get("missing_ok", True):
                raise DataError(f"test set {name!r} not found at {path} (task.missing_ok=false)")
            print(f"[harness] no test set {name!r} at {path}; its column will show '-'", flush=True)
            continue
        records = read_jsonl_records(path, ("question", "answer"))
        limit = task.get("test_subset")
        sets[name] = records[: int(limit)] if limit is not None else records
    if not sets:
        raise DataError(f"no test set of {list(task['datasets'])} found under {task['data_dir']}")
    return sets


def tokenize(record: Mapping, tokenizer, cutoff_len: int, train_on_inputs: bool, add_eos_token: bool = True) -> dict:
    prompt = TRAIN_TEMPLATE.format(query=record["query"])
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + record["response"])["input_ids"]
    if add_eos_token:
        ids = ids + [tokenizer.eos_token_id]
    ids = ids[:cutoff_len]
    labels = list(ids) if train_on_inputs else [-100] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids):]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
