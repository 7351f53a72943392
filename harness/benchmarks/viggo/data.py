"""ViGGO (GEM/viggo) as RoSA trains and scores it (IST-DASLab/RoSA llmfoundry/data/finetuning/tasks.py
`viggo_preprocessing_function` @fc8c0e0, scripts/train/viggo_eval.py @5f70c49): a video-game sentence -> its
meaning representation (`inform(name[...], ...)`). Training on the `train` split, scoring on `validation` (RoSA's
choice, not the test split).

Records are GEM/viggo's own (`target`: the sentence, `meaning_representation`), from the hub or from a local
.json / .jsonl copy in that format (`task.train_file`, `task.test_file`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from harness.benchmarks.base import test_subset
from harness.benchmarks.records import read_source, subset_and_split
from harness.errors import DataError
from harness.provenance import Hub, LocalFile

FIELDS = ("target", "meaning_representation")
# RoSA's prompt, character for character (the function and attribute lists are the dataset's own)
PROMPT = ("Given a target sentence construct the underlying meaning representation of the input sentence as a "
          "single function with attributes and attribute values. This function should describe the target string "
          "accurately and the function must be one of the following ['inform', 'request', 'give_opinion', "
          "'confirm', 'verify_attribute', 'suggest', 'request_explanation', 'recommend', 'request_attribute']. "
          "The attributes must be one of the following: ['name', 'exp_release_date', 'release_year', 'developer', "
          "'esrb', 'rating', 'genres', 'player_perspective', 'has_multiplayer', 'platforms', 'available_on_steam', "
          "'has_linux_release', 'has_mac_release', 'specifier']\n\n### Target sentence:\n{target}\n\n"
          "### Meaning representation:\n")


def _source(task: Mapping, role: str):
    local = task.get("train_file" if role == "train" else "test_file")
    if local:
        path = Path(str(local))
        if not path.is_file():
            raise DataError(f"task.{'train_file' if role == 'train' else 'test_file'}={local}: file not found "
                            f"(a .json / .jsonl of {task['hub']} records with fields {list(FIELDS)})")
        return LocalFile(role if role == "train" else "test/viggo", path)
    split = task["train_split"] if role == "train" else task["test_split"]
    return Hub(role if role == "train" else "test/viggo", task["hub"], "dataset", None, split,
               local_key="task.train_file" if role == "train" else "task.test_file")


def data_sources(task: Mapping) -> list:
    return [_source(task, "train"), _source(task, "test")]


def prompt_of(record: Mapping, task: Mapping | None = None) -> str:
    return PROMPT.format(target=record["target"])


def target_of(record: Mapping) -> str:
    return record["meaning_representation"]


def training_records(task: Mapping, seed: int) -> tuple[list[dict], list[dict]]:
    # the answer tokenized as its own sequence, as llm-foundry's `tokenizer(text=prompt, text_target=response)`
    records = [{"prompt": prompt_of(r), "response": target_of(r), "joint": False}
               for r in read_source(_source(task, "train"), FIELDS)]
    return subset_and_split(records, task, seed)


def test_sets(task: Mapping) -> dict[str, list[dict]]:
    return {"viggo": test_subset(read_source(_source(task, "test"), FIELDS), task)}
