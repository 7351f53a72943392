"""How far an engine's answers are HF's: the first records of each set scored again through HF generate, on the
same weights, and each record's answer (`answer_of`: the extracted answer where the scorer keeps one) compared."""

from __future__ import annotations

from typing import Mapping


def text_of(row: Mapping):
    """The generated text a prediction row keeps (math: `response`; the others: `output`)."""
    return row.get("response", row.get("output"))


def answer_of(row: Mapping):
    """What a prediction row answers: its extracted `prediction` where the scorer keeps one (math, exact match);
    else its response (lm-eval's filtered one: GSM8K's extracted number, IFEval's text); else its verdict where it
    has one; else (an open-ended output, AlpacaEval's: `correct` None) its text. Two different wrong answers are a
    disagreement, so a verdict is compared only where nothing finer is kept."""
    if "prediction" in row:
        return row["prediction"]
    if "response" in row or row.get("correct") is None:
        return text_of(row)
    return row["correct"]


def compare(scorer, model, processor, test_sets: Mapping[str, list], predictions: Mapping[str, list],
            protocol: Mapping, task: Mapping, records: int, threshold: float) -> dict:
    """{"records", "same_answers", "rate", "threshold", "below_threshold", "sets": {set: {..., "disagreements":
    [the records' indices]}}} over the first `records` of every set (the scorer's `reference_rows`: no judge,
    no side files; lm-eval's rows come in its document order, as the engine's)."""
    sets, same, compared = {}, 0, 0
    for name, rows in predictions.items():
        reference = scorer.reference_rows(model, processor, name, test_sets.get(name), records, protocol, task)
        if not reference:
            continue
        differ = [i for i, (ours, hf) in enumerate(zip(rows, reference)) if answer_of(ours) != answer_of(hf)]
        texts = sum(text_of(ours) == text_of(hf) for ours, hf in zip(rows, reference))
        sets[name] = {"records": len(reference), "same_answers": len(reference) - len(differ),
                      "same_texts": int(texts), "disagreements": differ}
        same, compared = same + len(reference) - len(differ), compared + len(reference)
    rate = same / compared if compared else None
    return {"records": compared, "same_answers": same, "rate": rate, "threshold": float(threshold),
            "below_threshold": rate is not None and rate < float(threshold), "sets": sets}
