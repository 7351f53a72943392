"""GSM8K: extraction and numeric comparison on the real records, the training conversion, a tiny run."""

import pytest

from harness.config import compose
from harness.protocols.math import extract_gsm8k_answer, gsm8k_correct, gsm8k_gold, score
from harness.tasks import math as math_task
from harness.tasks.records import DataError, read_jsonl_records


@pytest.fixture(scope="module")
def gsm8k_test(data_dir):
    return read_jsonl_records(data_dir / "math" / "gsm8k" / "test.jsonl", ("question", "answer"))


def test_gold_answers_score_100_and_wrong_numbers_0(gsm8k_test):
    assert len(gsm8k_test) == 1319
    golds = [gsm8k_gold(r["answer"]) for r in gsm8k_test]
    right = [f"Let's see.\nThe answer is: {r['answer'].split('####')[-1].strip()}" for r in gsm8k_test]
    assert score(gsm8k_test, right)[0]["accuracy"] == 100.0  # commas such as 1,450,000 included
    wrong = [f"The answer is: {g + 1:.0f}" for g in golds]
    assert score(gsm8k_test, wrong)[0]["accuracy"] == 0.0


def test_extraction_follows_metamath():
    assert extract_gsm8k_answer("x = 3. The answer is: 18 dollars") == 18
    assert extract_gsm8k_answer("The answer is: 5\nThe answer is: 7") == 7  # the last marker
    assert extract_gsm8k_answer("The answer is: -12.0") == -12
    assert extract_gsm8k_answer("The answer is: 3/4") == 1
    assert extract_gsm8k_answer("The answer is: 1,450,000.") == 1450000
    assert extract_gsm8k_answer("The answer is: 3,4 and 5") == 3
    assert extract_gsm8k_answer("so 18 in total") is None
    assert not gsm8k_correct("The answer is: seventy", 70.0)


def test_training_conversion_keeps_the_answer(data_dir):
    records, _ = math_task.training_records(compose(["task=gsm8k", "task.train_subset=300"]).task, seed=0)
    assert len(records) == 300
    for r in records:
        assert "<<" not in r["response"] and "####" not in r["response"]
        assert extract_gsm8k_answer(r["response"]) is not None


def test_tokenize_masks_the_prompt(tokenizer, data_dir):
    record = math_task.gsm8k_to_metamath({"question": "What is 2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"})
    assert record["response"] == "2+3=5\nThe answer is: 5"
    ex = math_task.tokenize(record, tokenizer, 512, train_on_inputs=False)
    answer = [t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100]
    assert tokenizer.decode(answer).startswith("2+3=5") and answer[-1] == tokenizer.eos_token_id


def test_bad_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n')
    with pytest.raises(DataError, match=r"test.jsonl: line 2 lacks field\(s\) \['answer'\]"):
        read_jsonl_records(bad, ("question", "answer"))
