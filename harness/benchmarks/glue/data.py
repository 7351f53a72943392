"""GLUE (Neat Table 3): sentence(-pair) classification and STS-B regression with a trained head.

One GLUE task per run (each has its own head): `task.dataset` names it. Records: `text_a`, `text_b` (or None)
and `label` (int, or float for STS-B). Sources: the GLUE distribution's TSV files under
`<data_dir>/glue/<dir>/{train,dev}.tsv` where present (SST-2, CoLA, RTE here), else the hub's `nyu-mll/glue`
(train / validation; MNLI's matched validation), which fails fast offline.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from harness.benchmarks.base import test_subset
from harness.benchmarks.records import read_hub_records, subset_and_split
from harness.errors import DataError
from harness.provenance import Hub, LocalFile

HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueSet:
    directory: str                        # under <data_dir>/glue
    hub_config: str
    fields: tuple[str, str | None]        # hub columns of text_a / text_b
    tsv_columns: tuple[str, str | None, str] | None  # header names of text_a / text_b / label; None: CoLA's headerless file
    num_labels: int                       # 1: regression
    metric: str                           # the number a table shows
    dev_split: str = "validation"
    dev_file: str = "dev.tsv"

    def label(self, raw):
        """A label as the head trains on it: a float for regression (STS-B), else a class index."""
        return float(raw) if self.num_labels == 1 else int(raw)


GLUE_SETS = {
    "sst2": GlueSet("SST-2", "sst2", ("sentence", None), ("sentence", None, "label"), 2, "accuracy"),
    "cola": GlueSet("CoLA", "cola", ("sentence", None), None, 2, "matthews"),
    "rte": GlueSet("RTE", "rte", ("sentence1", "sentence2"), ("sentence1", "sentence2", "label"), 2, "accuracy"),
    "mrpc": GlueSet("MRPC", "mrpc", ("sentence1", "sentence2"), ("#1 String", "#2 String", "Quality"), 2, "accuracy"),
    "stsb": GlueSet("STS-B", "stsb", ("sentence1", "sentence2"), ("sentence1", "sentence2", "score"), 1, "pearson"),
    "qnli": GlueSet("QNLI", "qnli", ("question", "sentence"), ("question", "sentence", "label"), 2, "accuracy"),
    "qqp": GlueSet("QQP", "qqp", ("question1", "question2"), ("question1", "question2", "is_duplicate"), 2, "accuracy"),
    "mnli": GlueSet("MNLI", "mnli", ("premise", "hypothesis"), ("sentence1", "sentence2", "gold_label"), 3, "accuracy",
                    "validation_matched", "dev_matched.tsv"),
}
# GLUE's label order for the string labels of the TSV files (the hub's integer labels use the same order).
STRING_LABELS = {"rte": {"entailment": 0, "not_entailment": 1}, "qnli": {"entailment": 0, "not_entailment": 1},
                 "mnli": {"entailment": 0, "neutral": 1, "contradiction": 2}}


def glue_set(task: Mapping) -> GlueSet:
    name = task.get("dataset")
    if name not in GLUE_SETS:
        raise DataError(f"task.dataset={name!r}: not a GLUE task; use one of {sorted(GLUE_SETS)}")
    return GLUE_SETS[name]


def _label(name: str, raw: str, where: str):
    if name in STRING_LABELS and raw in STRING_LABELS[name]:
        return STRING_LABELS[name][raw]
    try:
        return GLUE_SETS[name].label(raw)
    except ValueError:
        raise DataError(f"{where}: label {raw!r} is not valid for {name}") from None


def read_glue_tsv(path: Path, name: str) -> list[dict]:
    """A GLUE TSV file: CoLA without a header (source, label, mark, sentence); the others with one."""
    spec = GLUE_SETS[name]
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # MRPC's header may start with a BOM
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text ({exc.reason}); not a GLUE TSV file") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a TSV file ({exc})") from None
    if not rows:
        raise DataError(f"{path}: empty file")
    records = []
    if spec.tsv_columns is None:  # CoLA
        for i, row in enumerate(rows, 1):
            if len(row) != 4:
                raise DataError(f"{path}: line {i} has {len(row)} columns, CoLA has 4 (source, label, mark, sentence)")
            records.append({"text_a": row[3], "text_b": None, "label": _label(name, row[1], f"{path}: line {i}")})
        return records
    header = rows[0]
    a_col, b_col, label_col = spec.tsv_columns
    wanted = [c for c in (a_col, b_col, label_col) if c]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise DataError(f"{path}: header {header} lacks column(s) {missing}")
    idx = {c: header.index(c) for c in wanted}
    for i, row in enumerate(rows[1:], 2):
        if len(row) < len(header):
            raise DataError(f"{path}: line {i} has {len(row)} columns, the header has {len(header)}")
        records.append({"text_a": row[idx[a_col]], "text_b": row[idx[b_col]] if b_col else None,
                        "label": _label(name, row[idx[label_col]], f"{path}: line {i}")})
    return records


def _source(task: Mapping, split: str):
    spec = glue_set(task)
    path = Path(task["data_dir"]) / spec.directory / ("train.tsv" if split == "train" else spec.dev_file)
    role = "train" if split == "train" else f"test/{task['dataset']}"
    if path.is_file():
        return LocalFile(role, path)
    return Hub(role, HUB_DATASET, "dataset", spec.hub_config, "train" if split == "train" else spec.dev_split)


def data_sources(task: Mapping) -> list:
    """The TSV files of the GLUE distribution where present, else the hub's splits (provenance.Source)."""
    return [_source(task, "train"), _source(task, "dev")]


def _read(task: Mapping, split: str) -> list[dict]:
    spec = glue_set(task)
    name = task["dataset"]
    source = _source(task, split)
    if isinstance(source, LocalFile):
        return read_glue_tsv(source.path, name)
    rows = read_hub_records(f"{HUB_DATASET}:{spec.hub_config}", split=source.split, what=f"GLUE {name}")
    a, b = spec.fields
    return [{"text_a": r[a], "text_b": r[b] if b else None, "label": spec.label(r["label"])} for r in rows]


def training_records(task: Mapping, seed: int) -> tuple[list[dict], list[dict]]:
    return subset_and_split(_read(task, "train"), task, seed)


def test_sets(task: Mapping) -> dict[str, list[dict]]:
    return {task["dataset"]: test_subset(_read(task, "dev"), task)}


def model_head(task: Mapping) -> dict:
    """What the model loader puts on top of the encoder."""
    return {"kind": "sequence_classification", "num_labels": glue_set(task).num_labels}


def tokenize(record: Mapping, tokenizer, cutoff_len: int, train_on_inputs: bool = False, add_eos_token: bool = False) -> dict:
    encoded = tokenizer(record["text_a"], record["text_b"], truncation=True, max_length=cutoff_len)
    return {**encoded, "labels": record["label"]}  # token_type_ids too, where the model has them (BERT)


def collator(tokenizer, task_cfg=None):
    """Pads a batch of variable-length examples; labels are one number per example."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
