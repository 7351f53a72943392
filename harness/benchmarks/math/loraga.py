"""GSM8K as LoRA-GA scores it (`gsm8k_loraga`; Outsider565/LoRA-GA reproduce/eval_gsm8k.py and utils.py
`model_inference` @7cbdd68), the protocol behind the GSM8K column MiLoRA Table 5 cites: the "Q: ... A: " prompt
(plus the space `model_inference` appends), one continuation sampled at temperature 0.8 / top-p 0.95 (LLaMA-2's
generation config turns sampling on) up to 512 new tokens, and an integer comparison of the digits after the first
"####" in the continuation and in the gold answer. Its quirks are kept: a continuation without "####" (or whose
number does not parse) counts as 0, and the digits stop at a comma ("#### 1,000" reads 1).
"""

from __future__ import annotations

import re

from harness.benchmarks.base import Scorer
from harness.benchmarks.math.data import LORAGA_PROMPT
from harness.errors import ConfigError
from harness.generation import sample

HASH_ANSWER = re.compile(r"####\s*(\d+)")


def hash_answer(text: str) -> int:
    """eval_gsm8k.py's `extract_num`: the digits after the first "####", 0 when there are none."""
    match = HASH_ANSWER.search(text)
    return int(match.group(1)) if match else 0


class SampledHashAnswer(Scorer):
    name = "gsm8k_loraga"
    engines = ("hf", "vllm")  # greedy generate / sample only (harness.engine)

    def score_set(self, model, tokenizer, name, records, protocol, task, progress=False):
        if name != "gsm8k":
            raise ConfigError(f"protocol=gsm8k_loraga scores gsm8k, not {name!r}")
        prompts = [LORAGA_PROMPT.format(question=r["question"]) + " " for r in records]
        texts = sample(model, tokenizer, prompts, num_samples=1, temperature=float(protocol["temperature"]),
                       top_p=float(protocol["top_p"]), max_new_tokens=int(protocol["max_new_tokens"]),
                       batch_size=int(protocol["batch_size"]), seed=int(protocol["seed"]), progress=progress,
                       desc=f"eval {name}")
        rows = []
        for index, (record, (text,)) in enumerate(zip(records, texts)):
            prediction, gold = hash_answer(text), hash_answer(record["answer"])
            rows.append({"index": index, "prediction": prediction, "answer": gold, "correct": prediction == gold,
                         "output": text})
        return self.summarize(name, rows), rows
