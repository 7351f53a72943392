"""Instruction following (MiLoRA Table 3): open-instruct's Tulu chat format, UltraFeedback-style chat records,
AlpacaEval outputs in alpaca_eval's format with the judge run only when configured, IFEval through lm-eval, the
hub ids failing fast offline."""

import json

import pandas as pd
import math

import pytest
from written_records import ALPACA_EVAL, CHATS, IFEVAL, write_json, write_jsonl  # tests/written_records.py

from harness import benchmarks
from harness.benchmarks.instruct.data import TULU_CHAT_TEMPLATE, tulu_format
from harness.config import compose


def test_the_tulu_format_and_its_chat_template_agree(tokenizer):
    messages = CHATS[1]["messages"]
    text = tulu_format(messages, eos="</s>")
    assert text == ("<|system|>\nYou are terse.\n<|user|>\nSay hello in French.\n<|assistant|>\nBonjour.</s>\n"
                    "<|user|>\nAnd in Spanish?\n<|assistant|>\nHola.</s>\n<|assistant|>\n")
    from jinja2 import Template

    rendered = Template(TULU_CHAT_TEMPLATE).render(messages=messages[:2], eos_token="</s>", add_generation_prompt=True)
    assert rendered == tulu_format(messages[:2])


def test_chat_records_train_on_the_last_assistant_turn(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "chats.jsonl", CHATS)
    task = compose(["task=instruct", f"task.train_file={path}"]).task
    instruct = benchmarks.get("instruct")
    train, _ = instruct.training_records(task, seed=0)
    by_response = {r["response"]: r for r in train}
    assert set(by_response) == {"Red is a primary colour.", "Hola."}
    assert by_response["Hola."]["prompt"].endswith("Bonjour.\n<|user|>\nAnd in Spanish?\n<|assistant|>\n")
    example = instruct.encoder(task, tokenizer)(by_response["Hola."])
    supervised = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    assert tokenizer.decode(supervised[:-1]).strip() == "Hola." and supervised[-1] == tokenizer.eos_token_id


def test_alpaca_eval_outputs_are_written_and_the_judge_is_not_faked(tmp_path, tiny_model, tokenizer):
    path = write_json(tmp_path / "alpaca_eval.json", ALPACA_EVAL)
    cfg = compose(["task=instruct", "protocol=instruct", "task.datasets=[alpaca_eval]",
                   f"task.test_files.alpaca_eval={path}", "protocol.alpaca_eval.max_new_tokens=3"])
    instruct = benchmarks.get("instruct")
    sets = instruct.test_sets(cfg.task)
    metrics, rows = instruct.scorer("instruct").evaluate(tiny_model, tokenizer, sets, cfg.protocol, cfg.task, False)
    summary = metrics["alpaca_eval"]
    assert summary["metric"] == "judge not run" and math.isnan(summary["accuracy"]) and summary["n"] == 2
    assert [r["instruction"] for r in rows["alpaca_eval"]] == [r["instruction"] for r in ALPACA_EVAL]
    assert all(r["generator"] == "harness" and r["alpaca_dataset"] == "helpful_base" for r in rows["alpaca_eval"])
    judged = compose(["task=instruct", "protocol=instruct", "protocol.alpaca_eval.annotators_config=weighted_alpaca_eval_gpt4_turbo",
                      "protocol.alpaca_eval.max_new_tokens=1"])
    try:
        import alpaca_eval  # noqa: F401
    except ImportError:
        with pytest.raises(benchmarks.base.ConfigError, match="alpaca_eval package is not installed"):
            instruct.scorer("instruct").alpaca.evaluate(tiny_model, tokenizer, {"alpaca_eval": sets["alpaca_eval"][:1]},
                                                        judged.protocol, judged.task, False)


def test_the_hub_ids_fail_fast_offline():
    from harness.offline import HubUnavailableError

    task = compose(["task=instruct"]).task
    repos = [s.repo for s in benchmarks.get("instruct").data_sources(task)]
    assert repos == ["HuggingFaceH4/ultrafeedback_binarized", "tatsu-lab/alpaca_eval"]
    with pytest.raises(HubUnavailableError, match="tatsu-lab/alpaca_eval.*task.test_files.alpaca_eval=/path"):
        benchmarks.get("instruct").test_sets(task)


def ifeval_scores_offline() -> str | None:
    """Why lm-eval's ifeval cannot score here, or None: its checks need langdetect, immutabledict and nltk's punkt
    tokenizer data, which nltk downloads from the network."""
    try:
        from lm_eval.tasks.ifeval import instructions_util

        instructions_util.count_sentences("One. Two.")
    except Exception as exc:  # (nltk raises LookupError without its data, ImportError without the packages)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip().strip("*")]
        return f"lm-eval's ifeval cannot run here: {type(exc).__name__}: {(lines or [''])[0][:120]}"
    return None


@pytest.mark.skipif(ifeval_scores_offline() is not None, reason=str(ifeval_scores_offline()))
def test_ifeval_scores_through_lm_eval_in_the_chat_format(tmp_path, tiny_model, tokenizer):
    path = write_jsonl(tmp_path / "ifeval.jsonl", IFEVAL)
    cfg = compose(["task=instruct", "protocol=instruct", "task.datasets=[ifeval]", "protocol.max_gen_toks=4",
                   f"+protocol.local_files.ifeval.test={path}"])
    metrics, _ = benchmarks.get("instruct").scorer("instruct").evaluate(tiny_model, tokenizer, {}, cfg.protocol,
                                                                        cfg.task, False)
    assert metrics["ifeval"]["metric"] == "prompt_level_strict_acc" and metrics["ifeval"]["n"] == 2
    assert "inst_level_loose_acc" in metrics["ifeval"]
    assert tokenizer.chat_template is None or "<|assistant|>" not in tokenizer.chat_template  # restored


@pytest.mark.slow
def test_an_instruction_run_writes_alpaca_eval_outputs_and_a_local_judge_scores_them(tmp_path, capsys):
    from harness.benchmarks.instruct.alpaca import main
    from harness.run import run_one

    chats = write_jsonl(tmp_path / "chats.jsonl", CHATS * 4)
    alpaca = write_json(tmp_path / "alpaca_eval.json", ALPACA_EVAL)
    record = run_one(compose(["model=tiny-llama", "task=instruct", "protocol=instruct", "method=lora", "method.r=2",
                              "task.datasets=[alpaca_eval]", f"task.train_file={chats}",
                              f"task.test_files.alpaca_eval={alpaca}", "protocol.alpaca_eval.max_new_tokens=3",
                              "training.micro_batch_size=4", "training.batch_size=4", "training.max_steps=1",
                              "training.warmup_steps=0", "meta.run.progress=false", f"meta.run.results_dir={tmp_path}"]))
    assert record["status"] == "finished"
    assert record["eval"]["metrics"]["alpaca_eval"]["metric"] == "judge not run"
    run_id = record["run"]["id"]
    assert main([run_id, f"meta.run.results_dir={tmp_path}"]) == 0
    outputs = json.loads((tmp_path / "runs" / f"{run_id}.alpaca_eval.json").read_text())
    assert [sorted(o) for o in outputs] == [["dataset", "generator", "instruction", "output"]] * 2
    assert {o["generator"] for o in outputs} == {run_id} and outputs[0]["dataset"] == "helpful_base"

    # the judge: alpaca_eval's own pairwise evaluation, a local model (SmolLM2-135M-Instruct) as its annotator,
    # against reference outputs on disk; printed as the run's AlpacaEval metrics
    assert main([run_id, f"meta.run.results_dir={tmp_path}", "local_judge=smollm2-135m", "metric=win_rate",
                 f"reference_outputs={alpaca}"]) == 0
    judged = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert judged["metric"] == "win_rate" and judged["n"] == 2 and 1 <= judged["judged"] <= 2
    assert 0.0 <= judged["win_rate"] <= 100.0 and judged["accuracy"] == judged["win_rate"]
    from harness.results import load_results, side_results

    kept = side_results(tmp_path, run_id)["alpaca_eval-smollm2-135m"]  # the judge's numbers, a side result
    assert kept["values"] == judged and kept["settings"]["metric"] == "win_rate"
    assert [r["run"]["id"] for r in load_results(tmp_path)] == [run_id]  # the export and side result are not runs


def test_the_judges_settings_fail_fast_where_they_need_the_hub(tmp_path):
    from harness.benchmarks.instruct import judge
    from harness.errors import ConfigError
    from harness.offline import HubUnavailableError

    reference = write_json(tmp_path / "reference.json", ALPACA_EVAL)
    local = {"local_judge": "smollm2-135m", "reference_outputs": reference}
    with pytest.raises(ConfigError, match="metric=length_controlled reads alpaca_eval's df_gamed.csv.*metric=win_rate"):
        judge.evaluate_kwargs(local, tmp_path)
    with pytest.raises(HubUnavailableError, match="protocol.alpaca_eval.reference_outputs='tatsu-lab/alpaca_eval'"):
        judge.evaluate_kwargs({"local_judge": "smollm2-135m", "metric": "win_rate"}, tmp_path)
    with pytest.raises(ConfigError, match="annotators_config or local_judge, not both"):
        judge.evaluate_kwargs({**local, "metric": "win_rate", "annotators_config": "gpt4_turbo"}, tmp_path)
    with pytest.raises(ConfigError, match="local_judge='no-such-model' is neither a model config"):
        judge.local_model("no-such-model")
    kwargs = judge.evaluate_kwargs({**local, "metric": "win_rate"}, tmp_path)
    assert kwargs["fn_metric"] == "get_winrate" and kwargs["reference_outputs"] == reference
    assert (tmp_path / "harness_local_judge" / "configs.yaml").is_file() and callable(kwargs["fn_completions"])


def test_a_judge_that_cannot_work_stops_the_run_before_training_and_one_that_fails_keeps_the_outputs(tmp_path, tiny_model,
                                                                                                   tokenizer):
    from harness.errors import ConfigError
    from harness.preflight import check

    chats = write_jsonl(tmp_path / "chats.jsonl", CHATS * 2)
    alpaca = write_json(tmp_path / "alpaca_eval.json", ALPACA_EVAL)
    overrides = ["model=tiny-llama", "task=instruct", "protocol=instruct", "task.datasets=[alpaca_eval]",
                 f"task.train_file={chats}", f"task.test_files.alpaca_eval={alpaca}",
                 f"protocol.alpaca_eval.reference_outputs={alpaca}", "protocol.alpaca_eval.max_new_tokens=2"]
    with pytest.raises(ConfigError, match="metric=length_controlled reads alpaca_eval's df_gamed.csv"):
        check(compose([*overrides, "protocol.alpaca_eval.local_judge=smollm2-135m"]))
    with pytest.raises(ConfigError, match="local_judge='nowhere' is neither"):
        check(compose([*overrides, "protocol.alpaca_eval.local_judge=nowhere", "protocol.alpaca_eval.metric=win_rate"]))
    # a judge whose answers name neither output (a random model's): the outputs survive, the metrics say so
    cfg = compose([*overrides, "protocol.alpaca_eval.local_judge=tiny-llama", "protocol.alpaca_eval.metric=win_rate",
                   "protocol.alpaca_eval.judge_max_new_tokens=3"])
    check(cfg)
    instruct = benchmarks.get("instruct")
    metrics, rows = instruct.scorer("instruct").evaluate(tiny_model, tokenizer, instruct.test_sets(cfg.task),
                                                         cfg.protocol, cfg.task, False)
    assert metrics["alpaca_eval"]["metric"] == "judge failed" and "matched neither output" in metrics["alpaca_eval"]["judge"]
    assert len(rows["alpaca_eval"]) == 2 and math.isnan(metrics["alpaca_eval"]["accuracy"])


def test_every_turn_is_stripped_as_open_instruct_does():
    """open-instruct's `_concat_messages` strips every turn's content, the user's too (the fidelity audit's 3a)."""
    messages = [{"role": "user", "content": "  Say hello.\n\n"}, {"role": "assistant", "content": "\nHi. "}]
    assert tulu_format(messages, eos="</s>") == "<|user|>\nSay hello.\n<|assistant|>\nHi.</s>\n<|assistant|>\n"


def test_followbench_columns_are_the_papers_only_and_our_avg_stays_empty():
    """FollowBench is not run: its five columns show the paper's numbers, ours stay empty, and so does our Avg
    (the paper's is over its 11 columns)."""
    from harness.grid import experiment_cells
    from harness.results import frame
    from harness.tables.common import published, short_namer
    from harness.tables.datasets import build

    base, _ = experiment_cells(["experiment=milora_instruct", "profile=paper"])
    names = list(base.meta.table.columns.paper)
    result = {"run_id": "x-milora", "experiment": "milora_instruct", "profile": "paper", "protocol": "instruct",
              "model": "llama2-7b", "paper_model": "LLaMA2-7B", "method": "milora", "config": {},
              "metrics": {"ifeval": {"accuracy": 30.0, "n": 541}, "alpaca_eval": {"accuracy": 6.0, "n": 805}},
              "params": {"trainable": 1, "total": 100, "trainable_percent": 1.0}, "train": {}}
    table = build(frame([result]), names, published("milora_instruct"), "LLaMA2-7B", short_namer("instruct"))
    table = table.set_index("row")
    assert [c for c in table.columns if c.startswith("FB")] == [f"FB L{i}" for i in range(1, 6)]
    assert table.loc["ours", "IFEval"] == 30.0 and table.loc["ours", ["FB L1", "FB L5"]].isna().all()
    paper = table.loc["paper (LLaMA2-7B)"]
    assert paper["FB L3"] == 38.2 and paper["Avg"] == 31.0 and pd.isna(table.loc["ours", "Avg"])
    assert "paper's numbers only" in base.meta.table.note
