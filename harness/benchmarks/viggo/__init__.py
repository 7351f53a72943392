"""ViGGO (GEM/viggo): RoSA's data-to-text-inverse column, sentence -> meaning representation, scored by RoSA's exact
match (`rosa_exact`)."""

from __future__ import annotations

from harness.benchmarks import register
from harness.benchmarks.base import Benchmark, text_encoder
from harness.benchmarks.exact_match import RegexExactMatch
from harness.benchmarks.records import tokenize_prompt_response
from harness.benchmarks.viggo import data


@register
class ViGGO(Benchmark):
    name = "viggo"
    data = data
    short_names = {"viggo": "ViGGO"}
    # viggo_eval.py: `### Meaning representation:\n(.*)` over the decoded prompt + continuation
    scorers = {"rosa_exact": RegexExactMatch("rosa_exact", data.prompt_of, data.target_of,
                                             r"### Meaning representation:\n(.*)", 1)}

    def encoder(self, task, tokenizer):
        return text_encoder(tokenize_prompt_response, task, tokenizer)
