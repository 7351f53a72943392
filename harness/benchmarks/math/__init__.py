"""MetaMathQA-style training -> GSM8K and MATH (SPEC 2.3): MetaMath's greedy protocol (`math_greedy`) and
lm-eval's gsm8k (`lmeval`, RoSA's scoring)."""

from __future__ import annotations

from harness.benchmarks import register
from harness.benchmarks.base import Benchmark, text_encoder
from harness.benchmarks.lmeval import LmEval, LmEvalTask
from harness.benchmarks.math import data
from harness.benchmarks.math.greedy import MathGreedy
from harness.benchmarks.math.loraga import SampledHashAnswer
from harness.benchmarks.records import first_under


def gsm8k_files_for_lmeval(task, name: str) -> dict | None:
    """GSM8K's own jsonl files are lm-eval's gsm8k record format: its test file, and the train split for the
    few-shot examples."""
    test = data.local_test_file(name, task) if name == "gsm8k" else None
    if test is None:
        return None
    files = {"test": str(test)}
    if data.gsm8k_train_file(task).is_file():
        files["train"] = str(data.gsm8k_train_file(task))
    return files


@register
class Math(Benchmark):
    name = "math"
    data = data
    # 2: no newline after "### Response:" in the training prompt (MetaMath / MiLoRA train.py); RoSA's format
    # tokenizes the answer as its own sequence (a BOS before it on LLaMA)
    behaviour_version = 2
    short_names = {"gsm8k": "GSM8K", "MATH": "MATH"}
    scorers = {"math_greedy": MathGreedy("math_greedy"), "math_milora": MathGreedy("math_milora"),
               "gsm8k_loraga": SampledHashAnswer(),
               "lmeval": LmEval({"gsm8k": LmEvalTask("gsm8k", "gsm8k/gsm8k.yaml", "openai/gsm8k")}, gsm8k_files_for_lmeval,
                                 generates=True)}

    def encoder(self, task, tokenizer):
        return text_encoder(data.tokenize, task, tokenizer)

    def training_examples(self, task, tokenizer, train_records, val_records):
        """train_format=loraga: LoRA-GA's selection (records.first_under)."""
        if task.get("train_format", "metamath") != "loraga":
            return super().training_examples(task, tokenizer, train_records, val_records)
        return first_under(train_records, tokenizer, self.encoder(task, tokenizer), task)
