"""Intervals, paired tests, Holm and the reproduction verdict (harness.statistics) against independent
computations, and the table rows and caption they give. Their coverage: tests/test_statistics_coverage.py."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness import benchmarks
from harness.results import frame, predictions_path
from harness.artifacts import write_predictions
from harness.statistics import (DIFFERS, INCONCLUSIVE, NOT_JUDGED, REPRODUCED, SetRuns, compare, holm, interval,
                                pooled_spread, reproduction)
from harness.tables.common import published, short_namer
from harness.tables.datasets import Judging, build, caption, p_text, shown
from harness.tables.evidence import Evidence

SHORT = short_namer("commonsense")
COLA_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "CoLA" / "dev.tsv"


def rows(correct: list[bool]) -> list[dict]:
    return [{"index": i, "answer": "true", "prediction": "true" if c else "false", "correct": c}
            for i, c in enumerate(correct)]


def pattern(n_correct: int, n: int = 40, offset: int = 0) -> list[bool]:
    return [((i + offset) % n) < n_correct for i in range(n)]


def wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    z = stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return 100 * (centre - half), 100 * (centre + half)


@pytest.mark.parametrize("k,n", [(28, 40), (40, 40), (0, 40), (700, 1000)])
def test_one_seed_accuracy_interval_is_wilsons_and_never_of_zero_width(k, n):
    low, high = interval([SetRuns([rows(pattern(k, n))])])
    assert (low, high) == pytest.approx(wilson_by_hand(k, n), abs=1e-9)
    assert high - low > 5.0  # all right at n = 40: [91.2, 100], not [100, 100]


def test_one_seed_avg_is_price_bonetts_interval_of_the_macro_mean():
    sizes, counts = (40, 1000, 3270), (24, 800, 2943)
    runs = [SetRuns([rows(pattern(k, n))]) for k, n in zip(counts, sizes)]
    low, high = interval(runs)
    adjusted = [((k + 2 / 3) / (n + 4 / 3), n + 4 / 3) for k, n in zip(counts, sizes)]
    centre = np.mean([p for p, _ in adjusted])
    se = math.sqrt(sum(p * (1 - p) / m for p, m in adjusted)) / 3
    assert (low, high) == pytest.approx((100 * (centre - 1.96 * se), 100 * (centre + 1.96 * se)), abs=0.01)
    assert 9.5 < high - low < 11.0  # the audit's analytic macro-mean half-width ±5.14; a pooled SE would give ±0.99
    all_right = interval([SetRuns([rows(pattern(40))]), SetRuns([rows(pattern(40))])])
    assert all_right[1] - all_right[0] > 2.0


def test_several_seeds_give_a_t_interval_on_the_per_seed_scores():
    counts = (20, 28, 36)
    low, high = interval([SetRuns([rows(pattern(k)) for k in counts])])
    scores = np.array(counts) / 40 * 100
    half = stats.t.ppf(0.975, 2) * scores.std(ddof=1) / math.sqrt(3)
    assert (low, high) == pytest.approx((scores.mean() - half, 100.0))  # 119.7 clipped to the scale


def test_avg_over_sets_one_run_scored_is_the_t_interval_of_each_runs_avg():
    """A good or bad seed moves every set it scored: the per-run Avg is the unit, not each set on its own."""
    ids = ["run-a", "run-b", "run-c"]
    boolq = SetRuns([rows(pattern(k)) for k in (20, 28, 36)], run_ids=ids)
    piqa = SetRuns([rows(pattern(k)) for k in (22, 30, 34)], run_ids=ids)
    per_run = (np.array([20, 28, 36]) + np.array([22, 30, 34])) / 80 * 100
    half = stats.t.ppf(0.975, 2) * per_run.std(ddof=1) / math.sqrt(3)
    assert interval([boolq, piqa]) == pytest.approx((per_run.mean() - half, min(100.0, per_run.mean() + half)))
    # the same scores from separate runs per set (GLUE): each set's seed variance, Welch-Satterthwaite df
    apart = [SetRuns(boolq.seeds, run_ids=["b1", "b2", "b3"]), SetRuns(piqa.seeds, run_ids=["p1", "p2", "p3"])]
    v = [np.var(np.array(c) / 40 * 100, ddof=1) / 3 / 4 for c in ((20, 28, 36), (22, 30, 34))]
    df = sum(v) ** 2 / sum(x * x / 2 for x in v)
    half = stats.t.ppf(0.975, df) * math.sqrt(sum(v))
    assert interval(apart) == pytest.approx((per_run.mean() - half, min(100.0, per_run.mean() + half)))


def test_seeds_that_score_alike_are_judged_as_one_seed():
    same = SetRuns([rows(pattern(28)), rows(pattern(28, offset=3))])
    assert interval([same]) == pytest.approx(wilson_by_hand(28, 40))


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


def test_several_seeds_are_compared_by_welchs_t_on_the_per_seed_scores():
    ours = SetRuns([rows(pattern(k)) for k in (30, 33, 35)])
    reference = SetRuns([rows(pattern(k)) for k in (20, 26, 24)])
    result = compare([ours], [reference])
    a, b = np.array([30, 33, 35]) / 40 * 100, np.array([20, 26, 24]) / 40 * 100
    welch = stats.ttest_ind(a, b, equal_var=False)
    assert result.test.startswith("Welch") and result.p_value == pytest.approx(welch.pvalue)
    assert (result.low, result.high) == pytest.approx(tuple(welch.confidence_interval()))
    # one side with one seed: its run varies as the other side's seeds do (the reference's spread)
    single = compare([SetRuns([rows(pattern(33))])], [reference])
    se = b.std(ddof=1) * math.sqrt(1 + 1 / 3)
    assert single.p_value == pytest.approx(2 * stats.t.sf(abs(82.5 - b.mean()) / se, 2))


def test_a_whole_set_metric_is_compared_by_a_paired_bootstrap_on_real_cola_labels(monkeypatch):
    labels = [int(line.split("\t")[1]) for line in COLA_DEV.read_text().splitlines()[:200]]
    scorer = benchmarks.get("glue").scorer("glue_dev")

    def headline(set_rows):
        return scorer.summarize("cola", set_rows)["accuracy"]  # Matthews x 100

    def predicted(wrong_every: int) -> list[dict]:
        return [{"index": i, "label": y, "prediction": 1 - y if i % wrong_every == 0 else y, "correct": i % wrong_every != 0}
                for i, y in enumerate(labels)]
    def resampled(set_rows, index):
        return scorer.headline_of_resamples("cola", set_rows, index)

    good, poor = SetRuns([predicted(10)], headline, None, resampled), SetRuns([predicted(3)], headline, None, resampled)
    low, high = interval([good])
    assert low < headline(predicted(10)) < high
    result = compare([good], [poor])
    assert result.test == "paired bootstrap" and result.difference > 0 and result.significant
    assert result.low > 0 and 0 < result.p_value < 0.01  # a p-value, to join the row's Holm family
    tie = compare([good], [good])
    assert tie.difference == 0.0 and not tie.significant and tie.p_value == 1.0
    right = [{"index": i, "label": y, "prediction": y, "correct": True} for i, y in enumerate(labels)]
    perfect = SetRuns([right], headline, None, resampled)  # every resample's Matthews is 100: no interval
    assert interval([perfect]) is None
    # the vectorised headline gives the interval and test Matthews recomputed per resample gives (fewer resamples:
    # sklearn's per call)
    monkeypatch.setattr("harness.statistics.METRIC_RESAMPLES", 200)
    per_resample = SetRuns([predicted(10)], headline), SetRuns([predicted(3)], headline)
    assert interval([per_resample[0]]) == pytest.approx(interval([good]), abs=1e-9)
    slow, fast = compare([per_resample[0]], [per_resample[1]]), compare([good], [poor])
    assert (slow.low, slow.high, slow.p_value) == pytest.approx((fast.low, fast.high, fast.p_value), abs=1e-9)


def test_fractional_scores_are_resampled_not_counted_as_right_or_wrong():
    """A HumanEval row's `correct` is its pass@1 over 5 samples: a bootstrap over problems, not Wilson's."""
    scores = [{"index": i, "correct": (i % 6) / 5 if i % 6 < 6 else 0.0} for i in range(60)]
    low, high = interval([SetRuns([scores])])
    mean = 100 * np.mean([r["correct"] for r in scores])
    assert low < mean < high and (low, high) != pytest.approx(wilson_by_hand(round(mean * 0.6), 60))


def test_runs_scored_on_different_examples_are_not_compared():
    a = SetRuns([rows(pattern(20))])
    b = SetRuns([rows(pattern(20, n=30))])
    assert compare([a], [b]) is None


def test_holm_adjusts_a_rows_p_values_step_down_as_statsmodels_does():
    from statsmodels.stats.multitest import multipletests

    p = [0.01, 0.04, None, 0.03]
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1, each at least the one before
    assert holm(p) == pytest.approx([0.03, 0.06, None, 0.06])
    draws = np.random.default_rng(0).uniform(0, 0.2, (5, 8))
    for row in draws:
        assert holm(list(row)) == pytest.approx(list(multipletests(row, method="holm")[1]))
    assert p_text(0.003) == "p<0.01" and p_text(0.0312) == "p 0.03"


def test_the_verdict_takes_the_papers_number_as_one_more_run():
    ours = SetRuns([rows(pattern(k, n=1000)) for k in (700, 703, 706)])
    scores = np.array([70.0, 70.3, 70.6])
    s, t90, t95 = scores.std(ddof=1), stats.t.ppf(0.95, 2), stats.t.ppf(0.975, 2)
    close = reproduction([ours], 70.2, margin=2.0)
    assert close.verdict == REPRODUCED and close.difference == pytest.approx(0.1)
    assert (close.low, close.high) == pytest.approx((0.1 - t95 * s * math.sqrt(4 / 3), 0.1 + t95 * s * math.sqrt(4 / 3)))
    assert close.high90 == pytest.approx(0.1 + t90 * s * math.sqrt(4 / 3))
    assert reproduction([ours], 60.0, margin=2.0).verdict == DIFFERS
    assert reproduction([ours], 69.0, margin=2.0).verdict == INCONCLUSIVE  # Δ +1.3: neither within ±2 nor apart
    one = SetRuns([rows(pattern(700, n=1000))])
    assert reproduction([one], 70.2, margin=2.0).verdict == NOT_JUDGED
    pooled = pooled_spread([[ours]])
    borrowed = reproduction([one], 70.2, margin=2.0, pooled=pooled)
    assert borrowed.verdict == REPRODUCED and "pooled" in borrowed.spread
    assert borrowed.high - borrowed.difference == pytest.approx(t95 * s * math.sqrt(2))


def fake_result(method, accs, n=40, profile="mini", model="smollm2-135m", paper_model=None, seed=42):
    return {"run_id": f"x-{method}-{seed}", "experiment": "table1", "profile": profile, "protocol": "paper_gen",
            "model": model, "paper_model": paper_model, "method": method, "config": {"seed": seed},
            "metrics": {d: {"accuracy": a, "n": n} for d, a in accs.items()},
            "params": {"trainable": 6_635_520, "total": 134_515_008, "trainable_percent": 4.93},
            "train": {"step_seconds_mean": 8.5}}


def write_runs(results_dir, specs, n=40, **kwargs):
    """Result records and their predictions files: specs = [(method, {set: correct count}, seed)]."""
    records = []
    for method, counts, seed in specs:
        records.append(fake_result(method, {d: 100.0 * c / n for d, c in counts.items()}, n=n, seed=seed, **kwargs))
        write_predictions(predictions_path(results_dir, records[-1]["run_id"]),
                          {d: rows(pattern(c, n)) for d, c in counts.items()})
    return frame(records)


def test_the_table_shows_intervals_adjusted_tests_and_the_seeds(tmp_path):
    sets = ["boolq", "piqa"]
    df = write_runs(tmp_path, [("lora", {"boolq": 20, "piqa": 24}, 42), ("dora", {"boolq": 32, "piqa": 24}, 42),
                               ("dora", {"boolq": 30, "piqa": 26}, 43), ("pissa", {"boolq": 31, "piqa": 30}, 42)])
    evidence = Evidence(tmp_path, df)
    table = build(df, sets, published("table1"), "LLaMA2-7B", SHORT, evidence)
    dora = table[table.method == "DoRA"].set_index("row")
    assert dora.loc["ours", "BoolQ"] == pytest.approx(77.5) and dora.loc["ours", "seeds"] == 2
    assert dora.loc["std", "BoolQ"] == pytest.approx(pd.Series([80.0, 75.0]).std())
    assert dora.loc["CI low", "BoolQ"] < 77.5 < dora.loc["CI high", "BoolQ"]
    assert dora.loc["CI low", "Avg"] < dora.loc["ours", "Avg"] < dora.loc["CI high", "Avg"]
    assert dora.loc["Δ vs LoRA", "BoolQ"] == pytest.approx(27.5)
    assert list(dora.loc[["seed 42", "seed 43"], "BoolQ"]) == [80.0, 75.0]  # the csv keeps every seed
    pissa = table[table.method == "PiSSA"].set_index("row")
    raw = [pissa.loc["p vs LoRA", c] for c in ("BoolQ", "PIQA")]
    assert [pissa.loc["p adj vs LoRA", c] for c in ("BoolQ", "PIQA")] == pytest.approx(holm(raw))
    assert pissa.loc["p adj vs LoRA", "Avg"] == pissa.loc["p vs LoRA", "Avg"]  # Avg: the primary test, unadjusted
    assert pissa.loc["significant vs LoRA", "BoolQ"] == float(holm(raw)[0] < 0.05)
    assert "Δ vs LoRA" not in set(table[table.method == "LoRA"].row)
    assert "vs paper" not in set(table.row)  # a stand-in model (mini) is never judged against the LLaMA row
    text = shown(table, ["BoolQ", "PIQA"]).set_index(["method", "row"])
    assert text.loc[("DoRA", "ours"), "BoolQ"] == "77.5 ± 3.5"
    assert text.loc[("DoRA", "95% CI"), "BoolQ"].startswith("[")
    assert text.loc[("PiSSA", "Δ vs LoRA"), "BoolQ"].startswith("+27.5")
    assert "p 0.00" not in " ".join(text.astype(str).to_numpy().ravel())
    assert ("DoRA", "seed 42") not in text.index
    words = caption("T", df, "mini", sets, "LLaMA2-7B", short=SHORT, evidence_shown=True, numbers=table,
                    evidence=evidence)
    assert "Holm-adjusted within each row (4 tests in 2 rows)" in words and "unadjusted (2 in this table)" in words
    assert "one seed: over the test examples" in words and "several seeds: for this test set" in words


def test_the_papers_own_model_gets_a_verdict_not_an_inside_mark(tmp_path):
    sets = ["boolq", "piqa"]  # LLaMA2-7B LoRA: BoolQ 69.8, PIQA 79.9
    specs = [("lora", {"boolq": 698 + d, "piqa": 600 + d}, 42 + i) for i, d in enumerate((-4, 0, 5))]
    df = write_runs(tmp_path, specs, n=1000, profile="paper", model="llama2-7b", paper_model="LLaMA2-7B")
    table = build(df, sets, published("table1"), "LLaMA2-7B", SHORT, Evidence(tmp_path, df), Judging(1.0, 2.0, False))
    verdict = table[table.row == "vs paper"].iloc[0]
    assert (verdict["BoolQ"], verdict["PIQA"]) == (REPRODUCED, DIFFERS)  # 69.8 vs 69.83 ± 0.45 (sd); 79.9 vs 60.0
    low = table[table.row == "Δ ours - paper CI low"].iloc[0]
    assert low["BoolQ"] < 0.0 < table[table.row == "Δ ours - paper CI high"].iloc[0]["BoolQ"]
    assert "paper within CI" not in set(table.row)
    text = shown(table, ["BoolQ", "PIQA"]).set_index("row")
    assert text.loc["vs paper", "BoolQ"] == REPRODUCED and text.loc["Δ ours - paper", "BoolQ"].startswith("+0.0 [")
    one = write_runs(tmp_path, specs[:1], n=1000, profile="paper", model="llama2-7b", paper_model="LLaMA2-7B")
    alone = build(one, sets, published("table1"), "LLaMA2-7B", SHORT, Evidence(tmp_path, one))
    assert alone[alone.row == "vs paper"].iloc[0]["BoolQ"] == NOT_JUDGED


def test_a_paper_row_scored_by_another_protocol_is_shown_but_not_judged(tmp_path):
    """MiLoRA Table 2 cites Full FT from MetaMath's own evaluation (`scored_otherwise`): its numbers sit beside
    ours, with no verdict; the LoRA row, scored as the table's protocol, is judged."""
    sets = ["gsm8k"]
    specs = [(m, {"gsm8k": 600 + d}, 42 + i) for m in ("full", "lora") for i, d in enumerate((-4, 0, 5))]
    df = write_runs(tmp_path, specs, n=1000, profile="paper", model="llama2-7b", paper_model="LLaMA2-7B")
    table = build(df, sets, published("table2"), "LLaMA2-7B", str, Evidence(tmp_path, df))
    full, lora = (table[table.method == label].set_index("row") for label in ("Full FT", "LoRA"))
    assert full.loc["paper (LLaMA2-7B)", "gsm8k"] == 66.5 and "vs paper" not in full.index
    assert "vs paper" in lora.index


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
    assert table.loc["tuned lr", "BoolQ"] == 70.0 and table.loc["tuned lr", "params"].startswith("lr x2 (val loss 1.0")
    assert [table.loc[f"lr x{f:g}", "BoolQ"] for f in (0.5, 1.0, 2.0)] == [90.0, 50.0, 70.0]  # the csv's grid
    assert "lr x0.5" not in set(shown(table.reset_index(), ["BoolQ"]).row)


def test_the_lr_search_selects_within_each_task_by_its_factor():
    """GLUE: one run per task, each with its own base lr (Neat-S: SST-2 5e-3, RTE 1e-3); the audit's check 8 lost
    RTE's column by grouping absolute lrs across tasks."""
    records = []
    for task, base, losses, scores in (("sst2", 5e-3, (0.30, 0.20), (90.0, 91.0)), ("rte", 1e-3, (0.60, 0.70), (60.0, 55.0))):
        for factor, loss, score in zip((0.5, 1.0), losses, scores):
            record = fake_result("neat", {task: score}, seed=42)
            record.update(run_id=f"x-{task}-{factor}", config={"seed": 42, "training": {"lr": base * factor}})
            record["train"]["val_loss"] = loss
            records.append(record)
    df = frame(records)
    df["lr_factor"] = [float(rid.rsplit("-", 1)[1]) for rid in df.run_id]
    df["paper_recipe"] = df.lr_factor == 1.0
    table = build(df, ["sst2", "rte"], {}, None, str).set_index("row")
    assert (table.loc["tuned lr", "sst2"], table.loc["tuned lr", "rte"]) == (91.0, 60.0)  # x1 on SST-2, x0.5 on RTE
    assert "x1 sst2" in table.loc["tuned lr", "params"] and "x0.5 rte" in table.loc["tuned lr", "params"]
