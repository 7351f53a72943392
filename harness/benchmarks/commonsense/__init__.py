"""Commonsense170K -> the eight commonsense test sets (SPEC 2.1, 2.2), in the LLM-Adapters record format:
the papers' generation protocol (`paper_gen`) and lm-eval's multiple-choice tasks (`lmeval`)."""

from __future__ import annotations

from harness.benchmarks import register
from harness.benchmarks.base import Benchmark, text_encoder
from harness.benchmarks.commonsense import data
from harness.benchmarks.commonsense.paper_gen import PaperGen
from harness.benchmarks.lmeval import LmEval, LmEvalTask


@register
class Commonsense(Benchmark):
    name = "commonsense"
    data = data
    # 2: the with-input prompt headers' spacing as the original's (train one space, evaluation none)
    behaviour_version = 2
    short_names = {"boolq": "BoolQ", "piqa": "PIQA", "social_i_qa": "SIQA", "hellaswag": "HellaS",
                   "winogrande": "WinoG", "ARC-Easy": "ARC-e", "ARC-Challenge": "ARC-c", "openbookqa": "OBQA"}
    # lm-eval 0.4's task for each test set: its name, its YAML under lm_eval/tasks/, its hub dataset. The
    # LLM-Adapters files are not in lm-eval's record format (their BoolQ has no passage): offline, these tasks
    # read `protocol.local_files.<lm-eval task>.<split>`.
    lmeval_tasks = {
        "boolq": LmEvalTask("boolq", "super_glue/boolq/default.yaml", "aps/super_glue"),
        "piqa": LmEvalTask("piqa", "piqa/piqa.yaml", "baber/piqa"),
        "social_i_qa": LmEvalTask("social_iqa", "siqa/siqa.yaml", "lighteval/siqa"),
        "hellaswag": LmEvalTask("hellaswag", "hellaswag/hellaswag.yaml", "Rowan/hellaswag"),
        "winogrande": LmEvalTask("winogrande", "winogrande/default.yaml", "allenai/winogrande"),
        "ARC-Easy": LmEvalTask("arc_easy", "arc/arc_easy.yaml", "allenai/ai2_arc"),
        "ARC-Challenge": LmEvalTask("arc_challenge", "arc/arc_challenge.yaml", "allenai/ai2_arc"),
        "openbookqa": LmEvalTask("openbookqa", "openbookqa/openbookqa.yaml", "allenai/openbookqa"),
    }
    scorers = {"paper_gen": PaperGen(), "lmeval": LmEval(lmeval_tasks)}

    def encoder(self, task, tokenizer):
        return text_encoder(data.tokenize, task, tokenizer)
