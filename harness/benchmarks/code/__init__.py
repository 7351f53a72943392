"""Code generation: Code-Feedback training and HumanEval pass@k as LoRA-GA runs them (MiLoRA Table 5's HumanEval
column)."""

from __future__ import annotations

from harness.benchmarks import register
from harness.benchmarks.base import Benchmark, text_encoder
from harness.benchmarks.code import data
from harness.benchmarks.code.execution import FunctionalCorrectness
from harness.benchmarks.records import first_under, tokenize_prompt_response


@register
class Code(Benchmark):
    name = "code"
    data = data
    short_names = {"humaneval": "HumanEval"}
    scorers = {"humaneval_loraga": FunctionalCorrectness()}

    def encoder(self, task, tokenizer):
        return text_encoder(tokenize_prompt_response, task, tokenizer)

    def training_examples(self, task, tokenizer, train_records, val_records):
        """LoRA-GA's selection (records.first_under): under `task.max_tokens`, the first `task.train_subset`,
        then `task.val_set_size` held out."""
        return first_under(train_records, tokenizer, self.encoder(task, tokenizer), task)
