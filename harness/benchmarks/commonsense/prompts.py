"""The Alpaca-style prompts of the LLM-Adapters code, byte for byte (SPEC 2.1).

The original f-strings put 16 spaces in front of every line after the first; the training template has two
spaces after "request." and an indented blank line between blocks, the evaluation template one space and bare
blank lines. These strings are the protocol: changing a byte changes the numbers.
"""

from __future__ import annotations

_INDENT = " " * 16

TRAIN_HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n\n"
# With an input the original's headers differ: one space after "request." in training (finetune.py), none in
# evaluation (evaluate.py).
TRAIN_HEADER_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n\n"
)
EVAL_HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n\n"
EVAL_HEADER_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)


def train_prompt(instruction: str, input: str = "", output: str = "") -> str:
    """The training text (prompt and answer); with output="" it is the prompt part alone."""
    if input:
        return (
            f"{TRAIN_HEADER_WITH_INPUT}{_INDENT}### Instruction:\n{_INDENT}{instruction}\n{_INDENT}\n"
            f"{_INDENT}### Input:\n{_INDENT}{input}\n{_INDENT}\n"
            f"{_INDENT}### Response:\n{_INDENT}{output}"
        )
    return (
        f"{TRAIN_HEADER}{_INDENT}### Instruction:\n{_INDENT}{instruction}\n{_INDENT}\n"
        f"{_INDENT}### Response:\n{_INDENT}{output}"
    )


def eval_prompt(instruction: str, input: str = "") -> str:
    if input:
        return (
            f"{EVAL_HEADER_WITH_INPUT}{_INDENT}### Instruction:\n{_INDENT}{instruction}\n\n"
            f"{_INDENT}### Input:\n{_INDENT}{input}\n\n"
            f"{_INDENT}### Response:\n{_INDENT}"
        )
    return f"{EVAL_HEADER}{_INDENT}### Instruction:\n{_INDENT}{instruction}\n\n{_INDENT}### Response:\n{_INDENT}"


def response_of(decoded: str) -> str:
    """The model's answer in a decoded prompt+generation, as the original evaluation splits it."""
    parts = decoded.split("### Response:")
    return parts[1].strip() if len(parts) > 1 else ""
