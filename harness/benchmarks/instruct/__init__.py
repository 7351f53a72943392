"""Instruction following (MiLoRA Table 3): UltraFeedback's chosen conversations in the Tulu chat format ->
IFEval (lm-eval's `ifeval`, prompts in the same chat format) and AlpacaEval (the model's outputs, judged by
alpaca_eval where an annotator is configured). One protocol, `instruct`, scores both."""

from __future__ import annotations

from harness.benchmarks import register
from harness.benchmarks.base import Benchmark, Scorer, text_encoder
from harness.benchmarks.instruct import data
from harness.benchmarks.instruct.alpaca import AlpacaEvalOutputs
from harness.benchmarks.lmeval import LmEval, LmEvalTask
from harness.benchmarks.records import tokenize_prompt_response


class InstructionFollowing(Scorer):
    """IFEval through lm-eval (its four accuracies in the metrics; prompt-level strict is the headline) and the
    AlpacaEval outputs (`AlpacaEvalOutputs`), each where `task.datasets` names it."""

    name = "instruct"
    ifeval = LmEval({"ifeval": LmEvalTask("ifeval", "ifeval/ifeval.yaml", "google/IFEval")},
                    chat_template=data.TULU_CHAT_TEMPLATE, generates=True)
    alpaca = AlpacaEvalOutputs()
    engines = ("hf", "vllm")  # both parts generate (lm-eval's generate_until, greedy outputs)

    def reference_rows(self, model, processor, name, records, limit, protocol, task):
        part = self.ifeval if name == "ifeval" else self.alpaca
        return part.reference_rows(model, processor, name, records, limit, protocol, task)

    def check(self, protocol, task):
        if "alpaca_eval" in task["datasets"]:
            self.alpaca.check(protocol, task)

    def evaluate(self, model, processor, test_sets, protocol, task, progress=True):
        metrics, predictions = {}, {}
        if "ifeval" in task["datasets"]:
            found, rows = self.ifeval.evaluate(model, processor, {}, protocol, {**task, "datasets": ["ifeval"]},
                                               progress)
            metrics.update(found)
            predictions.update(rows)
        if "alpaca_eval" in test_sets:
            found, rows = self.alpaca.evaluate(model, processor, {"alpaca_eval": test_sets["alpaca_eval"]}, protocol,
                                               task, progress)
            metrics.update(found)
            predictions.update(rows)
        return metrics, predictions


@register
class Instruct(Benchmark):
    name = "instruct"
    data = data
    # FollowBench's five levels are the paper's columns only (no FollowBench here: conf/experiment/milora_instruct.yaml)
    short_names = {"ifeval": "IFEval", "alpaca_eval": "AlpacaEval", **{f"followbench_l{i}": f"FB L{i}" for i in range(1, 6)}}
    # 2: user and system turns stripped, as open-instruct's `_concat_messages`
    behaviour_version = 2
    scorers = {"instruct": InstructionFollowing()}

    def encoder(self, task, tokenizer):
        return text_encoder(tokenize_prompt_response, task, tokenizer)
