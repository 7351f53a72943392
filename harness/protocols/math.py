"""Math word problems with greedy decoding (SPEC 2.3): `The answer is:` extraction, numeric comparison (GSM8K).

The extraction follows MetaMath's GSM8K evaluation: the text after the last "The answer is: ", its first
number (a fraction evaluated), rounded; the gold answer is the number after "####". One deliberate difference:
thousands separators are removed before matching, since MetaMath's pattern reads "1,450,000" as 1450 (a gold
answer of the GSM8K test set that it would mark wrong).
MATH's `\\boxed{}` equivalence is not here yet.
"""

from __future__ import annotations

import re
import time
from fractions import Fraction
from typing import Mapping

from harness.generation import generate
from harness.prompts import response_of

ANSWER_MARKER = "The answer is: "
_NUMBER = re.compile(r"[\-+]?\d*[\./]?\d+")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
# MetaMath's evaluation prompt (training uses "### Response:\n" and the answer; the mismatch is the original's).
EVAL_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                 "request.\n\n### Instruction:\n{query}\n\n### Response: Let's think step by step.")


def extract_gsm8k_answer(completion: str) -> int | None:
    """The rounded number after the last "The answer is: ", or None when there is none."""
    parts = completion.split(ANSWER_MARKER)
    if len(parts) < 2:
        return None
    match = _NUMBER.search(_THOUSANDS.sub("", parts[-1].strip()))
    if not match:
        return None
    text = match.group()
    try:
        value = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        return None
    return round(value) if value not in (float("inf"), float("-inf")) else None


def gsm8k_gold(answer: str) -> float:
    """The number after "####" in a GSM8K answer."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer without '####': {answer[-80:]!r}")
    return float(answer.split("####")[-1].strip().replace(",", ""))


def gsm8k_correct(completion: str, gold: float) -> bool:
    predicted = extract_gsm8k_answer(completion)
    return predicted is not None and float(predicted) == float(gold)


def score(records: list[dict], completions: list[str]) -> tuple[dict, list[dict]]:
    predictions, correct = [], 0
    for record, completion in zip(records, completions):
        gold = gsm8k_gold(record["answer"])
        ok = gsm8k_correct(completion, gold)
        correct += ok
        predictions.append({"response": completion, "prediction": extract_gsm8k_answer(completion), "answer": gold,
                            "correct": ok})
    n = len(records)
    return {"accuracy": 100.0 * correct / n if n else float("nan"), "correct": correct, "n": n}, predictions


def evaluate(model, tokenizer, test_sets: Mapping[str, list[dict]], protocol: Mapping, progress: bool = True):
    metrics, predictions = {}, {}
    for name, records in test_sets.items():
        if name != "gsm8k":
            raise ValueError(f"the math protocol scores gsm8k only so far, not {name!r}")
        start = time.perf_counter()
        prompts = [EVAL_TEMPLATE.format(query=r["question"]) for r in records]
        decoded = generate(model, tokenizer, prompts, num_beams=1, max_new_tokens=int(protocol["max_new_tokens"]),
                           batch_size=int(protocol["batch_size"]), progress=progress, desc=f"eval {name}")
        metrics[name], predictions[name] = score(records, [response_of(d) for d in decoded])
        metrics[name]["seconds"] = round(time.perf_counter() - start, 2)
        if progress:
            print(f"[harness] {name}: {metrics[name]['accuracy']:.1f}% of {metrics[name]['n']}", flush=True)
    return metrics, predictions
