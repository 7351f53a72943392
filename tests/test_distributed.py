"""Two CPU processes (torchrun, gloo) on one cell: the same training, selection and predictions as one process,
one result file; what the weights decide once (SVD, RoSA's masks) is computed by the main process only."""

import json
import os
import subprocess
import sys

import pytest

from harness.config import PROJECT_ROOT
from processes import launch, only_result  # tests/processes.py

pytestmark = pytest.mark.slow

# 24 examples in micro-batches of 2 and batches of 8: 4 micro-batches per step on one process, 2 per process on
# two; 3 steps are one epoch, so no process's shard is evened out with repeated examples. No dropout: its random
# draws are per process
CELL = ["model=tiny-llama", "method=pissa", "method.r=4", "method.dropout=0.0", "task.train_subset=24", "task.val_set_size=8",
        "task.test_subset=4", "training.batch_size=8", "training.micro_batch_size=2", "training.max_steps=3",
        "training.warmup_steps=1", "training.lr=5e-3", "selection=val_loss", "selection.steps=1",
        "protocol.max_new_tokens=6", "meta.run.progress=false"]


def test_two_processes_train_select_and_score_as_one(tmp_path):
    launch(1, tmp_path / "one", *CELL)
    launch(2, tmp_path / "two", *CELL)
    one, two = only_result(tmp_path / "one"), only_result(tmp_path / "two")  # the main process alone writes it
    assert one["run"]["id"] == two["run"]["id"]  # the same cell, however many processes ran it
    assert one["train"]["processes"] == 1 and two["train"]["processes"] == 2
    assert two["train"]["loss_curve"] == pytest.approx(one["train"]["loss_curve"], rel=1e-4)
    assert [p["loss"] for p in two["train"]["val_curve"]] == pytest.approx([p["loss"] for p in one["train"]["val_curve"]], rel=1e-4)
    assert two["train"]["selected_step"] == one["train"]["selected_step"]
    assert two["train"]["throughput"]["useful_tokens"] == one["train"]["throughput"]["useful_tokens"]
    # each process scored a shard of every test set; merged in order, the predictions are one process's
    assert two["predictions"] == one["predictions"] and len(one["predictions"]) == 5 * 4
    assert {k: v["accuracy"] for k, v in two["eval"]["metrics"].items()} == {k: v["accuracy"] for k, v in one["eval"]["metrics"].items()}
    assert len(list((tmp_path / "two" / "adapters").iterdir())) == 1


def test_weight_reading_set_ups_run_once_and_every_process_holds_the_same_adapter(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "tests/distributed_worker.py",
                           str(tmp_path)], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = sorted((json.loads(f.read_text()) for f in tmp_path.glob("report-*.json")), key=lambda r: r["rank"])
    assert [r["rank"] for r in reports] == [0, 1]
    main, other = reports
    for method in ("pissa", "milora"):
        assert main[method]["svd_calls"] > 0 and other[method]["svd_calls"] == 0  # the SVD ran on the main process
        assert main[method]["digest"] == other[method]["digest"]  # and every process holds its adapter and residual
    assert (main["rosa"]["mask_generations"], other["rosa"]["mask_generations"]) == (1, 0)
    assert main["rosa"]["mask_digest"] == other["rosa"]["mask_digest"]
