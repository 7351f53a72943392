"""MiLoRA Table 5's GSM8K column as LoRA-GA, whose numbers it cites, trains and scores it: MetaMathQA's GSM records
in the "Q: ... A: " format, the first records under a token limit, one sampled answer read after "####"."""

import pytest
import torch
from written_records import METAMATHQA, write_json  # tests/written_records.py

from harness import benchmarks
from harness.benchmarks.math.loraga import hash_answer
from harness.config import compose

LORAGA = ["task=gsm8k", "task.train_format=loraga", "+task.max_tokens=512"]


def test_metamathqa_keeps_its_gsm_records_cut_before_the_answer_marker(tmp_path):
    path = write_json(tmp_path / "metamathqa.json", METAMATHQA)
    task = compose([*LORAGA, f"task.train_file={path}"]).task
    (record,), val = benchmarks.get("math").training_records(task, seed=0)
    assert val == [] and record["prompt"] == f"Q: {METAMATHQA[0]['query']}\nA: "
    assert record["response"] == (" Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in "
                                  "April and May.\n#### 72")


def test_gsm8k_offline_trains_in_loragas_format_on_the_first_records_under_the_limit(data_dir, tokenizer):
    task = compose([*LORAGA, "task.train_subset=3"]).task
    math = benchmarks.get("math")
    train, _ = math.training_records(task, seed=0)
    assert len(train) == 7473 and train[0]["prompt"].startswith("Q: Natalia sold clips")  # the file's order
    assert train[0]["response"].startswith(" Natalia sold 48/2 = <<48/2=24>>24") and train[0]["response"].endswith("#### 72")
    examples, _ = math.training_examples(task, tokenizer, train, [])
    assert len(examples) == 3 and examples[0]["input_ids"][-1] == tokenizer.eos_token_id
    lengths = [len(tokenizer(r["prompt"] + r["response"])["input_ids"]) for r in train[:3]]
    limit = sorted(lengths)[1]  # drops the two longest of the first three
    (kept,), _ = math.training_examples({**task, "max_tokens": limit, "train_subset": 1}, tokenizer, train, [])
    first_short = next(r for r, n in zip(train, lengths) if n < limit)
    assert kept["input_ids"][:-1] == tokenizer(first_short["prompt"] + first_short["response"])["input_ids"]
    # LoRA-GA's hold-out: the records after the first train_subset (its 10K after the 100K)
    trained, held = math.training_examples({**task, "train_subset": 2, "val_set_size": 1}, tokenizer, train, [])
    assert [e["input_ids"] for e in trained + held] == [e["input_ids"] for e in examples]


def test_the_answer_is_the_integer_after_the_first_hashes_as_lora_ga_reads_it():
    assert hash_answer("so 5 + 7 = 12\n#### 12\n#### 13") == 12
    assert hash_answer("#### 1,000") == 1       # its digits stop at the comma
    assert hash_answer("The answer is: 12") == 0  # none: 0, as eval_gsm8k.py's extract_num


def test_a_model_is_scored_on_one_sampled_answer_and_the_random_streams_are_left_alone(data_dir, tiny_model, tokenizer):
    cfg = compose([*LORAGA, "protocol=gsm8k_loraga", "task.test_subset=2", "protocol.max_new_tokens=4"])
    math = benchmarks.get("math")
    sets = math.test_sets(cfg.task)
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    metrics, rows = math.scorer("gsm8k_loraga").evaluate(tiny_model, tokenizer, sets, cfg.protocol, cfg.task, False)
    assert torch.equal(torch.rand(2), expected)
    assert metrics["gsm8k"]["n"] == 2 and [r["answer"] for r in rows["gsm8k"]] == [18, 3]  # GSM8K test's first two
    assert all(isinstance(r["prediction"], int) for r in rows["gsm8k"])
