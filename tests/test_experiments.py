"""Every experiment's mini grid, end to end through `harness.reproduce` at tiny-model size (as
lightning-hydra-template's test_sweeps runs experiment=glob(*)): a broken experiment cannot hide. (The
command itself, `python -m harness.reproduce`, runs in a subprocess in tests/test_cli.py.)"""

import os

import pytest
from written_records import ALPACA_EVAL, CHATS, write_json, write_jsonl  # tests/written_records.py

from harness.config import CONFIG_DIR

pytestmark = pytest.mark.slow

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# wider than tiny-llama: table2's rank 64 and the sweep's largest budget (2.37% of the model) fit every matrix
TINY_LLAMA_WIDE = ["model=tiny-llama", "model.config.hidden_size=128", "model.config.intermediate_size=256",
                   "model.config.num_key_value_heads=4"]
# the tiny stand-in of each experiment's model, and the protocol's generation length cut to a few tokens (after SHRINK:
# an experiment may need more than its one step)
TINY = {
    "table1": ["model=tiny-llama", "protocol.max_new_tokens=2"],
    "table2": [*TINY_LLAMA_WIDE, "protocol.max_new_tokens=2", "protocol.max_new_tokens_per_set.MATH=2"],
    "table3": ["model=tiny-bert"],
    "table4": ["model=vit-mini"],
    "neat_depth": ["model=vit-mini"],
    "neat_modules": ["model=vit-mini"],
    "neat_activation": ["model=vit-mini"],
    "table5": [*TINY_LLAMA_WIDE, "protocol.max_new_tokens=2", "training.max_steps=2"],  # (AdaLoRA allocates over 2)
    "table6": [*TINY_LLAMA_WIDE, "protocol.max_new_tokens=2", "protocol.max_new_tokens_per_set.MATH=2"],
    "table9": [*TINY_LLAMA_WIDE, "protocol.max_new_tokens=2", "protocol.max_new_tokens_per_set.MATH=2"],
    "milora_instruct": ["model=tiny-llama", "task.datasets=[alpaca_eval]", "protocol.alpaca_eval.max_new_tokens=2"],
    "sweep_budget": [*TINY_LLAMA_WIDE, "protocol.max_gen_toks=2"],
}
# experiments whose data is not on this machine: records in the datasets' own formats, written by the test
def written_data(experiment, directory):
    if experiment != "milora_instruct":
        return []
    return [f"task.train_file={write_jsonl(directory / 'chats.jsonl', CHATS * 4)}",
            f"task.test_files.alpaca_eval={write_json(directory / 'alpaca_eval.json', ALPACA_EVAL)}"]


SHRINK = ["task.train_subset=8", "task.val_set_size=2", "selection.steps=1", "task.test_subset=2", "training.max_steps=1", "training.batch_size=4",
          "training.micro_batch_size=4", "training.warmup_steps=0", "meta.run.progress=false", "meta.run.save_adapter=false"]


def test_every_experiment_is_covered():
    assert sorted(TINY) == EXPERIMENTS  # a new experiment gets its tiny stand-in here


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_the_mini_grid_runs_end_to_end_and_writes_its_table(experiment, tmp_path, capsys):
    """In this process, as `python -m harness.reproduce` runs it (its cells already run in one process)."""
    from harness import reproduce

    if experiment in ("table4", "neat_activation") and not os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"):
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make setup installs it where apt-get works)")
    args = [f"experiment={experiment}", "profile=mini", *SHRINK, *TINY[experiment], *written_data(experiment, tmp_path),
            f"meta.run.results_dir={tmp_path}"]
    try:
        reproduce.main(args)
    except SystemExit as exc:
        out = capsys.readouterr()
        pytest.fail(f"harness.reproduce exited with {exc.code}: {out.out[-3000:]}{out.err[-3000:]}")
    stdout = capsys.readouterr().out
    cells = len(list((tmp_path / "runs").glob("*.json")))
    assert cells > 0 and f"summary: {cells} done, 0 reused, 0 running elsewhere, 0 failed ({cells} cells)" in stdout
    table = (tmp_path / "tables" / f"{experiment}.md").read_text()
    assert "failed" not in table and "Profile: " in table
