"""Reading records that benchmarks share (JSON list files, JSON lines, a hub dataset id), with errors that name the
file and the line; the seeded subset and validation hold-out."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Mapping

from harness.errors import DataError

REQUIRED_FIELDS = ("instruction", "output")


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


def read_jsonl_records(path: Path, required: tuple[str, ...]) -> list[dict]:
    """One JSON object per line (GSM8K's format; .gz compressed too, as HumanEval ships); errors name the file and
    the line."""
    import gzip

    records = []
    try:
        raw = gzip.decompress(Path(path).read_bytes()) if str(path).endswith(".gz") else Path(path).read_bytes()
        lines = raw.decode().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {i} is not valid JSON ({exc.msg})") from None
        missing = [f for f in required if f not in record]
        if missing:
            raise DataError(f"{path}: line {i} lacks field(s) {missing}")
        records.append(record)
    return records


def train_file_source(train_file: str, role: str = "train"):
    """`task.train_file` as a source: a local .json list of records (or .jsonl, one a line), or else a hub
    dataset id (`owner/name[:config]`)."""
    from harness.provenance import Hub, LocalFile

    path = Path(str(train_file))
    if path.suffix in (".json", ".jsonl") or path.exists():
        if not path.is_file():
            raise DataError(f"task.train_file={train_file}: file not found")
        return LocalFile(role, path)
    repo, _, config = str(train_file).partition(":")
    return Hub(role, repo, "dataset", config or None, "train")


def read_source(source, required: tuple[str, ...]) -> list[dict]:
    """The records of a source: a local .json list (or .jsonl, one object a line), or a hub dataset split."""
    from harness.provenance import Hub

    if isinstance(source, Hub):
        repo = source.repo + (f":{source.config}" if source.config else "")
        records = read_hub_records(repo, split=source.split or "train", what=source.local_key or source.role)
        missing = [f for f in required if records and f not in records[0]]
        if missing:
            raise DataError(f"{repo} ({source.split}): records lack field(s) {missing}")
        return records
    if source.path.suffix == ".jsonl":
        return read_jsonl_records(source.path, required)
    return read_json_records(source.path, required)


def read_hub_records(dataset_id: str, split: str = "train", what: str = "task.train_file") -> list[dict]:
    """A hub dataset's split; `owner/name:config` names a config (e.g. `openai/gsm8k:main`)."""
    from datasets import load_dataset

    from harness.offline import ensure_hub_available

    repo, _, config = dataset_id.partition(":")
    ensure_hub_available(repo, "dataset", what=what)
    return [dict(r) for r in load_dataset(repo, config or None, split=split)]


def subset_and_split(records: list[dict], task: Mapping, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): an optional subset (`task.train_subset`: a draw seeded by the run's seed, or with
    `task.train_subset_mode=first` the first records in the file's order, as MiLoRA's and PiSSA's `train[:100000]`),
    then `task.val_set_size` records held out (a count, as LLM-Adapters; or a fraction below 1).

    The held-out records: by default the first of a shuffle seeded by the run's seed; with `task.val_split_seed`
    the ones `datasets`' `train_test_split(test_size=..., shuffle=True, seed=...)` picks from these records, as
    LLM-Adapters' finetune.py draws its 120 (seed 42 whatever the run's seed)."""
    rng = random.Random(seed)
    subset, mode = task.get("train_subset"), task.get("train_subset_mode", "random")
    if mode not in ("random", "first"):
        raise DataError(f"task.train_subset_mode={mode!r}: use random (a seeded draw) or first (the file's order)")
    if subset is not None:
        if int(subset) < 1:
            raise DataError(f"task.train_subset must be >= 1 or null, got {subset}")
        records = list(records[: int(subset)]) if mode == "first" else rng.sample(records, min(int(subset), len(records)))
    else:
        records = list(records)
    val_size = task.get("val_set_size") or 0
    if 0 < float(val_size) < 1:  # a fraction of the training records (Neat's ViT script: 10%)
        val_size = int(round(float(val_size) * len(records)))
    val_size = int(val_size)
    if val_size >= len(records):
        raise DataError(f"task.val_set_size={val_size} leaves no training records (only {len(records)})")
    if val_size and task.get("val_split_seed") is not None:
        return _split_as_datasets_does(records, val_size, int(task["val_split_seed"]))
    if subset is None or mode == "first":
        rng.shuffle(records)
    return records[val_size:], records[:val_size]


def _split_as_datasets_does(records: list[dict], val_size: int, split_seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) as `Dataset.train_test_split(test_size=val_size, shuffle=True, seed=split_seed)` splits
    these records (the library itself picks the indices: its permutation, not a re-implementation of it)."""
    from datasets import Dataset

    split = Dataset.from_dict({"i": list(range(len(records)))}).train_test_split(
        test_size=val_size, shuffle=True, seed=split_seed)
    return [records[i] for i in split["train"]["i"]], [records[i] for i in split["test"]["i"]]


def tokenize_prompt_response(record: Mapping, tokenizer, cutoff_len: int, train_on_inputs: bool,
                             add_eos_token: bool = True) -> dict:
    """A `prompt` / `response` record as token ids and labels (the loss on the response unless `train_on_inputs`).
    MetaMath / MiLoRA tokenize prompt and response together (`joint`), masking the prompt's own token count;
    for RoSA's format the response is tokenized apart as its own sequence, with the tokenizer's special tokens, as
    llm-foundry's `tokenizer(text=question, text_target=answer)` does (IST-DASLab/RoSA tasks.py): on LLaMA that
    puts a BOS before the answer, `<s> question <s> answer </s>`."""
    prompt_ids = tokenizer(record["prompt"])["input_ids"]
    if record.get("joint", True):
        ids = tokenizer(record["prompt"] + record["response"])["input_ids"]
    else:
        ids = prompt_ids + tokenizer(record["response"])["input_ids"]
    if add_eos_token:
        ids = ids + [tokenizer.eos_token_id]
    ids = ids[:cutoff_len]
    labels = list(ids) if train_on_inputs else [-100] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids):]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}



def first_under(records: list[dict], tokenizer, encode, task: Mapping) -> tuple[list[dict], list[dict]]:
    """(training examples, validation examples) as LoRA-GA selects its training sets (Outsider565/LoRA-GA
    reproduce/data.py `load_meta_math`, `load_codefeedback`): in the dataset's order, a record whose prompt +
    response tokenizes to `task.max_tokens` or more is dropped (its count: the ids of the joined text, no EOS,
    before any truncation); the first `task.train_subset` of the rest are trained on (None: all) and the
    `task.val_set_size` after them held out (LoRA-GA: 100K, then 10K)."""
    limit, wanted = task.get("max_tokens"), task.get("train_subset")
    val_size = task.get("val_set_size") or 0
    if val_size and float(val_size) < 1:
        raise DataError(f"task.val_set_size={val_size}: this selection holds out a count of records, not a fraction")
    total = None if wanted is None else int(wanted) + int(val_size)
    examples = []
    for record in records:
        if limit is None or len(tokenizer(record["prompt"] + record["response"])["input_ids"]) < int(limit):
            examples.append(encode(record))
            if total is not None and len(examples) == total:
                break
    train_size = len(examples) - int(val_size) if wanted is None else min(int(wanted), len(examples))
    if train_size < 1:
        raise DataError(f"task.max_tokens={limit}: no training record is shorter (after {int(val_size)} held out)")
    return examples[:train_size], examples[train_size:train_size + int(val_size)]
