"""Training data: real files, LLM-Adapters tokenisation, and clear errors on bad files."""

import json

import pytest

from harness.benchmarks.commonsense import data as commonsense
from harness.benchmarks.records import DataError
from harness.config import compose


def task_cfg(**overrides):
    return compose([f"task.{k}={v}" for k, v in overrides.items()]).task


def test_training_records_from_real_splits_are_seeded(data_dir):
    train, val = commonsense.training_records(task_cfg(train_subset=50, val_set_size=10), seed=3)
    assert len(train) == 40 and len(val) == 10
    again, _ = commonsense.training_records(task_cfg(train_subset=50, val_set_size=10), seed=3)
    assert train == again
    other, _ = commonsense.training_records(task_cfg(train_subset=50, val_set_size=10), seed=4)
    assert other != train


def test_test_sets_take_a_fixed_prefix_and_skip_absent_sets(data_dir, capsys):
    sets = commonsense.test_sets(task_cfg(test_subset=7))
    assert set(sets) == {"boolq", "piqa", "ARC-Easy", "ARC-Challenge", "openbookqa"}
    full = json.loads((data_dir / "commonsense" / "piqa" / "test.json").read_text())
    assert sets["piqa"] == full[:7]
    assert "hellaswag" in capsys.readouterr().out
    with pytest.raises(DataError, match="test set 'social_i_qa' not found.*missing_ok=false"):
        commonsense.test_sets(task_cfg(missing_ok=False))


def test_tokenize_masks_the_prompt_only_when_asked(tokenizer):
    record = {"instruction": "Is the sky blue?", "input": "", "output": "the correct answer is true", "answer": "true"}
    full = commonsense.tokenize(record, tokenizer, 256, train_on_inputs=True)
    assert full["labels"] == full["input_ids"] and full["input_ids"][-1] == tokenizer.eos_token_id
    masked = commonsense.tokenize(record, tokenizer, 256, train_on_inputs=False)
    assert masked["input_ids"] == full["input_ids"]
    n_prompt = sum(1 for x in masked["labels"] if x == -100)
    answer_ids = masked["input_ids"][n_prompt:]
    assert "the correct answer is true" in tokenizer.decode(answer_ids)
    assert n_prompt > 20
    short = commonsense.tokenize(record, tokenizer, 8, train_on_inputs=True)
    assert len(short["input_ids"]) == 8 and short["input_ids"][-1] != tokenizer.eos_token_id


def test_bad_training_file_names_the_file_and_record(tmp_path):
    bad = tmp_path / "train.json"
    bad.write_text('[{"instruction": "x", "output": "y"}, {"instruction": "no output"}]')
    with pytest.raises(DataError, match=r"train.json: record 1 lacks field\(s\) \['output'\]"):
        commonsense.training_records(task_cfg(train_file=str(bad), val_set_size=0), seed=0)
    bad.write_text("[{")
    with pytest.raises(DataError, match="train.json: not valid JSON"):
        commonsense.training_records(task_cfg(train_file=str(bad), val_set_size=0), seed=0)
    with pytest.raises(DataError, match="no training data"):
        commonsense.training_records(task_cfg(data_dir=str(tmp_path)), seed=0)


def test_unknown_task_or_protocol_is_named():
    from harness import benchmarks

    with pytest.raises(ValueError, match=r"task.name='nope': no benchmark of that name; known: \['code', 'commonsense', 'glue', 'image', 'instruct', 'math', 'sql', 'viggo'\]"):
        benchmarks.get("nope")
    with pytest.raises(ValueError, match="protocol='glue_dev' is not defined for task 'commonsense'; it has \\['lmeval', 'paper_gen'\\]"):
        benchmarks.get("commonsense").scorer("glue_dev")
