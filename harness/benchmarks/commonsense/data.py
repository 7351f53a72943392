"""Commonsense170K training data and the eight commonsense test sets, in the LLM-Adapters record format."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from harness.benchmarks.base import test_subset
from harness.benchmarks.commonsense.prompts import train_prompt
from harness.benchmarks.records import read_json_records, read_source, subset_and_split, train_file_source
from harness.errors import DataError
from harness.provenance import LocalFile

TEST_FIELDS = ("instruction", "answer")


def _train_sources(task: Mapping) -> list:
    """A train file or hub id, else every `<data_dir>/<set>/train.json` that exists."""
    if task.get("train_file"):
        return [train_file_source(task["train_file"])]
    data_dir = Path(task["data_dir"])
    sources = [LocalFile(f"train/{name}", data_dir / name / "train.json") for name in task["datasets"]
               if (data_dir / name / "train.json").is_file()]
    if not sources:
        raise DataError(
            f"no training data: none of {list(task['datasets'])} has {data_dir}/<set>/train.json; set data_dir "
            f"(or HARNESS_DATA_DIR) to the folder that holds commonsense/, or task.train_file to commonsense_170k.json"
        )
    return sources


def _test_sources(task: Mapping) -> list:
    """Every test set's `<data_dir>/<set>/test.json` that exists (an absent one is an error with missing_ok=false)."""
    data_dir = Path(task["data_dir"])
    sources = []
    for name in task["datasets"]:
        path = data_dir / name / "test.json"
        if path.is_file():
            sources.append(LocalFile(f"test/{name}", path))
        elif not task.get("missing_ok", True):
            raise DataError(f"test set {name!r} not found at {path} (task.missing_ok=false)")
    if not sources:
        raise DataError(f"no test set of {list(task['datasets'])} found under {data_dir}")
    return sources


def data_sources(task: Mapping) -> list:
    """What the task reads (provenance.Source), checked for presence."""
    return [*_train_sources(task), *_test_sources(task)]


def _train_records(task: Mapping) -> list[dict]:
    sources = _train_sources(task)
    if task.get("train_file"):
        return read_source(sources[0], ("instruction", "output"))
    missing = [n for n in task["datasets"] if f"train/{n}" not in {s.role for s in sources}]
    if missing:
        print(f"[harness] training on {[s.role[6:] for s in sources]}; no train split for {missing} in {task['data_dir']}",
              flush=True)
    return [record for source in sources for record in read_json_records(source.path)]


def training_records(task: Mapping, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation) records: an optional seeded subset, then LLM-Adapters' seeded validation hold-out."""
    return subset_and_split(_train_records(task), task, seed)


def test_sets(task: Mapping) -> dict[str, list[dict]]:
    """Every configured test set that exists: {name: records}, `task.test_subset` of each."""
    sources = {s.role[5:]: s for s in _test_sources(task)}
    absent = [name for name in task["datasets"] if name not in sources]
    if absent:
        print(f"[harness] no test set {absent} under {task['data_dir']}; their columns will show '-'", flush=True)
    sets = {}
    for name, source in sources.items():
        sets[name] = test_subset(read_json_records(source.path, TEST_FIELDS), task)
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
