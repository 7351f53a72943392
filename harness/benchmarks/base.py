"""The interface every benchmark declares, and what its scorers share.

A benchmark is one package under `harness/benchmarks/` with one config `conf/task/<name>.yaml`: its data reading,
prompts, scoring and the short names its tables show. It subclasses `Benchmark`, registers an instance with
`@register`, and names its scorers (one per protocol it supports). `run.py`, the tables and the preflight
checks call only this interface; nothing outside the package knows a benchmark's internals.
"""

from __future__ import annotations

import random
import time
from typing import Callable, Mapping

from harness.errors import ConfigError, DataError


class Scorer:
    """One evaluation protocol of a benchmark (`protocol=<name>`): scores a model on the benchmark's test sets.

    Subclasses implement `score_set`; `evaluate` is the per-set loop every scorer shares (timer, seconds,
    progress line). A scorer that reads its own test data (lm-eval) sets `reads_own_test_data` and overrides
    `evaluate`."""

    name: str = ""
    #: bumped by a change that alters what this protocol computes (it enters the run id)
    behaviour_version: int = 1
    reads_own_test_data: bool = False
    #: the generation engines it can score with (`protocol.engine`, harness.engine): a scorer that generates only
    #: through harness.generation's greedy `generate` or `sample` adds "vllm"
    engines: tuple[str, ...] = ("hf",)

    def score_set(self, model, processor, name: str, records: list[dict], protocol: Mapping, task: Mapping,
                  progress: bool = False) -> tuple[dict, list[dict]]:
        """({"accuracy": the headline number x 100, "n", ...}, one prediction row per record)."""
        raise NotImplementedError

    def reference_rows(self, model, processor, name: str, records, limit: int, protocol: Mapping,
                       task: Mapping) -> list[dict]:
        """The prediction rows of the first `limit` records of set `name` as `model` gives them: what another
        engine's rows are compared with (harness.engine.agreement). No side files, no judge."""
        return self.score_set(model, processor, name, list(records or [])[:limit], protocol, task, False)[1]

    def check(self, protocol: Mapping, task: Mapping) -> None:
        """Raises a HarnessError for protocol settings that cannot work, before any training (preflight): a
        judge that needs the hub offline, say."""

    def headline_of_resamples(self, name: str, rows: list[dict], index):
        """The headline (x 100) on each resample of `rows` (`index`: a (resamples, n) array of row indices), for a
        scorer whose headline is a whole-set metric and can compute it for many resamples at once; None: the
        bootstrap recomputes `summarize` per resample."""
        return None

    def summarize(self, name: str, rows: list[dict]) -> dict:
        """A set's metrics from its prediction rows (what `score_set` returns beside them): accuracy over the
        rows' `correct`, unless the scorer's metric is another."""
        return accuracy_summary(rows)

    def evaluate(self, model, processor, test_sets: Mapping[str, list[dict]], protocol: Mapping, task: Mapping,
                 progress: bool = True) -> tuple[dict, dict]:
        """({set: metrics with their seconds}, {set: prediction rows}). With several processes each scores a
        shard of every set and all get the merged rows, in the set's order, and their metrics."""
        from harness import distributed

        metrics, predictions = {}, {}
        for name, records in test_sets.items():
            start = time.perf_counter()
            metrics[name], predictions[name] = self.score_set(model, processor, name, distributed.shard(records),
                                                              protocol, task, progress and distributed.is_main())
            if distributed.active():
                predictions[name] = distributed.merge_shards(distributed.gather(predictions[name]))
                metrics[name] = self.summarize(name, predictions[name])
            metrics[name]["seconds"] = round(time.perf_counter() - start, 2)
            if progress:
                print(f"[harness] {name}: {metrics[name].get('metric', 'accuracy')} {metrics[name]['accuracy']:.1f} "
                      f"on {metrics[name]['n']}", flush=True)
        return metrics, predictions


def accuracy_summary(rows: list[dict]) -> dict:
    n, correct = len(rows), sum(bool(r["correct"]) for r in rows)
    return {"accuracy": 100.0 * correct / n if n else float("nan"), "correct": correct, "n": n}


class Benchmark:
    """Training data, test sets, the model head and the scorers of one benchmark."""

    name: str = ""
    #: bumped by a change that alters the data a run trains or is tested on (a prompt, a split)
    behaviour_version: int = 1
    #: a new head's module names (a classifier), trained with every method and counted apart
    head_modules: tuple[str, ...] = ()
    #: test set -> the column name a table shows
    short_names: Mapping[str, str] = {}
    #: protocol name -> its scorer
    scorers: Mapping[str, Scorer] = {}

    #: the benchmark's data module: `data_sources(task)`, `training_records(task, seed)`, `test_sets(task)`
    data = None

    def data_sources(self, task: Mapping) -> list:
        """Every source the run reads (harness.provenance), checked for presence, before anything is read."""
        return self.data.data_sources(task)

    def training_records(self, task: Mapping, seed: int) -> tuple[list[dict], list[dict]]:
        return self.data.training_records(task, seed)

    def test_sets(self, task: Mapping) -> dict[str, list[dict]]:
        return self.data.test_sets(task)

    def data_note(self, task: Mapping) -> str | None:
        """A caption's words when a run did not read the paper's own data ("SQL: not RoSA's data (...)"), from the
        data module's `data_note(task)` where it has one; None otherwise."""
        note = getattr(self.data, "data_note", None)
        return note(task) if note is not None else None

    def encoder(self, task: Mapping, processor) -> Callable[[dict], dict]:
        """record -> training example (token ids and labels, or an image to process)."""
        raise NotImplementedError

    def training_examples(self, task: Mapping, processor, train_records: list[dict],
                          val_records: list[dict]) -> tuple[list[dict], list[dict]]:
        """(training examples, validation examples): every record encoded. A benchmark whose recipe selects its
        records by their token count (LoRA-GA's Code-Feedback-100K: the first 100K under 1,024 tokens) selects
        here, where the tokenizer is known."""
        encode = self.encoder(task, processor)
        return [encode(r) for r in train_records], [encode(r) for r in val_records]

    def collator(self, processor, task: Mapping, train: bool = True):
        """Batches of this benchmark's examples; None: the language-modelling collator (labels padded with -100)."""
        return None

    def model_head(self, task: Mapping) -> dict | None:
        """None: a causal LM; else {"kind": "sequence_classification" | "image_classification", "num_labels"}."""
        return None

    def scorer(self, protocol: str) -> Scorer:
        if protocol not in self.scorers:
            raise ConfigError(f"protocol={protocol!r} is not defined for task {self.name!r}; it has {sorted(self.scorers)}")
        return self.scorers[protocol]

    def short_name(self, dataset: str) -> str:
        return self.short_names.get(dataset, dataset)

    def semantic_task(self, task: dict) -> dict:
        """The part of the (resolved) task config that determines a run's result, for its run id. A benchmark
        whose config lists alternatives the run does not use (image sets) drops them here, so adding one does
        not change the id of every run."""
        return task


def text_encoder(tokenize, task: Mapping, tokenizer):
    """The encoder of a text benchmark from its `tokenize(record, tokenizer, cutoff_len, train_on_inputs,
    add_eos_token)` and the task config's truncation and masking choices."""
    cutoff, inputs, eos = int(task["cutoff_len"]), bool(task["train_on_inputs"]), bool(task["add_eos_token"])
    return lambda record: tokenize(record, tokenizer, cutoff, inputs, eos)


TEST_SUBSET_MODES = ("first", "sample")


def test_subset(records: list, task: Mapping) -> list:
    """`task.test_subset` records of a test set: the first N (`task.test_subset_mode: first`, the default, as
    lm-eval's `limit`), or a fixed random sample of N (`sample`, seed 0, the same for every run: for splits
    ordered by class)."""
    limit, mode = task.get("test_subset"), task.get("test_subset_mode", "first")
    if mode not in TEST_SUBSET_MODES:
        raise ConfigError(f"task.test_subset_mode={mode!r}: use one of {list(TEST_SUBSET_MODES)}")
    if limit is None or int(limit) >= len(records):
        return list(records)
    if int(limit) < 1:
        raise DataError(f"task.test_subset={limit} must be >= 1 or null")
    if mode == "first":
        return list(records[: int(limit)])
    keep = sorted(random.Random(0).sample(range(len(records)), int(limit)))
    return [records[i] for i in keep]
