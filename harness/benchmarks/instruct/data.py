"""Instruction following (MiLoRA Table 3, arXiv 2406.09044v3): training on UltraFeedback's chosen conversations in
open-instruct's Tulu chat format, IFEval through lm-eval, AlpacaEval instructions answered for alpaca_eval.

Training records: chat `messages` (role / content), as HuggingFaceH4/ultrafeedback_binarized's `train_sft` split
holds them, from the hub or a local .json / .jsonl copy (`task.train_file`). The conversation up to its last
assistant turn is the prompt (no loss), the last assistant turn the response (open-instruct trains on every
assistant turn; UltraFeedback's are single-turn, where the two agree).

AlpacaEval: the 805 instructions of tatsu-lab/alpaca_eval (`alpaca_eval` config, `eval` split), or a local file in
alpaca_eval's own format (a JSON list of {instruction, output, generator, dataset}; `task.test_files.alpaca_eval`).
IFEval is lm-eval's `ifeval` task: lm-eval reads its records (google/IFEval, or `protocol.local_files.ifeval.test`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from harness.benchmarks.base import test_subset
from harness.benchmarks.records import read_source, subset_and_split
from harness.errors import DataError
from harness.provenance import Hub, LocalFile

SETS = ("ifeval", "alpaca_eval")


def tulu_format(messages, eos: str = "") -> str:
    """open-instruct's Tulu chat format (`encode_with_messages_format`'s `_concat_messages`): every turn's content
    stripped, "<|user|>\\n...\\n", an assistant turn "<|assistant|>\\n" + its content + EOS + "\\n"; ends with
    the generation prompt "<|assistant|>\\n"."""
    text = ""
    for message in messages:
        role, content = message.get("role"), message.get("content", "").strip()
        if role == "system":
            text += f"<|system|>\n{content}\n"
        elif role == "user":
            text += f"<|user|>\n{content}\n"
        elif role == "assistant":
            text += f"<|assistant|>\n{content}{eos}\n"
        else:
            raise DataError(f"a chat message has role {role!r}: the Tulu format knows system, user and assistant")
    return text + "<|assistant|>\n"


# the same format as a chat template, for lm-eval's apply_chat_template (IFEval's prompts as user turns)
TULU_CHAT_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\\n' + "
                      "message['content'] + '\\n' }}{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + "
                      "message['content'] + '\\n' }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + "
                      "message['content'] | trim + eos_token + '\\n' }}{% endif %}{% endfor %}"
                      "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")


def _train_source(task: Mapping):
    if task.get("train_file"):
        path = Path(str(task["train_file"]))
        if not path.is_file():
            raise DataError(f"task.train_file={path}: file not found (chat records with `messages`)")
        return LocalFile("train", path)
    return Hub("train", task["hub"], "dataset", None, task["train_split"], local_key="task.train_file")


def _alpaca_source(task: Mapping):
    local = (task.get("test_files") or {}).get("alpaca_eval")
    if local:
        path = Path(str(local))
        if not path.is_file():
            raise DataError(f"task.test_files.alpaca_eval={path}: file not found (alpaca_eval's JSON list format)")
        return LocalFile("test/alpaca_eval", path)
    return Hub("test/alpaca_eval", task["alpaca_eval_hub"], "dataset", task["alpaca_eval_config"], "eval",
               local_key="task.test_files.alpaca_eval")


def data_sources(task: Mapping) -> list:
    unknown = sorted(set(task["datasets"]) - set(SETS))
    if unknown:
        raise DataError(f"task.datasets: unknown instruction-following set(s) {unknown}; known: {list(SETS)}")
    return [_train_source(task), *([_alpaca_source(task)] if "alpaca_eval" in task["datasets"] else [])]


def training_records(task: Mapping, seed: int) -> tuple[list[dict], list[dict]]:
    records = []
    for i, r in enumerate(read_source(_train_source(task), ("messages",))):
        messages = list(r["messages"])
        last = max((j for j, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            raise DataError(f"training record {i} has no assistant turn to train on")
        records.append({"prompt": tulu_format(messages[:last]), "response": messages[last]["content"].strip(),
                        "joint": True})
    return subset_and_split(records, task, seed)


def test_sets(task: Mapping) -> dict[str, list[dict]]:
    """The sets the harness reads itself (AlpacaEval's instructions); IFEval's records are lm-eval's."""
    if "alpaca_eval" not in task["datasets"]:
        return {}
    return {"alpaca_eval": test_subset(read_source(_alpaca_source(task), ("instruction",)), task)}
