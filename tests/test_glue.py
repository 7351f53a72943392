"""GLUE: the real TSV files, locally computed metrics, the head counted apart, head learning rates."""

import math

import numpy as np

import pytest
import torch

from harness import benchmarks, methods
from harness.benchmarks.glue import data as glue
from harness.benchmarks.glue.dev import glue_metrics
from harness.benchmarks.records import DataError
from harness.config import compose, method_options
from harness.offline import HubUnavailableError
from harness.train import with_module_lrs


def task(*overrides):
    return compose(["task=glue", *overrides]).task


def test_real_dev_files_read_with_their_labels(data_dir):
    sst2 = glue.test_sets(task("task.dataset=sst2", "task.test_subset=null"))["sst2"]
    cola = glue.test_sets(task("task.dataset=cola", "task.test_subset=null"))["cola"]
    rte = glue.test_sets(task("task.dataset=rte", "task.test_subset=50"))["rte"]
    assert len(sst2) == 872 and {r["label"] for r in sst2} == {0, 1} and sst2[0]["text_b"] is None
    assert len(cola) == 1043 and cola[0]["text_a"] == "The sailors rode the breeze clear of the rocks."
    assert len(rte) == 50 and rte[0]["label"] == 1 and rte[1]["label"] == 0  # not_entailment, entailment
    assert rte[0]["text_b"] == "Christopher Reeve had an accident."
    train, _ = glue.training_records(task("task.dataset=rte", "task.train_subset=40"), seed=0)
    assert len(train) == 40


def test_bad_files_and_unknown_tasks_are_named(tmp_path, monkeypatch):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(DataError, match=r"dev.tsv: line 2: label 'maybe' is not valid for rte"):
        glue.test_sets(task("task.dataset=rte", f"task.data_dir={tmp_path}"))
    (tmp_path / "RTE" / "dev.tsv").write_text("index\tsentence1\tlabel\n0\ta\t0\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['sentence2'\]"):
        glue.test_sets(task("task.dataset=rte", f"task.data_dir={tmp_path}"))
    with pytest.raises(DataError, match="not a GLUE task"):
        glue.test_sets(task("task.dataset=squad"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="nyu-mll/glue"):  # MRPC has no local file here
        glue.test_sets(task("task.dataset=mrpc", f"task.data_dir={tmp_path}"))


def test_metrics_match_their_definitions():
    labels, predicted = [1, 0, 1, 1, 0, 0], [1, 0, 0, 1, 1, 0]
    tp, tn, fp, fn = 2, 2, 1, 1
    cola = glue_metrics("cola", predicted, labels)
    assert cola["accuracy"] == pytest.approx(4 / 6)
    assert cola["matthews"] == pytest.approx((tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert glue_metrics("mrpc", predicted, labels)["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    stsb = glue_metrics("stsb", [0.1, 0.4, 0.35, 0.8], [0.0, 1.0, 2.0, 3.0])
    assert stsb["spearman"] == pytest.approx(0.8) and 0.8 < stsb["pearson"] < 1.0


def test_headlines_on_many_resamples_are_sklearns_and_scipys_on_each(data_dir):
    """The bootstrap's vectorised headlines against glue_metrics (sklearn, scipy) resample by resample, on real
    dev labels: CoLA's Matthews, RTE's accuracy, and a Pearson over STS-B-like scores; with the resamples where a
    side is constant (Matthews 0, Pearson NaN)."""
    scorer = benchmarks.get("glue").scorer("glue_dev")
    rng = np.random.default_rng(0)
    for name in ("cola", "rte"):
        labels = [r["label"] for r in glue.test_sets(task(f"task.dataset={name}", "task.test_subset=null"))[name]]
        flips = rng.random(len(labels)) < 0.3
        rows = [{"prediction": int(y != f), "label": y} for y, f in zip(labels, flips)]
        index = rng.integers(0, len(rows), (40, len(rows)))
        index[0] = [i for i, r in enumerate(rows) if r["prediction"] == r["label"] == 1][0]  # one class only
        expected = [scorer.summarize(name, [rows[i] for i in draw])["accuracy"] for draw in index]
        assert scorer.headline_of_resamples(name, rows, index) == pytest.approx(expected, abs=1e-9)
    scores = rng.uniform(0, 5, 300)
    rows = [{"prediction": float(s + rng.normal(0, 1.5)), "label": float(s)} for s in scores]
    index = rng.integers(0, 300, (40, 300))
    index[0] = 7  # one row repeated: a constant sample
    found = scorer.headline_of_resamples("stsb", rows, index)
    assert np.isnan(found[0])
    expected = [100 * glue_metrics("stsb", *zip(*[(rows[i]["prediction"], rows[i]["label"]) for i in draw]))["pearson"]
                for draw in index[1:]]
    assert found[1:] == pytest.approx(expected, abs=1e-9)


def test_head_trains_apart_from_the_adapter_at_its_own_rate():
    from harness.models import load

    cfg = compose(["model=minilm-l6", "task=glue", "task.dataset=rte"])
    model, tokenizer = load(cfg.model, glue.model_head(cfg.task))
    adapted = methods.apply(model, "lora", r=4, alpha=8, target_modules=["query", "value"], dropout=0.0)
    model = adapted.model
    head = methods.trainable_parameters(model, within=benchmarks.get("glue").head_modules)
    assert head == 384 * 2 + 2  # the new classifier, trained with the adapter (peft's modules_to_save)
    assert methods.trainable_parameters(model) - head == 6 * 2 * 4 * (384 + 384)
    groups = with_module_lrs(model, adapted.method.param_groups(adapted, {}), {"classifier": 5e-3})
    by_lr = {g.get("lr"): sum(p.numel() for p in g["params"]) for g in groups}
    assert by_lr == {None: 6 * 2 * 4 * 768, 5e-3: head}
    with pytest.raises(ValueError, match=r"module_lrs: no trainable parameter under module\(s\) \['pooler'\]"):
        with_module_lrs(model, adapted.method.param_groups(adapted, {}), {"classifier": 5e-3, "pooler": 1e-3})
    batch = glue.collator(tokenizer)([glue.tokenize({"text_a": "a b", "text_b": "c", "label": 1}, tokenizer, 32),
                                      glue.tokenize({"text_a": "a", "text_b": None, "label": 0}, tokenizer, 32)])
    assert batch["token_type_ids"][0].tolist()[:6] == [0, 0, 0, 0, 1, 1]  # [CLS] a b [SEP] | c [SEP]
    out = model(**batch)
    assert out.logits.shape == (2, 2) and torch.isfinite(out.loss)


def test_cola_reports_matthews_as_its_headline():
    class Constant(torch.nn.Module):  # predicts class 1 for every input
        def parameters(self):
            return iter([torch.zeros(1)])

        def forward(self, input_ids, **kwargs):
            return type("Out", (), {"logits": torch.tensor([[0.0, 1.0]]).repeat(input_ids.shape[0], 1)})()

    from harness.models import load_tokenizer

    tokenizer = load_tokenizer(compose(["model=minilm-l6"]).model)
    records = [{"text_a": "a", "text_b": None, "label": label} for label in (1, 1, 1, 0)]
    protocol = compose(["task=glue", "protocol=glue_dev"]).protocol
    task = compose(["task=glue", "task.dataset=cola"]).task
    metrics, _ = benchmarks.get("glue").scorer("glue_dev").evaluate(Constant(), tokenizer, {"cola": records}, protocol,
                                                                    task, progress=False)
    assert metrics["cola"]["metric"] == "matthews" and metrics["cola"]["accuracy"] == 0.0  # MCC of a constant: 0
    assert metrics["cola"]["matthews"] == 0.0 and abs(metrics["cola"]["accuracy"] - 75.0) > 1  # not the accuracy


def test_neat_s_preset_adapts_only_the_listed_layers():
    from harness.budget import linear_shapes
    from harness.models import load

    cfg = compose(["model=minilm-l6", "method=neat_s", "method.layers_to_transform=[2,3,4,5]"])
    model, _ = load(cfg.model, {"kind": "sequence_classification", "num_labels": 2})
    shapes = linear_shapes(model, cfg.method.target_modules, cfg.method.layers_to_transform)
    adapted = methods.apply(model, "neat", **method_options(cfg))
    adapter = (methods.trainable_parameters(adapted.model)
               - methods.trainable_parameters(adapted.model, within=benchmarks.get("glue").head_modules))
    assert len(shapes) == 8 and adapter == methods.get("neat").count(shapes, adapted.options) == 8 * 2 * 1 * 384


def test_glue_reports_the_best_dev_epoch_and_keeps_the_last(tmp_path):
    """Neat's glue.py scores the dev set after every epoch and reports the maximum; the result keeps both."""
    from harness.run import run_one

    cfg = compose(["task=glue", "protocol=glue_dev", "training=glue", "model=tiny-bert", "method=lora", "method.r=2",
                   "task.dataset=sst2", "task.train_subset=16", "task.test_subset=16", "training.epochs=3",
                   "training.batch_size=8", "training.micro_batch_size=8", "training.warmup_steps=0",
                   "meta.run.progress=false", "meta.run.save_adapter=false", f"meta.run.results_dir={tmp_path}"])
    result = run_one(cfg)
    sst2, epochs = result["eval"]["metrics"]["sst2"], result["train"]["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    per_epoch = [e["metrics"]["sst2"]["accuracy"] for e in epochs]
    assert sst2["accuracy"] == max(per_epoch) and sst2["epoch"] == per_epoch.index(max(per_epoch)) + 1
    assert sst2["last_accuracy"] == pytest.approx(per_epoch[-1])  # the final (merged) model scores as epoch 3
    assert compose(["task=glue", "protocol=glue_dev"]).selection.every == "epoch"


def test_the_predictions_kept_are_the_best_epochs_so_the_cell_lies_in_its_own_interval():
    """The audit's 5C: a cell of 95.0 with the interval [91.3, 94.6], from the last epoch's predictions."""
    from harness.models import load
    from harness.selection import EpochScorer, best_epoch_metrics
    from harness.statistics import SetRuns, interval

    cfg = compose(["task=glue", "protocol=glue_dev", "model=tiny-bert", "task.dataset=sst2", "task.test_subset=48"])
    benchmark = benchmarks.get("glue")
    model, tokenizer = load(cfg.model, benchmark.model_head(cfg.task))
    model.eval()
    scorer = EpochScorer(benchmark.scorer("glue_dev"), tokenizer, benchmark.test_sets(cfg.task), cfg)
    epochs = []
    for epoch in (1, 2, 3):  # three "epochs": the classifier's bias moved each time, so the scores differ
        with torch.no_grad():
            model.classifier.bias.copy_(torch.tensor([1.0, -1.0]) * (epoch - 2) * 5)
        epochs.append(scorer(model, epoch))
    last_metrics, last_rows = benchmark.scorer("glue_dev").evaluate(model, tokenizer, benchmark.test_sets(cfg.task),
                                                                     cfg.protocol, cfg.task, progress=False)
    metrics = best_epoch_metrics(last_metrics, epochs)
    scores = [e["metrics"]["sst2"]["accuracy"] for e in epochs]
    assert len(set(scores)) > 1 and metrics["sst2"]["accuracy"] == max(scores)
    kept = scorer.predictions(metrics, last_rows)["sst2"]
    recomputed = 100.0 * sum(r["correct"] for r in kept) / len(kept)
    assert recomputed == pytest.approx(metrics["sst2"]["accuracy"])
    low, high = interval([SetRuns([kept])])
    assert low <= metrics["sst2"]["accuracy"] <= high


def test_best_epoch_metrics_pick_each_sets_best():
    from harness.selection import best_epoch_metrics

    last = {"cola": {"accuracy": 40.0, "n": 4, "seconds": 1.0}}
    epochs = [{"epoch": 1, "metrics": {"cola": {"accuracy": 30.0, "n": 4}}},
              {"epoch": 2, "metrics": {"cola": {"accuracy": 50.0, "n": 4}}},
              {"epoch": 3, "metrics": {"cola": {"accuracy": 40.0, "n": 4}}}]
    best = best_epoch_metrics(last, epochs)["cola"]
    assert best["accuracy"] == 50.0 and best["epoch"] == 2 and best["last_accuracy"] == 40.0


def test_neat_glue_cells_use_the_scripts_per_task_settings():
    from harness.grid import experiment_cells

    base, grid = experiment_cells(["experiment=table3", "profile=paper", "meta.seeds=null"])  # (each cell once: seed 0)
    cells = {(c.task.dataset, c.method.get("label")): c for c in grid if c.seed == 0}
    cola_s, rte_l = cells[("cola", "Neat-S")], cells[("rte", "Neat-L")]
    assert (cola_s.method.scaling, cola_s.training.module_lrs.classifier, cola_s.training.lr, cola_s.training.epochs,
            cola_s.training.batch_size) == (0.1, 1e-3, 5e-3, 100, 64)
    assert (rte_l.method.scaling, rte_l.training.module_lrs.classifier, rte_l.training.lr, rte_l.training.epochs,
            rte_l.training.batch_size) == (0.01, 5e-3, 5e-3, 100, 32)
    assert all(c.training.warmup_ratio == 0.06 for c in cells.values())
    assert compose(["experiment=table3", "profile=paper"]).meta.seeds == [0, 1, 2]  # the scripts' seed 0 first
