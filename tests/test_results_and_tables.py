"""Result files and tables: atomic writes, damaged files, Avg rule, paper rows beside ours."""

import json

import pandas as pd
import pytest

from harness.results import load_results, write_json_atomic
from harness.tables import build, caption, published, write

DATASETS = ["boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa"]


def fake_result(method, accs, model="smollm2-135m", paper_model=None):
    return {"run_id": f"x-{method}", "experiment": "table1", "profile": "mini", "protocol": "paper_gen",
            "model": model, "paper_model": paper_model, "method": method, "config": {},
            "metrics": {d: {"accuracy": a, "n": 10, "correct": a / 10} for d, a in accs.items()},
            "params": {"trainable": 6_635_520, "total": 134_515_008, "trainable_percent": 4.93},
            "train": {"step_seconds_mean": 8.5}}


def test_avg_only_with_all_eight_sets_and_paper_row_beside_ours():
    paper = published("table1")
    full = fake_result("lora", {d: 50.0 for d in DATASETS}, model="llama2-7b", paper_model="LLaMA2-7B")
    partial = fake_result("milora", {"boolq": 60.0, "piqa": 55.0})
    df = build([full, partial], DATASETS, paper, reference_model="LLaMA2-7B")
    lora = df[(df.method == "LoRA") & (df.row == "ours")].iloc[0]
    assert lora["Avg"] == pytest.approx(50.0)
    lora_paper = df[(df.method == "LoRA") & (df.row.str.startswith("paper"))].iloc[0]
    assert lora_paper["BoolQ"] == 69.8 and lora_paper["Avg"] == 77.6
    delta = df[(df.method == "LoRA") & (df.row.str.startswith("Δ"))].iloc[0]
    assert delta["BoolQ"] == pytest.approx(50.0 - 69.8) and delta["Avg"] == pytest.approx(50.0 - 77.6)
    milora = df[(df.method == "MiLoRA") & (df.row == "ours")].iloc[0]
    assert pd.isna(milora["Avg"]) and pd.isna(milora["SIQA"]) and milora["BoolQ"] == 60.0
    assert df[(df.method == "MiLoRA")].row.tolist()[1] == "paper (LLaMA2-7B)"
    assert milora["params"] == "6.64M (4.93%)" and milora["step s"] == 8.5


def test_written_table_shows_dashes_and_caption(tmp_path):
    results = [fake_result("milora", {"boolq": 60.0, "piqa": 55.0})]
    df = build(results, DATASETS, published("table1"), "LLaMA2-7B")
    text = caption("Title", results, "mini profile", DATASETS, "LLaMA2-7B")
    assert "BoolQ 10, PIQA 10 (20 in all)" in text and "paper_gen" in text and "mini profile" in text
    md, csv, tex = write(df, text, tmp_path, "t")
    body = md.read_text()
    assert "| -" in body and "+" not in body.split("Δ")[0].split("\n")[-1]
    assert "\\caption{" in tex.read_text() and "BoolQ" in csv.read_text()


def test_atomic_write_and_damaged_files_are_skipped_not_deleted(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_json_atomic(runs / "good.json", fake_result("lora", {"boolq": 1.0}))
    (runs / "bad.json").write_text("{ not json")
    (runs / "other.json").write_text(json.dumps({"hello": 1}))
    loaded = load_results(tmp_path)
    assert [r["method"] for r in loaded] == ["lora"]
    out = capsys.readouterr().out
    assert "bad.json: not valid JSON" in out and "other.json: not a harness result file" in out
    assert (runs / "bad.json").exists() and not list(runs.glob("*.tmp"))
