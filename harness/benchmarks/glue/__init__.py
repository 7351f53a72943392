"""GLUE (Neat Table 3, SPEC 2.4): one task per run with a new classification head (STS-B: regression),
scored on its dev split (`glue_dev`)."""

from __future__ import annotations

from harness.benchmarks import register
from harness.benchmarks.base import Benchmark
from harness.benchmarks.glue import data
from harness.benchmarks.glue.dev import GlueDev


@register
class Glue(Benchmark):
    name = "glue"
    data = data
    # BERT/RoBERTa name their classification head `classifier`, decoder models `score`
    head_modules = ("classifier", "score")
    short_names = {"sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "qnli": "QNLI", "rte": "RTE", "stsb": "STS-B",
                   "mnli": "MNLI", "qqp": "QQP"}
    scorers = {"glue_dev": GlueDev()}

    def encoder(self, task, tokenizer):
        cutoff = int(task["cutoff_len"])  # the loss is the head's: no prompt masking, no EOS
        return lambda record: data.tokenize(record, tokenizer, cutoff)

    def collator(self, tokenizer, task, train=True):
        return data.collator(tokenizer, task)

    def model_head(self, task):
        return data.model_head(task)
