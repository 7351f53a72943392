"""MetaMathQA-style training (query / response ending in "The answer is: X"); GSM8K and MATH test sets.

Training data: a MetaMathQA json file or hub id (`meta-math/MetaMathQA`), or, offline, GSM8K's own train
split converted to that format (calculator annotations dropped, "#### N" -> "The answer is: N").
Test sets: `<data_dir>/gsm8k/test.jsonl` (question / answer ending in "#### N") and `<data_dir>/MATH/test.jsonl`
(problem / solution with a final \\boxed{}), or a file or hub id per set in `task.test_files`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

from harness.benchmarks.base import test_subset
from harness.benchmarks.math.answers import ANSWER_MARKER
from harness.benchmarks.records import read_source, subset_and_split, tokenize_prompt_response, train_file_source
from harness.errors import DataError
from harness.provenance import Hub, LocalFile

# name -> (file under data_dir, the fields each record needs, the field that holds the question)
TEST_SETS = {"gsm8k": ("gsm8k/test.jsonl", ("question", "answer"), "question"),
             "MATH": ("MATH/test.jsonl", ("problem", "solution"), "problem")}
# MetaMath's training prompt (Alpaca without input).
# MetaMath's training prompt, the response following "### Response:" directly, with no newline (MetaMath,
# sufenlp/MiLoRA and GraphPKU/PiSSA train.py: PROMPT_DICT["prompt_no_input"], target = output + EOS).
TRAIN_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                  "request.\n\n### Instruction:\n{query}\n\n### Response:")
_CALCULATOR = re.compile(r"<<[^>]*>>")
# LoRA-GA's MetaMathQA / GSM8K format (Outsider565/LoRA-GA reproduce/data.py `load_meta_math`, `load_gsm8k`
# @7cbdd68): the bare "Q: ... A: " prompt, then " " and the response (its text is x + " " + y + EOS)
LORAGA_PROMPT = "Q: {question}\nA: "
TRAIN_FORMATS = ("metamath", "rosa", "loraga")


def gsm8k_to_metamath(record: Mapping) -> dict:
    reasoning, _, answer = record["answer"].rpartition("####")
    return {"query": record["question"],
            "response": f"{_CALCULATOR.sub('', reasoning).strip()}\n{ANSWER_MARKER}{answer.strip()}"}


def gsm8k_train_file(task: Mapping) -> Path:
    return Path(task["data_dir"]) / "gsm8k" / "train.jsonl"


def _train_source(task: Mapping):
    if task.get("train_file"):
        return train_file_source(task["train_file"])
    path = gsm8k_train_file(task)
    if not path.is_file():
        raise DataError(f"no training data: {path} does not exist; set data_dir, or task.train_file (MetaMathQA for "
                        "train_format=metamath, a GSM8K-format hub id such as openai/gsm8k:main for train_format=rosa)")
    return LocalFile("train", path)


def _test_source(name: str, task: Mapping):
    """Where a test set comes from: its local file, or `task.test_files[name]` as a hub id (test split); None
    when neither exists."""
    path, source = local_test_file(name, task), (task.get("test_files") or {}).get(name)
    if path is None and source:
        repo, _, config = str(source).partition(":")
        return Hub(f"test/{name}", repo, "dataset", config or None, "test")
    if path is not None and not path.is_file():
        raise DataError(f"task.test_files.{name}={str(path)!r}: file not found")
    return LocalFile(f"test/{name}", path) if path else None


def _test_sources(task: Mapping) -> list:
    sources = []
    for name in task["datasets"]:
        if name not in TEST_SETS:
            raise DataError(f"task.datasets: unknown math test set {name!r}; known: {sorted(TEST_SETS)}")
        source = _test_source(name, task)
        if source is None and not task.get("missing_ok", True):
            raise DataError(f"test set {name!r} not found at {Path(task['data_dir']) / TEST_SETS[name][0]} "
                            "(task.missing_ok=false)")
        if source is not None:
            sources.append(source)
    if not sources:
        raise DataError(f"no test set of {list(task['datasets'])} found under {task['data_dir']}")
    return sources


def data_sources(task: Mapping) -> list:
    """What the task reads (provenance.Source): the training file or hub id, and every test set found."""
    return [_train_source(task), *_test_sources(task)]


def _train_records(task: Mapping) -> list[dict]:
    """Records with the text to train on: `prompt` (no loss unless train_on_inputs) and `response`.

    train_format=metamath: MetaMath's Alpaca prompt around the query, the response ending in "The answer is: X"
    (MetaMathQA as it is; GSM8K converted). train_format=rosa: GSM8K as RoSA trained on it, the bare question
    followed by the original answer (calculator annotations and "#### N" kept), which lm-eval's gsm8k scores.
    """
    fmt = task.get("train_format", "metamath")
    if fmt not in TRAIN_FORMATS:
        raise DataError(f"task.train_format={fmt!r}: use one of {list(TRAIN_FORMATS)}")
    source = _train_source(task)
    if fmt == "loraga":
        return _loraga_records(task, source)
    if fmt == "metamath":
        if task.get("train_file"):
            records = read_source(source, ("query", "response"))
        else:
            records = [gsm8k_to_metamath(r) for r in read_source(source, ("question", "answer"))]
        return [{"prompt": TRAIN_TEMPLATE.format(query=r["query"]), "response": r["response"], "joint": True}
                for r in records]
    records = read_source(source, ("question", "answer"))
    return [{"prompt": r["question"], "response": r["answer"], "joint": False} for r in records]


def _loraga_records(task: Mapping, source) -> list[dict]:
    """train_format=loraga: MetaMathQA's GSM8K-derived records only (`type` GSM_*), each response cut before its
    "\nThe answer is:" (what stays of an AnsAug record ends in GSM8K's "#### N", which LoRA-GA's evaluation
    reads); GSM8K's own records (offline) as they are."""
    if task.get("train_file"):
        records = read_source(source, ("query", "response"))
        pairs = [(r["query"], r["response"].split("\nThe answer is:")[0]) for r in records
                 if "type" not in r or "GSM" in str(r["type"])]
    else:
        pairs = [(r["question"], r["answer"]) for r in read_source(source, ("question", "answer"))]
    return [{"prompt": LORAGA_PROMPT.format(question=q), "response": " " + a, "joint": True} for q, a in pairs]


def training_records(task: Mapping, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation). train_format=loraga: every record in the dataset's order; its token-count selection,
    first `train_subset` and held-out records come after tokenizing (`Math.training_examples`), as LoRA-GA's
    script takes the first 100K under 512 tokens (its `dataset.shuffle(seed=42)` result is not kept)."""
    if task.get("train_format", "metamath") == "loraga":
        return _train_records(task), []
    return subset_and_split(_train_records(task), task, seed)


def local_test_file(name: str, task: Mapping) -> Path | None:
    """The .jsonl a test set is read from: `task.test_files[name]` when that is a path, else the data dir's
    file when it exists; None when there is none (or the set comes from a hub id)."""
    source = (task.get("test_files") or {}).get(name)
    if source:
        return Path(source) if Path(source).suffix == ".jsonl" or Path(source).exists() else None
    path = Path(task["data_dir"]) / TEST_SETS[name][0]
    return path if path.is_file() else None


def test_sets(task: Mapping) -> dict[str, list[dict]]:
    sets = {}
    found = {s.role[5:]: s for s in _test_sources(task)}
    for name in task["datasets"]:
        if name not in found:
            print(f"[harness] no test set {name!r} at {Path(task['data_dir']) / TEST_SETS[name][0]}; its column will "
                  "show '-'", flush=True)
            continue
        sets[name] = test_subset(read_source(found[name], TEST_SETS[name][1]), task)
        if name == "MATH":  # a solution without a gold answer fails here, not after hours of generation
            from harness.benchmarks.math.equivalence import last_boxed

            bad = next((i for i, r in enumerate(sets[name]) if last_boxed(r["solution"]) is None), None)
            if bad is not None:
                raise DataError(f"MATH test record {bad} has no \\boxed{{}} answer in its solution")
    return sets


def question_of(dataset: str, record: Mapping) -> str:
    return record[TEST_SETS[dataset][2]]


def tokenize(record: Mapping, tokenizer, cutoff_len: int, train_on_inputs: bool, add_eos_token: bool = True) -> dict:
    """MetaMath / MiLoRA tokenize prompt and response together (`joint`); RoSA's format tokenizes the response
    apart (`harness.benchmarks.records.tokenize_prompt_response`)."""
    return tokenize_prompt_response(record, tokenizer, cutoff_len, train_on_inputs, add_eos_token)
