"""Sharded training (sharding=fsdp2, accelerate's FSDP2 plugin) on two CPU processes (torchrun, gloo): each
process holds half the weights, and the training, checkpoint selection, RoSA's masks and predictions are one
unsharded process's."""

import os

import pytest

from harness import sharding
from processes import launch, only_result  # tests/processes.py

# 24 examples, micro-batches of 2, batches of 8 (tests/test_distributed.py); 8 held-out records: 4 per process
COMMON = ["model=tiny-llama", "task.train_subset=24", "task.val_set_size=8", "task.test_subset=4",
          "training.batch_size=8", "training.micro_batch_size=2", "training.warmup_steps=1",
          "selection=val_loss", "selection.steps=1", "protocol.max_new_tokens=6", "meta.run.progress=false"]
# full fine-tuning at a rate where the held-out loss rises again at step 3: selection restores step 2's weights
FULL = [*COMMON, "method=full", "training.max_steps=3", "training.lr=3e-2", "training.schedule=constant_with_warmup"]
ROSA = [*COMMON, "method=rosa", "method.r=2", "method.density=0.05", "method.mask_warmup_steps=1",
        "method.dropout=0.0", "training.max_steps=4", "training.lr=3e-2"]


@pytest.mark.slow
@pytest.mark.parametrize("cell", [FULL, ROSA], ids=["full", "rosa"])
def test_two_sharded_processes_train_select_and_score_as_one_process(tmp_path, cell):
    launch(1, tmp_path / "one", *cell)
    launch(2, tmp_path / "two", *cell, "sharding=fsdp2")
    one, two = only_result(tmp_path / "one"), only_result(tmp_path / "two")
    assert one["run"]["id"] == two["run"]["id"]  # sharding is not part of the run id
    assert (one["train"]["sharding"], two["train"]["sharding"]) == ("none", "fsdp2")
    # sharded for real, not data parallel with whole copies
    assert one["train"]["weights_held_per_process"] == 1.0
    assert two["train"]["weights_held_per_process"] == pytest.approx(0.5, abs=0.02)
    assert two["train"]["loss_curve"] == pytest.approx(one["train"]["loss_curve"], rel=1e-4)
    assert [p["loss"] for p in two["train"]["val_curve"]] == pytest.approx([p["loss"] for p in one["train"]["val_curve"]], rel=1e-4)
    assert two["train"]["selected_step"] == one["train"]["selected_step"]
    if cell is FULL:
        assert one["train"]["selected_step"] == 2  # not the last step: the restored weights are scored
    assert two["params"]["trainable"] == one["params"]["trainable"]
    # the weights gathered after training are the unsharded run's: the same predictions, in the same order
    assert two["predictions"] == one["predictions"]
    assert len(list((tmp_path / "two" / "adapters").iterdir())) == 1


def test_an_unsharded_run_after_a_sharded_one_does_not_inherit_fsdp(monkeypatch):
    # accelerate remembers a plugin in the environment; without a process group nothing is sharded either
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert sharding.accelerator_options({"name": "fsdp2"}, "no") == {}
    assert "ACCELERATE_USE_FSDP" not in os.environ
    assert sharding.accelerator_options({"name": "none"}, "no") == {}


def test_an_unknown_sharding_is_a_config_error():
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="sharding='zero3'"):
        sharding.kind({"name": "zero3"})
