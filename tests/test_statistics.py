"""Intervals and paired tests from prediction rows (harness.statistics), and the table rows they give."""

import math
from pathlib import Path

import pandas as pd
import pytest

from harness import benchmarks
from harness.results import frame, predictions_path
from harness.run import write_predictions
from harness.statistics import SetRuns, compare, interval
from harness.tables.common import published, short_namer
from harness.tables.datasets import build, shown
from harness.tables.evidence import Evidence

SHORT = short_namer("commonsense")
COLA_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "CoLA" / "dev.tsv"


def rows(correct: list[bool]) -> list[dict]:
    return [{"index": i, "answer": "true", "prediction": "true" if c else "false", "correct": c}
            for i, c in enumerate(correct)]


def pattern(n_correct: int, n: int = 40, offset: int = 0) -> list[bool]:
    return [((i + offset) % n) < n_correct for i in range(n)]


def test_one_seed_interval_is_the_binomial_spread_of_the_examples():
    low, high = interval([SetRuns([rows(pattern(28))])])
    # 28 / 40: the normal approximation's 95% half-width is 1.96 * sqrt(.7 * .3 / 40) = 14.2 points
    assert low < 70.0 < high
    assert 22.0 < high - low < 35.0
    assert interval([SetRuns([rows(pattern(28))])]) == (low, high)  # seeded: a rebuilt table shows the same


def test_seeds_that_disagree_widen_the_interval():
    one = interval([SetRuns([rows(pattern(28))])])
    seeds = interval([SetRuns([rows(pattern(20)), rows(pattern(28)), rows(pattern(36))])])
    assert seeds[0] < 70.0 < seeds[1]
    assert seeds[1] - seeds[0] > one[1] - one[0]


def test_avg_interval_resamples_every_set():
    a, b = SetRuns([rows(pattern(20))]), SetRuns([rows(pattern(36))])
    low, high = interval([a, b])
    assert low < 70.0 < high  # the macro mean of 50 and 90
    assert high - low < interval([a])[1] - interval([a])[0]  # two sets' worth of examples: narrower


def test_mcnemar_counts_only_the_examples_where_the_two_disagree():
    reference = SetRuns([rows(pattern(20))])
    better = SetRuns([rows(pattern(30))])  # right on 10 more examples, never wrong where the reference is right
    result = compare([better], [reference])
    assert result.test == "McNemar" and result.difference == pytest.approx(25.0)
    assert result.p_value == pytest.approx(2 * 0.5 ** 10)  # exact: 10 of 10 discordant pairs one way
    assert result.significant
    shuffled = SetRuns([rows(pattern(20, offset=5))])  # the same accuracy, 5 / 5 disagreements each way
    same = compare([shuffled], [reference])
    assert same.difference == 0.0 and same.p_value == pytest.approx(1.0) and not same.significant


def test_a_whole_set_metric_is_compared_by_a_paired_bootstrap_on_real_cola_labels():
    labels = [int(line.split("\t")[1]) for line in COLA_DEV.read_text().splitlines()[:200]]
    scorer = benchmarks.get("glue").scorer("glue_dev")

    def headline(set_rows):
        return scorer.summarize("cola", set_rows)["accuracy"]  # Matthews x 100

    def predicted(wrong_every: int) -> list[dict]:
        return [{"index": i, "label": y, "prediction": 1 - y if i % wrong_every == 0 else y, "correct": i % wrong_every != 0}
                for i, y in enumerate(labels)]
    good, poor = SetRuns([predicted(10)], headline), SetRuns([predicted(3)], headline)
    low, high = interval([good])
    assert low < headline(predicted(10)) < high
    result = compare([good], [poor])
    assert result.test == "paired bootstrap" and result.difference > 0 and result.significant
    assert result.low > 0
    tie = compare([good], [good])
    assert tie.difference == 0.0 and not tie.significant


def test_runs_scored_on_different_examples_are_not_compared():
    a = SetRuns([rows(pattern(20))])
    b = SetRuns([rows(pattern(20, n=30))])
    assert compare([a], [b]) is None


def fake_result(method, accs, n=40, profile="mini", model="smollm2-135m", paper_model=None, seed=42):
    return {"run_id": f"x-{method}-{seed}", "experiment": "table1", "profile": profile, "protocol": "paper_gen",
            "model": model, "paper_model": paper_model, "method": method, "config": {"seed": seed},
            "metrics": {d: {"accuracy": a, "n": n} for d, a in accs.items()},
            "params": {"trainable": 6_635_520, "total": 134_515_008, "trainable_percent": 4.93},
            "train": {"step_seconds_mean": 8.5}}


def write_runs(results_dir, specs, **kwargs):
    """Result records and their predictions files: specs = [(method, {set: correct count}, seed)]."""
    records = []
    for method, counts, seed in specs:
        records.append(fake_result(method, {d: 100.0 * c / 40 for d, c in counts.items()}, seed=seed, **kwargs))
        write_predictions(predictions_path(results_dir, records[-1]["run_id"]),
                          {d: rows(pattern(c)) for d, c in counts.items()})
    return frame(records)


def test_the_table_shows_intervals_the_paired_test_and_the_seeds(tmp_path):
    sets = ["boolq", "piqa"]
    df = write_runs(tmp_path, [("lora", {"boolq": 20, "piqa": 24}, 42), ("dora", {"boolq": 32, "piqa": 24}, 42),
                               ("dora", {"boolq": 30, "piqa": 26}, 43)])
    table = build(df, sets, published("table1"), "LLaMA2-7B", SHORT, Evidence(tmp_path, df))
    dora = table[table.method == "DoRA"].set_index("row")
    assert dora.loc["ours", "BoolQ"] == pytest.approx(77.5) and dora.loc["ours", "seeds"] == 2
    assert dora.loc["std", "BoolQ"] == pytest.approx(pd.Series([80.0, 75.0]).std())
    assert dora.loc["CI low", "BoolQ"] < 77.5 < dora.loc["CI high", "BoolQ"]
    assert dora.loc["CI low", "Avg"] < dora.loc["ours", "Avg"] < dora.loc["CI high", "Avg"]
    assert dora.loc["Δ vs LoRA", "BoolQ"] == pytest.approx(27.5)
    assert dora.loc["significant vs LoRA", "BoolQ"] == 1.0 and dora.loc["significant vs LoRA", "PIQA"] == 0.0
    assert list(dora.loc[["seed 42", "seed 43"], "BoolQ"]) == [80.0, 75.0]  # the csv keeps every seed
    assert "Δ vs LoRA" not in set(table[table.method == "LoRA"].row)
    # a stand-in model (mini) is never marked against the LLaMA row
    assert "paper within CI" not in set(table.row)
    text = shown(table, ["BoolQ", "PIQA"]).set_index(["method", "row"])
    assert text.loc[("DoRA", "ours"), "BoolQ"] == "77.5 ± 3.5"
    assert text.loc[("DoRA", "95% CI"), "BoolQ"].startswith("[")
    assert text.loc[("DoRA", "Δ vs LoRA"), "BoolQ"].startswith("+27.5*")
    assert ("DoRA", "seed 42") not in text.index


def test_the_papers_number_is_marked_inside_or_outside_our_interval_for_the_papers_own_model(tmp_path):
    sets = ["boolq", "piqa"]  # LLaMA2-7B LoRA: BoolQ 69.8, PIQA 79.9
    df = write_runs(tmp_path, [("lora", {"boolq": 28, "piqa": 16}, 42)], profile="paper", model="llama2-7b",
                    paper_model="LLaMA2-7B")
    table = build(df, sets, published("table1"), "LLaMA2-7B", SHORT, Evidence(tmp_path, df))
    marks = table[table.row == "paper within CI"].iloc[0]
    assert (marks["BoolQ"], marks["PIQA"]) == (1.0, 0.0)  # 69.8 within 70.0's interval; 79.9 far above 40.0
    text = shown(table, ["BoolQ", "PIQA"])
    paper = text[text.row == "paper (LLaMA2-7B)"].iloc[0]
    assert paper["BoolQ"] == "69.8 ✓" and paper["PIQA"] == "79.9 ✗"
    assert math.isnan(marks["Avg"]) or marks["Avg"] in (0.0, 1.0)


def test_the_tuned_lr_row_is_the_search_point_with_the_lowest_held_out_loss_not_the_best_test_score():
    records = []
    for lr, boolq, val_loss in ((1.5e-4, 90.0, 2.0), (3e-4, 50.0, 1.5), (6e-4, 70.0, 1.0)):
        record = fake_result("lora", {"boolq": boolq}, seed=42)
        record.update(run_id=f"x-lora-{lr}", config={"seed": 42, "training": {"lr": lr}})
        record["train"]["val_loss"] = val_loss
        records.append(record)
    df = frame(records)
    df["lr_factor"] = [{1.5e-4: 0.5, 3e-4: 1.0, 6e-4: 2.0}[lr] for lr in df.lr]
    df["paper_recipe"] = df.lr == 3e-4
    table = build(df, ["boolq"], published("table1"), "LLaMA2-7B", SHORT).set_index("row")
    assert table.loc["ours", "BoolQ"] == 50.0  # the recipe's lr
    assert table.loc["tuned lr", "BoolQ"] == 70.0 and table.loc["tuned lr", "params"].startswith("lr 6.00e-04 (x2")
    assert [table.loc[f"lr {lr:.2e}", "BoolQ"] for lr in (1.5e-4, 3e-4, 6e-4)] == [90.0, 50.0, 70.0]  # the csv's grid
    assert "lr 1.50e-04" not in set(shown(table.reset_index(), ["BoolQ"]).row)
