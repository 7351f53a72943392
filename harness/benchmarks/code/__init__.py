"""Code generation: Code-Feedback training and HumanEval pass@k as LoRA-GA runs them (MiLoRA Table 5's HumanEval
column)."""

from __future__ import annotations

from harness.benchmarks import register
from harness.benchmarks.base import Benchmark, text_encoder
from harness.benchmarks.code import data
from harness.benchmarks.code.execution import FunctionalCorrectness
from harness.benchmarks.records import tokenize_prompt_response
from harness.errors import DataError


@register
class Code(Benchmark):
    name = "code"
    data = data
    short_names = {"humaneval": "HumanEval"}
    scorers = {"humaneval_loraga": FunctionalCorrectness()}

    def encoder(self, task, tokenizer):
        return text_encoder(tokenize_prompt_response, task, tokenizer)

    def training_examples(self, task, tokenizer, train_records, val_records):
        """LoRA-GA's selection: a record whose prompt + " " + answer tokenizes to `task.max_tokens` tokens or more
        is dropped (its script's count: `tokenizer(x + " " + y)`, no EOS, before any truncation), and the first
        `task.train_subset` of the rest are trained on."""
        encode, limit = self.encoder(task, tokenizer), task.get("max_tokens")
        wanted = int(task["train_subset"]) if task.get("train_subset") is not None else None
        examples = []
        for record in train_records:
            if limit is None or len(tokenizer(record["prompt"] + record["response"])["input_ids"]) < int(limit):
                examples.append(encode(record))
                if wanted is not None and len(examples) == wanted:
                    break
        if not examples:
            raise DataError(f"task.max_tokens={limit}: every training record is longer")
        return examples, [encode(r) for r in val_records]
