"""Answers of math problems (SPEC 2.3): `The answer is:` extraction; GSM8K compared as numbers, MATH by
equivalence after normalisation (`equivalence`).

GSM8K follows MetaMath's evaluation: the text after the last "The answer is: ", its first number (a fraction
evaluated), rounded; the gold answer is the number after "####". One deliberate difference: thousands
separators are removed before matching, since MetaMath's pattern reads "1,450,000" as 1450 (a gold answer of
the GSM8K test set that it would mark wrong).
MATH: the prediction is the text after the last "The answer is: " up to the first ".\\n", without a final
period; the gold answer is the content of the last `\\boxed{}` of the solution.
Generation is greedy and stops at `protocol.stop_strings` (MetaMath's: "Instruction:", "Response:", ...).
"""

from __future__ import annotations

import re
from fractions import Fraction

from harness.benchmarks.base import accuracy_summary
from harness.benchmarks.math.equivalence import last_boxed, math_equiv, math_gold, normalize_math_answer, unbox  # noqa: F401
from harness.errors import DataError

ANSWER_MARKER = "The answer is: "
_NUMBER = re.compile(r"[\-+]?\d*[\./]?\d+")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
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
        raise DataError(f"GSM8K answer without '####': {answer[-80:]!r}")
    return float(answer.split("####")[-1].strip().replace(",", ""))


def gsm8k_correct(completion: str, gold: float) -> bool:
    predicted = extract_gsm8k_answer(completion)
    return predicted is not None and float(predicted) == float(gold)


def extract_math_answer(completion: str) -> str | None:
    """MetaMath's MATH extraction: after the last "The answer is: ", up to the first ".\\n", without a final
    period; None when there is no marker."""
    parts = completion.split(ANSWER_MARKER)
    if len(parts) < 2:
        return None
    answer = parts[-1].split(".\n")[0].strip()
    return answer[:-1].strip() if answer.endswith(".") else answer


def cut_at_stop(completion: str, stop_strings) -> str:
    """The completion up to the first stop string (the generator stops a row there, or at EOS)."""
    cut = min((i for i in (completion.find(s) for s in stop_strings) if i >= 0), default=len(completion))
    return completion[:cut]


def math_correct(completion: str, solution: str) -> bool:
    predicted = extract_math_answer(completion)
    return predicted is not None and math_equiv(predicted, math_gold(solution))


def numeric_match(predicted: float, gold: float) -> bool:
    """MiLoRA's `math_equal` fallback for numbers (inference/grader.py): equal within a relative 1e-4 to the
    gold answer, or to it as a percentage either way (gold / 100, gold x 100)."""
    from math import isclose

    return any(isclose(g, float(predicted), rel_tol=1e-4) for g in (gold / 100, gold, gold * 100))


def score_gsm8k(records: list[dict], completions: list[str], numeric_fallback: bool = False) -> tuple[dict, list[dict]]:
    """`numeric_fallback`: MiLoRA's evaluation also accepts `numeric_match` (MetaMath's does not)."""
    rows = []
    for record, completion in zip(records, completions):
        gold = gsm8k_gold(record["answer"])
        predicted = extract_gsm8k_answer(completion)
        correct = gsm8k_correct(completion, gold) or bool(numeric_fallback and predicted is not None
                                                          and numeric_match(predicted, gold))
        rows.append({"response": completion, "prediction": predicted, "answer": gold, "correct": correct})
    return accuracy_summary(rows), rows


def score_math(records: list[dict], completions: list[str], numeric_fallback: bool = False) -> tuple[dict, list[dict]]:
    """(MiLoRA's MATH scoring has no numeric fallback: `numeric_fallback` is accepted and ignored.)"""
    rows = [{"response": completion, "prediction": extract_math_answer(completion),
             "answer": math_gold(record["solution"]), "correct": math_correct(completion, record["solution"])}
            for record, completion in zip(records, completions)]
    return accuracy_summary(rows), rows


# test set -> its scoring rule
SET_SCORERS = {"gsm8k": score_gsm8k, "MATH": score_math}
