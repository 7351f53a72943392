"""protocol=lmeval: lm-eval's own tasks on an in-memory model, pointed at local files offline."""

import json

import pytest

from harness import benchmarks
from harness.benchmarks import lmeval
from harness.config import compose
from harness.errors import ConfigError
from harness.offline import HubUnavailableError

pytest.importorskip("lm_eval")

GSM8K = lmeval.LmEvalTask("gsm8k", "gsm8k/gsm8k.yaml", "openai/gsm8k")


def scorer(task):
    """The lm-eval scorer of the task's benchmark (commonsense's eight tasks, math's gsm8k)."""
    return benchmarks.get(task.name).scorer("lmeval")

ARC_RECORDS = [
    {"id": f"q{i}", "question": q, "choices": {"text": choices, "label": ["A", "B", "C"]}, "answerKey": key}
    for i, (q, choices, key) in enumerate([
        ("Which is a liquid at room temperature?", ["water", "iron", "salt"], "A"),
        ("What do plants need for photosynthesis?", ["darkness", "sunlight", "sand"], "B"),
        ("Which animal can fly?", ["dog", "fish", "bird"], "C"),
    ])
]


def test_gsm8k_from_the_data_dir_zero_and_few_shot(tiny_model, tokenizer, data_dir):
    task = compose(["task=gsm8k", "task.test_subset=3"]).task
    for shots in (0, 2):
        protocol = compose(["protocol=lmeval", "protocol.max_gen_toks=8", f"protocol.num_fewshot={shots}"]).protocol
        metrics, predictions = scorer(task).evaluate(tiny_model, tokenizer, {}, protocol, task, progress=False)
        m = metrics["gsm8k"]
        assert m["n"] == 3 and m["num_fewshot"] == shots and m["source"] == "local files"
        assert m["metric"] == "exact_match,strict-match" and 0.0 <= m["accuracy"] <= 100.0
        assert "exact_match,flexible-extract" in m and m["task_version"] not in ("", "None")
        assert len(predictions["gsm8k"]) == 3 and all("#### " in p["target"] for p in predictions["gsm8k"])


def test_a_multiple_choice_task_from_local_files_in_its_own_format(tiny_model, tokenizer, tmp_path):
    path = tmp_path / "arc_easy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ARC_RECORDS))
    task = compose(["task=commonsense", "task.datasets=[ARC-Easy]"]).task
    protocol = compose(["protocol=lmeval", f"+protocol.local_files.arc_easy.test={path}"]).protocol
    metrics, _ = scorer(task).evaluate(tiny_model, tokenizer, {}, protocol, task, progress=False)
    m = metrics["ARC-Easy"]
    assert m["n"] == 3 and m["metric"] == "acc" and "acc_norm" in m
    assert m["accuracy"] in (0.0, 100 / 3, 200 / 3, 100.0)


def test_offline_without_local_files_names_the_fix(tiny_model, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = compose(["task=commonsense", "task.datasets=[boolq]", "task.missing_ok=false"]).task
    with pytest.raises(HubUnavailableError, match=r"protocol.local_files.boolq"):
        scorer(task).evaluate(tiny_model, tokenizer, {}, compose(["protocol=lmeval"]).protocol, task, progress=False)


def test_generated_task_yaml_switches_off_splits_without_files(tmp_path):
    import yaml

    (tmp_path / "t.jsonl").write_text("{}\n")
    name = lmeval.local_task_yaml(GSM8K, {"test": str(tmp_path / "t.jsonl")}, tmp_path)
    config = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
    assert name == "gsm8k_harness" and config["include"].endswith("gsm8k/gsm8k.yaml")
    assert config["test_split"] == "test" and config["training_split"] is None and config["fewshot_split"] is None
    with pytest.raises(ConfigError, match="protocol.local_files.gsm8k.test"):
        lmeval.local_task_yaml(GSM8K, {"test": str(tmp_path / "missing.jsonl")}, tmp_path)
