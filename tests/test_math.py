"""GSM8K: extraction and numeric comparison on the real records, the training conversion, a tiny run."""

import json

import pytest

from harness.benchmarks.math import data as math_task
from harness.benchmarks.math.answers import extract_gsm8k_answer, gsm8k_correct, gsm8k_gold, score_gsm8k
from harness.benchmarks.records import DataError, read_jsonl_records
from harness.config import compose


@pytest.fixture(scope="module")
def gsm8k_test(data_dir):
    return read_jsonl_records(data_dir / "math" / "gsm8k" / "test.jsonl", ("question", "answer"))


def test_gold_answers_score_100_and_wrong_numbers_0(gsm8k_test):
    assert len(gsm8k_test) == 1319
    golds = [gsm8k_gold(r["answer"]) for r in gsm8k_test]
    right = [f"Let's see.\nThe answer is: {r['answer'].split('####')[-1].strip()}" for r in gsm8k_test]
    assert score_gsm8k(gsm8k_test, right)[0]["accuracy"] == 100.0  # commas such as 1,450,000 included
    wrong = [f"The answer is: {g + 1:.0f}" for g in golds]
    assert score_gsm8k(gsm8k_test, wrong)[0]["accuracy"] == 0.0


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
        assert r["prompt"].startswith("Below is an instruction") and r["prompt"].endswith("### Response:")  # no newline: MetaMath / MiLoRA train.py


def test_rosa_format_trains_the_bare_question_then_the_original_answer(tokenizer, data_dir):
    task = compose(["task=gsm8k", "task.train_format=rosa", "task.train_subset=50"]).task
    records, _ = math_task.training_records(task, seed=0)
    assert all("####" in r["response"] and not r["prompt"].startswith("Below") for r in records)
    record = records[0]
    ex = math_task.tokenize(record, tokenizer, 1024, train_on_inputs=False)
    question, answer_ids = tokenizer(record["prompt"])["input_ids"], tokenizer(record["response"])["input_ids"]
    # question and answer tokenized as two sequences, each with the tokenizer's special tokens (llm-foundry's
    # text / text_target: a BOS before the answer on LLaMA), then EOS
    assert ex["input_ids"] == question + answer_ids + [tokenizer.eos_token_id]
    answer = [t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100]
    assert tokenizer.decode(answer[:-1]) == record["response"] and answer[-1] == tokenizer.eos_token_id
    with pytest.raises(DataError, match="train_format='alpaca'"):
        math_task.training_records(compose(["task=gsm8k", "task.train_format=alpaca"]).task, seed=0)


def test_tokenize_masks_the_prompt(tokenizer, data_dir):
    converted = math_task.gsm8k_to_metamath({"question": "What is 2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"})
    assert converted["response"] == "2+3=5\nThe answer is: 5"
    record = {"prompt": math_task.TRAIN_TEMPLATE.format(query=converted["query"]), "response": converted["response"]}
    ex = math_task.tokenize(record, tokenizer, 512, train_on_inputs=False)
    answer = [t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100]
    assert tokenizer.decode(answer).startswith("2+3=5") and answer[-1] == tokenizer.eos_token_id


def test_bad_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n')
    with pytest.raises(DataError, match=r"test.jsonl: line 2 lacks field\(s\) \['answer'\]"):
        read_jsonl_records(bad, ("question", "answer"))


@pytest.mark.parametrize("a,b", [
    ("\\frac{1}{2}", "\\dfrac12"), ("\\tfrac{3}{4}", "\\frac34"), ("0.5", "\\frac{1}{2}"), ("1/2", "\\frac{1}{2}"),
    ("5\\text{ cm}", "5"), ("10\\%", "10"), ("90^\\circ", "90"), ("\\$18", "18"), ("x = 5", "5"),
    ("(-\\infty, 3]", "\\left(-\\infty,3\\right]"), ("[1, 2) \\cup (2, 5]", "[1,2)\\cup(2,5]"),
    ("\\sqrt2", "\\sqrt{2}"), ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt3}{2}"), (".75", "0.75"), ("3 \\sqrt{5}", "3\\sqrt{5}"),
])
def test_math_answers_that_are_equivalent(a, b):
    from harness.benchmarks.math.answers import math_equiv

    assert math_equiv(a, b) and math_equiv(b, a)


@pytest.mark.parametrize("a,b", [
    ("\\frac{1}{3}", "\\frac{1}{2}"), ("[1, 3)", "(1, 3]"), ("(-\\infty, 3)", "(-\\infty, 3]"), ("2", "-2"),
    ("\\sqrt{2}", "2"), ("5", None), ("12", "1.2"), ("x^2+1", "x^2-1"), ("\\frac{x}{2}", "x/2"),
    # a non-integer a/b makes MetaMath's normalisation fail, and the answers are then compared as written
    ("x = \\pi/2", "\\pi/2"), ("\\pi / 2", "\\pi/2"), ("\\left( 1/2, 3\\right)", "(1/2,3)"),
])
def test_math_answers_that_differ(a, b):
    from harness.benchmarks.math.answers import math_equiv

    assert not math_equiv(a, b)


def test_math_gold_is_the_last_boxed_and_predictions_follow_the_marker():
    from harness.benchmarks.math.answers import cut_at_stop, extract_math_answer, math_correct, math_gold

    solution = "First $\\boxed{3}$ is wrong; in all, $\\boxed{\\frac{\\{1, 2\\}}{3}}$."
    assert math_gold(solution) == "\\frac{\\{1, 2\\}}{3}"
    assert math_gold("so the answer is $\\boxed 7$.") == "7"
    with pytest.raises(ValueError, match="without"):
        math_gold("no box here")
    assert extract_math_answer("We get 2.\nThe answer is: \\dfrac{1}{2}.") == "\\dfrac{1}{2}"
    assert extract_math_answer("The answer is: 4.\nSo we are done.") == "4"
    assert extract_math_answer("so it is 4") is None
    stops = compose(["protocol=math_greedy"]).protocol.stop_strings
    assert cut_at_stop(" x = 2.\nThe answer is: 2\n\n### Instruction:\nMore", stops) == " x = 2.\nThe answer is: 2\n\n### "
    assert math_correct("The answer is: 0.5", "Thus $\\boxed{\\frac12}$.")
    assert not math_correct("The answer is: 0.6", "Thus $\\boxed{\\frac12}$.")


def test_math_test_set_from_a_local_file_scores_its_gold_answers(tmp_path):
    from harness.benchmarks.math.answers import score_math

    records = [{"problem": "1+1?", "solution": "It is $\\boxed{2}$."},
               {"problem": "Half?", "solution": "$\\boxed{\\dfrac{1}{2}}$"},
               {"problem": "Interval?", "solution": "$\\boxed{\\left[0, 1\\right)}$"}]
    path = tmp_path / "MATH" / "test.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    task = compose(["task=gsm8k", "task.datasets=[gsm8k,MATH]", f"task.data_dir={tmp_path}"]).task
    sets = math_task.test_sets(task)  # gsm8k is absent from tmp_path: left out, not an error
    assert list(sets) == ["MATH"] and len(sets["MATH"]) == 3
    gold = ["The answer is: 2", "The answer is: 0.5", "The answer is: [0,1)"]
    assert score_math(sets["MATH"], gold)[0]["accuracy"] == 100.0
    assert score_math(sets["MATH"], ["The answer is: 3", "The answer is: 1/3", "The answer is: [0,1]"])[0]["correct"] == 0
    with pytest.raises(DataError, match="unknown math test set 'SVAMP'"):
        math_task.test_sets(compose(["task=gsm8k", "task.datasets=[SVAMP]"]).task)


def test_a_hub_test_set_fails_fast_offline(monkeypatch):
    from harness.offline import HubUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = compose(["task=gsm8k", "task.datasets=[MATH]", "task.test_files.MATH=someone/MATH"]).task
    with pytest.raises(HubUnavailableError, match="someone/MATH"):
        math_task.test_sets(task)


def test_milora_scores_gsm8k_with_its_numeric_fallback_and_its_own_settings():
    from harness import benchmarks
    from harness.benchmarks.math.answers import numeric_match, score_gsm8k

    records = [{"question": "q", "answer": "so #### 50"}, {"question": "q", "answer": "so #### 7"}]
    completions = ["The answer is: 5000", "The answer is: 7"]  # 50 written as a percentage (x 100), then exact
    assert score_gsm8k(records, completions)[0]["correct"] == 1                      # MetaMath: exact only
    assert score_gsm8k(records, completions, numeric_fallback=True)[0]["correct"] == 2  # MiLoRA: math_equal too
    assert numeric_match(0.5, 50) and numeric_match(50.004, 50) and not numeric_match(51, 50)
    milora = compose(["task=gsm8k", "protocol=math_milora"]).protocol
    assert milora.max_new_tokens == 1024 and milora.max_new_tokens_per_set.MATH == 2048 and milora.numeric_fallback
    assert list(milora.stop_strings) == ["Instruction:", "Instruction", "Response:", "Response"]
    metamath = compose(["task=gsm8k", "protocol=math_greedy"]).protocol
    assert metamath.max_new_tokens == 512 and len(metamath.stop_strings) == 10 and not metamath.numeric_fallback
    assert benchmarks.get("math").scorer("math_milora").name == "math_milora"
