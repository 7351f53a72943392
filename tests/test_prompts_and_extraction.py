"""The paper_gen protocol's strings and answer extraction, on the real commonsense records."""

import json

import pytest

from harness.benchmarks.commonsense.paper_gen import extract_answer, score
from harness.benchmarks.commonsense.prompts import eval_prompt, response_of, train_prompt

SETS = ["boolq", "piqa", "ARC-Easy", "ARC-Challenge", "openbookqa"]


def test_training_prompt_byte_for_byte():
    assert train_prompt("Pick one.", "", "the correct answer is true") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n\n"
        "                ### Instruction:\n"
        "                Pick one.\n"
        "                \n"
        "                ### Response:\n"
        "                the correct answer is true"
    )


def test_evaluation_prompt_byte_for_byte():
    assert eval_prompt("Pick one.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n\n"
        "                ### Instruction:\n"
        "                Pick one.\n\n"
        "                ### Response:\n"
        "                "
    )


def test_prompts_with_input_add_an_input_block():
    text = train_prompt("Do it.", "some context", "ok")
    assert "paired with an input" in text
    assert "                ### Input:\n                some context\n                \n                ### Response:\n                ok" in text
    assert eval_prompt("Do it.", "ctx").endswith("### Input:\n                ctx\n\n                ### Response:\n                ")
    # the original's headers with an input: one space after "request." in training, none in evaluation
    assert train_prompt("Do it.", "ctx", "ok").startswith("Below is an instruction that describes a task, paired with an "
                                                          "input that provides further context. Write a response that "
                                                          "appropriately completes the request. \n\n")
    assert eval_prompt("Do it.", "ctx").split("\n")[0].endswith("completes the request.")


def test_response_is_split_after_the_prompt():
    decoded = eval_prompt("Q?") + "the correct answer is answer2"
    assert response_of(decoded) == "the correct answer is answer2"
    assert response_of("no marker here") == ""


@pytest.mark.parametrize("name", SETS)
def test_gold_outputs_of_real_records_extract_to_their_answer(data_dir, name):
    records = json.loads((data_dir / "commonsense" / name / "test.json").read_text())
    assert len(records) > 100
    for r in records:
        assert extract_answer(name, r["output"]) == r["answer"], r
    metrics, _ = score(name, records, [eval_prompt(r["instruction"]) + r["output"] for r in records])
    assert metrics["accuracy"] == 100.0 and metrics["n"] == len(records)


def test_first_match_wins_and_no_match_is_wrong():
    assert extract_answer("boolq", "false, or maybe true") == "false"
    assert extract_answer("piqa", "solution2 then solution1") == "solution2"
    assert extract_answer("hellaswag", "I pick ending3") == "ending3"
    assert extract_answer("winogrande", "option2") == "option2"
    assert extract_answer("social_i_qa", "answer5 is it") == "answer5"
    assert extract_answer("boolq", "True") == ""  # case-sensitive, as the original
    assert extract_answer("ARC-Easy", "I do not know") == ""
    with pytest.raises(ValueError, match="no answer pattern"):
        extract_answer("mmlu", "A")


def test_wrong_answers_score_zero(data_dir):
    records = json.loads((data_dir / "commonsense" / "boolq" / "test.json").read_text())[:50]
    flipped = ["the correct answer is " + ("false" if r["answer"] == "true" else "true") for r in records]
    metrics, predictions = score("boolq", records, [eval_prompt(r["instruction"]) + f for r, f in zip(records, flipped)])
    assert metrics["accuracy"] == 0.0 and not any(p["correct"] for p in predictions)
