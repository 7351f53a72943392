"""Reference harness for reproducing parameter-efficient fine-tuning results.

The data path of one run reads top to bottom:
config (`harness.config`) -> model (`harness.models`) -> method (`harness.methods`) -> train (`harness.train`)
-> benchmark and its scorer (`harness.benchmarks`) -> result (`harness.results`) -> table (`harness.tables`).
"""

__version__ = "0.1.0"
