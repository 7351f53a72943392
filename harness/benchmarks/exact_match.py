"""RoSA's scoring of its ViGGO and SQL columns (IST-DASLab/RoSA scripts/train/viggo_eval.py, sql_eval.py @5f70c49):
greedy decoding, the answer found by a regular expression in the decoded prompt + continuation, and a plain exact
string match against the record's target after `.strip()`: no parsing of the meaning representation, no
execution of the query, no case or whitespace normalisation.

The official scripts generate to `max_length=512` tokens (prompt included) or EOS; the regular expressions keep
only the first line of the answer, so `protocol.max_new_tokens` (256: RoSA's prompts leave about that much of the
512) bounds the generation instead, and the score is the same wherever the first line ends within it.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

from harness.benchmarks.base import Scorer
from harness.generation import generate


class RegexExactMatch(Scorer):
    """`prompt_of(record, task)`: the evaluation prompt; `target_of(record)`: the gold text; `pattern` / `group`:
    where the answer is in the decoded text (the first match; "" when there is none)."""
    engines = ("hf", "vllm")  # greedy generate / sample only (harness.engine)

    def __init__(self, name: str, prompt_of: Callable[[Mapping, Mapping], str], target_of: Callable[[Mapping], str],
                 pattern: str, group: int):
        self.name, self.prompt_of, self.target_of = name, prompt_of, target_of
        self.pattern, self.group = re.compile(pattern), group

    def answer(self, decoded: str) -> str:
        match = self.pattern.search(decoded)
        return match.group(self.group).strip() if match else ""

    def score_set(self, model, tokenizer, name, records, protocol, task, progress=False):
        prompts = [self.prompt_of(r, task) for r in records]
        decoded = generate(model, tokenizer, prompts, num_beams=1, max_new_tokens=int(protocol["max_new_tokens"]),
                           batch_size=int(protocol["batch_size"]), progress=progress, desc=f"eval {name}",
                           stop_strings=list(protocol.get("stop_strings") or []))
        rows = []
        for record, prompt, text in zip(records, prompts, decoded):
            prediction, gold = self.answer(text), self.target_of(record).strip()
            rows.append({"prediction": prediction, "answer": gold, "correct": prediction == gold,
                         "output": text.removeprefix(prompt)})
        return self.summarize(name, rows), rows

    def summarize(self, name, rows):
        return {**super().summarize(name, rows), "metric": "exact_match"}  # (also after merging processes' shards)
