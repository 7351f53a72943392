"""`harness.evaluate`: a trained run's saved adapter scored again without training, under the id harness.run
gives the cell, with the training run's predictions."""

import json

import pytest

from harness.config import compose
from harness.evaluate import EvaluateError, evaluate, main
from harness.results import read_result, result_path
from harness.run import run_cell

pytestmark = pytest.mark.slow

CELL = ["model=tiny-llama", "method=milora", "method.r=4", "task.datasets=[boolq,ARC-Easy]", "task.train_subset=8",
        "task.val_set_size=0", "task.test_subset=3", "training.micro_batch_size=4", "training.batch_size=4",
        "training.max_steps=2", "training.warmup_steps=0", "protocol.max_new_tokens=6", "meta.run.progress=false"]


def test_a_run_is_scored_again_from_its_adapter_with_the_same_predictions(tmp_path):
    cfg = compose(CELL + [f"meta.run.results_dir={tmp_path}"])
    trained = run_cell(cfg).record
    rid = trained["run"]["id"]
    path = result_path(tmp_path, rid)
    predictions = path.with_suffix(".predictions.jsonl").read_text()
    # the scores are lost: only the training and the adapter remain
    broken = json.loads(path.read_text())
    broken["eval"] = {"metrics": {}}
    path.write_text(json.dumps(broken))
    path.with_suffix(".predictions.jsonl").unlink()

    again = evaluate(rid, [], str(tmp_path))
    assert again["run"]["id"] == rid and again["evaluated_from"]["run_id"] == rid
    assert path.with_suffix(".predictions.jsonl").read_text() == predictions
    scores = lambda metrics: {name: {k: v for k, v in m.items() if k != "seconds"} for name, m in metrics.items()}
    assert scores(read_result(path)["eval"]["metrics"]) == scores(trained["eval"]["metrics"])
    assert read_result(path)["train"]["loss_curve"] == trained["train"]["loss_curve"]  # not trained again

    # another setting of the protocol: a new result under the id harness.run gives that cell, reused by it
    other = evaluate(str(tmp_path / "adapters" / rid), ["protocol.num_beams=2"])
    assert other["run"]["id"] != rid and result_path(tmp_path, other["run"]["id"]).is_file()
    assert other["train"] == trained["train"] and other["run"]["config"]["protocol"]["num_beams"] == 2
    reused = run_cell(compose(CELL + [f"meta.run.results_dir={tmp_path}", "protocol.num_beams=2"]))
    assert reused.status == "reused" and reused.run_id == other["run"]["id"]


def test_a_run_without_a_result_or_adapter_is_named(tmp_path, capsys):
    with pytest.raises(EvaluateError, match="no result file for run 'nope'"):
        evaluate("nope", [], str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["nope", f"meta.run.results_dir={tmp_path}"])
    assert exit_info.value.code == 2 and "error: " in capsys.readouterr().err
