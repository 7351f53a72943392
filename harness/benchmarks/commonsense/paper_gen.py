"""The papers' commonsense protocol (`paper_gen`, SPEC 2.1): beam search, first match, exact match."""

from __future__ import annotations

import re

from harness.benchmarks.base import Scorer, accuracy_summary
from harness.benchmarks.commonsense.prompts import eval_prompt, response_of
from harness.generation import generate

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
    for record, text in zip(records, decoded):
        response = response_of(text)
        predicted = extract_answer(dataset_name, response)
        ok = predicted == record["answer"]
        predictions.append({"response": response, "prediction": predicted, "answer": record["answer"], "correct": ok})
    return accuracy_summary(predictions), predictions


class PaperGen(Scorer):
    """Alpaca prompt, beam search, first-match extraction, exact match (LLM-Adapters' evaluate.py)."""

    name = "paper_gen"

    def score_set(self, model, tokenizer, name, records, protocol, task, progress=False):
        prompts = [eval_prompt(r["instruction"], r.get("input", "")) for r in records]
        decoded = generate(model, tokenizer, prompts, num_beams=int(protocol["num_beams"]),
                           max_new_tokens=int(protocol["max_new_tokens"]), batch_size=int(protocol["batch_size"]),
                           progress=progress, desc=f"eval {name}")
        return score(name, records, decoded)
