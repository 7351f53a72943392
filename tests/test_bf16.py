"""The CUDA dtype path, on the CPU (issue 26): every method file of conf/method trains and scores one tiny cell with
bf16 weights and bf16 autocast (`model.dtype=bfloat16 training.precision=bf16`), the dtypes a CUDA run uses, so
that a dtype bug (the kind the H100 found in RoSA's sparse product) fails here first. Causal-LM methods on the
tiny Llama (commonsense: BoolQ), the classification ones (ReFT, BitFit, linear probing, Neat's GLUE presets) on
the tiny BERT (GLUE: RTE); and GLUE's per-epoch scoring (selection=best_epoch). bf16 on this CPU is ~30x slower
than fp32: one optimizer step of 4 examples each."""

import math

import pytest

from harness.config import CONFIG_DIR, compose
from harness.run import run_cell

pytestmark = pytest.mark.slow

BF16 = ["model.dtype=bfloat16", "training.precision=bf16", "training.micro_batch_size=4", "training.batch_size=4",
        "training.max_steps=1", "training.warmup_steps=0", "task.train_subset=8", "task.test_subset=4",
        "meta.run.progress=false"]
LLM = ["model=tiny-llama", "task=commonsense", "task.datasets=[boolq]", "task.val_set_size=0",
       "protocol.max_new_tokens=4", "selection=last"]
CLASSIFIER = ["model=tiny-bert", "task=glue", "protocol=glue_dev", "task.dataset=rte", "selection=last"]
# methods that train and score classification tasks here (ReFT is wired for GLUE; BitFit and linear probing need
# a model with biases or a new head; Neat-S / Neat-L are Neat's GLUE presets on query / value)
ON_CLASSIFIER = {"loreft", "direft", "bitfit", "linear_probe", "neat_s", "neat_l"}
# method=peft itself names no tuner (its presets do); the others: one cell each, with the file's own options
FILES = sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml") if p.stem != "peft")
SMALL = {"lora": ["method.r=4"], "dora": ["method.r=4"], "pissa": ["method.r=4"], "milora": ["method.r=4"],
         "neat": ["method.r=4"], "rosa": ["method.r=4", "method.mask_warmup_steps=1"], "spa": [],
         "eva": ["method.config.r=4"], "corda": ["method.init_batches=1"], "lora_ga_peft": ["method.init_batches=1"],
         "lora_ga": ["method.init_examples=2"], "adalora": ["training.max_steps=3"]}


# What this test found and is not fixed yet (issue 26): each must fail until fixed, then leave this list. (EVA
# was here: at r=16 its 32 components need more labelled tokens than a micro-batch of 4 short answers has, in bf16
# and fp32 alike, and peft cycled for ever; now refused in one line, harness.methods.peft_tuner.eva)
KNOWN: dict = {}


@pytest.mark.parametrize("preset", [pytest.param(name, marks=KNOWN[name]) if name in KNOWN else name for name in FILES])
def test_every_method_trains_and_scores_a_cell_in_bf16(tmp_path, preset):
    cfg = compose([*(CLASSIFIER if preset in ON_CLASSIFIER else LLM), f"method={preset}", *BF16, *SMALL.get(preset, []),
                   f"meta.run.results_dir={tmp_path}"])
    outcome = run_cell(cfg)
    assert outcome.status == "finished", outcome.error
    record = outcome.record
    placement = record["run"]["placement"]
    # (full fine-tuning keeps fp32 master weights of every weight it trains: its weights load in fp32)
    assert "bfloat16" in str(placement) or cfg.method.name == "full", placement
    assert "bf16" in str(placement), placement
    loss = record["train"].get("final_loss", record["train"].get("loss"))
    assert loss is not None and math.isfinite(loss), record["train"]
    assert record["eval"]["metrics"], record["eval"]


def test_the_best_epoch_is_chosen_by_scoring_every_epoch_in_bf16(tmp_path):
    """GLUE's checkpoint selection scores the dev set after every epoch (`selection=best_epoch`), inside training:
    in bf16 too (the per-epoch evaluation runs under the training's autocast, like the final one)."""
    cfg = compose([*CLASSIFIER, "method=lora", "selection=best_epoch", "model.dtype=bfloat16", "training.precision=bf16",
                   "training.micro_batch_size=4", "training.batch_size=4", "training.epochs=2", "training.max_steps=null",
                   "training.warmup_steps=0", "task.train_subset=8", "task.test_subset=4", "meta.run.progress=false",
                   f"meta.run.results_dir={tmp_path}"])
    outcome = run_cell(cfg)
    assert outcome.status == "finished", outcome.error
    record = outcome.record
    metrics = next(iter(record["eval"]["metrics"].values()))
    assert metrics["epoch"] in (1, 2) and "last_accuracy" in metrics, metrics
    assert len(record["train"]["epochs"]) == 2  # both epochs scored
    assert "bfloat16" in str(record["run"]["placement"])
