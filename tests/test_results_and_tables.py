"""Result files and tables: atomic writes, damaged files, Avg rule, paper rows beside ours."""

import json

import pandas as pd
import pytest

from harness.results import frame, load_results, write_json_atomic
from harness.tables.common import published, short_namer, write
from harness.tables.datasets import build, caption

SHORT = short_namer("commonsense")  # the benchmark's column names
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
    df = build(frame([full, partial]), DATASETS, paper, reference_model="LLaMA2-7B", short=SHORT)
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
    df = build(frame(results), DATASETS, published("table1"), "LLaMA2-7B", SHORT)
    text = caption("Title", frame(results), "mini profile", DATASETS, "LLaMA2-7B", short=SHORT)
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
    assert [r["run"]["method"] for r in loaded] == ["lora"]
    out = capsys.readouterr().out
    assert "bad.json: not valid JSON" in out and "other.json: not a harness result file" in out
    assert (runs / "bad.json").exists() and not list(runs.glob("*.tmp"))


def budget_result(method, trainable, gsm8k, **options):
    # a unique run id, as real ones are
    return {"run_id": f"x-{method}-{trainable}-{options.get('r')}", "protocol": "math_greedy", "model": "smollm2-135m", "method": method,
            "config": {"method": {"name": method, **options}},
            "metrics": {"gsm8k": {"accuracy": gsm8k, "n": 20, "correct": gsm8k / 5}},
            "params": {"trainable": trainable, "total": 134_515_008, "trainable_percent": 100 * trainable / 134_515_008},
            "train": {"step_seconds_mean": 27.0}}


def test_budget_table_groups_runs_by_nearest_budget_beside_the_papers_rows(tmp_path):
    from harness.tables import budget

    fractions, labels = [0.0059361135, 0.011872227, 0.0237444541], ["~40M", "~80M", "~160M"]
    results = [
        budget_result("spa", 798_400, 5.0, r=0, density=0.0075),
        budget_result("lora", 915_840, 10.0, r=3, alpha=16),                   # 15% over the smallest budget
        budget_result("rosa", 1_596_990, 15.0, r=1, density=0.012167848),
        budget_result("rosa", 1_596_990, 20.0, r=3, density=0.006416980),
        budget_result("full", 134_515_008, 25.0, r=None),
    ]
    df = budget.build(frame(results), ["gsm8k"], published("rosa_gsm8k"), fractions, labels, short_namer("math"))
    assert df["budget"].tolist() == ["~40M", "~40M", "~80M", "~80M", "-"]
    assert df["method"].tolist() == ["LoRA r=3", "SpA d=0.75%", "RoSA r=3 d=0.64%", "RoSA r=1 d=1.22%", "Full FT"]
    rosa = df.iloc[2]
    assert rosa["paper method"] == "RoSA r=16 d=0.6%" and rosa["paper GSM8K"] == 32.2
    # the paper has two RoSA rows at ~80M: a run at r=8 (the sweep's extra split) is beside the r=8 one
    from types import SimpleNamespace

    r8 = SimpleNamespace(method="rosa", rank=8)  # (a row of the frame, as build iterates them)
    assert budget.paper_row_of(published("rosa_gsm8k")["rows"], "~80M", r8)["label"] == "RoSA r=8 d=0.9%"
    assert rosa["Δ GSM8K"] == pytest.approx(20.0 - 32.2) and rosa["params"] == "1.60M (1.19%)"
    assert df.iloc[4]["paper GSM8K"] == 32.3 and df.iloc[4]["paper params"] == "6.70B"
    text = budget.caption("T", frame(results), "mini", ["gsm8k"], published("rosa_gsm8k"), fractions, labels, short=short_namer("math"))
    assert "~80M = 1.19%" in text and "math_greedy" in text and "GSM8K 20 (20 in all)" in text
    md, _, _ = write(df, text, tmp_path, "sweep")
    body = " ".join(md.read_text().split())  # markdown pads its columns
    assert "| -12.2 |" in body and "| ~80M | RoSA r=3 d=0.64% | 1.60M (1.19%) | 1 | 20.0 |" in body


def test_unknown_table_layout_is_an_error(tmp_path):
    from harness.grid import experiment_cells
    from harness.tables import make_table

    base, cells = experiment_cells(["experiment=sweep_budget", "profile=mini", f"meta.run.results_dir={tmp_path}",
                                    "meta.table.layout=pie"])
    with pytest.raises(ValueError, match="meta.table.layout='pie'"):
        make_table(base, cells)


def test_result_files_of_the_first_layout_still_load_and_a_newer_schema_is_named(tmp_path):
    from harness.errors import HarnessError
    from harness.results import load_df, read_result

    runs = tmp_path / "runs"
    write_json_atomic(runs / "old.json", fake_result("lora", {"boolq": 40.0, "piqa": 60.0}))  # flat, no schema key
    result = read_result(runs / "old.json")
    assert result["schema"] == 2 and result["status"] == "finished" and result["run"]["id"] == "x-lora"
    assert result["eval"]["metrics"]["piqa"]["accuracy"] == 60.0 and result["params"]["trainable"] == 6_635_520
    df = load_df(tmp_path)
    assert sorted(df.dataset) == ["boolq", "piqa"] and set(df.label) == {"LoRA"} and set(df.step_s) == {8.5}
    write_json_atomic(runs / "future.json", {"schema": 9, "status": "finished"})
    with pytest.raises(HarnessError, match=r"future.json: result schema 9, this harness reads 1 and 2"):
        read_result(runs / "future.json")


def test_the_reference_row_is_the_method_itself_not_a_preset_over_it(tmp_path):
    from harness.tables.evidence import Evidence

    def run(label, key):
        return {"run_id": key, "model": "m", "method": "lora", "label": label, "label_key": key, "paper_recipe": True}
    presets_only = pd.DataFrame([run("LoRA+", "lora+")])  # MiLoRA Table 5 has LoRA+ but no LoRA row
    assert Evidence(tmp_path, presets_only).reference_runs("m") is None
    both = pd.DataFrame([run("LoRA+", "lora+"), run("LoRA", "lora")])
    assert list(Evidence(tmp_path, both).reference_runs("m").label) == ["LoRA"]


def test_a_budget_row_is_the_mean_of_its_seeds_with_their_interval_and_the_papers_verdict(tmp_path):
    """Paper profile, three seeds of one RoSA cell: the row was its first seed only; now their mean, a t interval
    over the seeds from their predictions, and the verdict against the paper's number."""
    from harness.results import predictions_path
    from harness.artifacts import write_predictions
    from harness.tables import budget
    from harness.tables.evidence import Evidence

    fractions, labels = [0.0059361135, 0.011872227, 0.0237444541], ["~40M", "~80M", "~160M"]
    results = []
    for seed, right in ((42, 320), (43, 326), (44, 332)):  # of 1,000: 32.0, 32.6, 33.2 (the paper: 32.2)
        record = budget_result("rosa", 1_596_990, right / 10, r=16, density=0.006)
        record.update(run_id=f"x-rosa-{seed}", profile="paper", model="llama2-7b", paper_model="LLaMA2-7B")
        record["config"]["seed"] = seed
        record["metrics"]["gsm8k"]["n"] = 1000
        results.append(record)
        write_predictions(predictions_path(tmp_path, record["run_id"]),
                          {"gsm8k": [{"index": i, "answer": "1", "correct": i < right} for i in range(1000)]})
    df = frame(results)
    table = budget.build(df, ["gsm8k"], published("rosa_gsm8k"), fractions, labels, short_namer("math"),
                         Evidence(tmp_path, df), margin=2.0)
    row = table.iloc[0]
    assert row["seeds"] == 3 and row["GSM8K"] == pytest.approx(32.6)
    assert row["GSM8K CI low"] < 32.6 < row["GSM8K CI high"] and row["paper GSM8K"] == 32.2
    assert row["vs paper GSM8K"] == "inconclusive"  # Δ +0.4 ± t(2) x 0.6 x √(4/3): 90% reaches past +2
    assert row["Δ GSM8K CI low"] < 0.0 < row["Δ GSM8K CI high"]

