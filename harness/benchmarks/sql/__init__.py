"""Text-to-SQL (b-mc2/sql-create-context): RoSA's SQL column, scored by RoSA's exact match (`rosa_exact`)."""

from __future__ import annotations

from harness.benchmarks import register
from harness.benchmarks.base import Benchmark, text_encoder
from harness.benchmarks.exact_match import RegexExactMatch
from harness.benchmarks.records import tokenize_prompt_response
from harness.benchmarks.sql import data


@register
class SQL(Benchmark):
    name = "sql"
    data = data
    short_names = {"sql": "SQL"}
    # 2: task.source (RoSA's own files or the hub), and no training record with a test record's question
    behaviour_version = 2
    # sql_eval.py: `SELECT (.*)` over the decoded prompt + continuation, the whole match (SELECT included)
    scorers = {"rosa_exact": RegexExactMatch("rosa_exact", data.prompt_of, data.target_of, r"SELECT (.*)", 0)}

    def encoder(self, task, tokenizer):
        return text_encoder(tokenize_prompt_response, task, tokenizer)
