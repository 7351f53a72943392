"""The papers' commonsense protocol (`paper_gen`, SPEC 2.1): beam search, first match, exact match."""

from __future__ import annotations

import re
import time
from typing import Mapping

from harness.generation import generate
from harness.prompts import eval_prompt, response_of

_CHOICES = {
    "boolq": "true|false",
    "piqa": "solution1|solution2",
    "social_i_qa": "answer1|answer2|answer3|answer4|answer5",
    "ARC-Challenge": "answer1|answer2|answer3|answer4|answer5",
    "ARC-Easy": "answer1|answer2|answer3|answer4|answer5",
    "openbookqa": "answer1|answer2|answer3|answer4|answer5",
    "hellaswag": "ending1|ending2|ending3|ending4",
    "winogrande": "option1|option2",
}
PATTERNS = {name: re.compile(p) for name, p in _CHOICES.items()}


def extract_answer(dataset_name: str, response: str) -> str:
    """The first match of the dataset's answer pattern in a response; "" when nothing matches (wrong)."""
    try:
        pattern = PATTERNS[dataset_name]
    except KeyError:
        raise ValueError(f"no answer pattern for dataset {dataset_name!r}; known: {sorted(PATTERNS)}") from None
    match = pattern.search(response.strip())
    return match.group(0) if match else ""


def score(dataset_name: str, records: list[dict], decoded: list[str]) -> tuple[dict, list[dict]]:
    predictions = []
    correct = 0
    for record, text in zip(records, decoded):
        response = response_of(text)
        predicted = extract_answer(dataset_name, response)
        ok = predicted == record["answer"]
        correct += ok
        predictions.append({"response": response, "prediction": predicted, "answer": record["answer"], "correct": ok})
    n = len(records)
    return {"accuracy": 100.0 * correct / n if n else float("nan"), "correct": correct, "n": n}, predictions


def evaluate(model, tokenizer, test_sets: Mapping[str, list[dict]], protocol: Mapping, progress: bool = True,
             task_cfg: Mapping | None = None):
    """({dataset: {accuracy, correct, n, seconds}}, {dataset: per-example predictions})."""
    metrics, predictions = {}, {}
    for name, records in test_sets.items():
        start = time.perf_counter()
        prompts = [eval_prompt(r["instruction"], r.get("input", "")) for r in records]
        decoded = generate(model, tokenizer, prompts, num_beams=int(protocol["num_beams"]),
                           max_new_tokens=int(protocol["max_new_tokens"]), batch_size=int(protocol["batch_size"]),
                           progress=progress, desc=f"eval {name}")
        metrics[name], predictions[name] = score(name, records, decoded)
        metrics[name]["seconds"] = round(time.perf_counter() - start, 2)
        if progress:
            print(f"[harness] {name}: {metrics[name]['accuracy']:.1f}% of {metrics[name]['n']}", flush=True)
    return metrics, predictions
