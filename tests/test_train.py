"""The training loop on a tiny model: it learns, touches only trainable weights, and its options work."""

import copy

import pytest
import torch

from harness import methods
from harness.benchmarks.commonsense import data as commonsense
from harness.config import compose
from harness.selection import Selection
from harness.train import RunContext, TrainingData, train

QUIET = RunContext(seed=0, progress=False)


@pytest.fixture
def examples(tokenizer, data_dir):
    task = compose(["task.train_subset=16", "task.val_set_size=4"]).task
    train_records, val_records = commonsense.training_records(task, seed=0)
    tok = lambda r: commonsense.tokenize(r, tokenizer, 256, train_on_inputs=False)
    return [tok(r) for r in train_records], [tok(r) for r in val_records]


def training(**overrides):
    cfg = compose(["training.batch_size=4", "training.micro_batch_size=2", "training.max_steps=6",
                   "training.warmup_steps=1", "training.lr=5e-3"] + [f"training.{k}={v}" for k, v in overrides.items()])
    return cfg.training


def test_training_learns_and_only_trainable_weights_move(tiny_model, tokenizer, examples):
    # peft wraps the original modules, so these Parameter objects are the base weights being trained around
    frozen_before = [(n, p, p.detach().clone()) for n, p in tiny_model.named_parameters()]
    adapted = methods.apply(tiny_model, "lora", r=4, alpha=8, target_modules=["q_proj", "v_proj"], dropout=0.0)
    model = adapted.model
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    out = train(adapted, TrainingData(examples[0], examples[1], tokenizer), training(), QUIET)
    stats = out["stats"]
    assert stats["steps"] == 6 and stats["final_loss"] < stats["first_loss"] and "val_loss" in stats
    trained = dict(out["model"].named_parameters())
    for n, p in lora_before.items():
        assert not torch.equal(trained[n], p), n
    for n, param, before in frozen_before:
        assert not param.requires_grad and torch.equal(param, before), n


def test_gradient_checkpointing_gives_the_same_training(tiny_model, tokenizer, examples):
    losses = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same LoRA A init both times
        adapted = methods.apply(copy.deepcopy(tiny_model), "lora", r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
        model = adapted.model
        out = train(adapted, TrainingData(examples[0], [], tokenizer),
                    training(gradient_checkpointing=checkpointing), QUIET)
        losses.append((out["stats"]["first_loss"], out["stats"]["final_loss"]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_wandb_logs_offline_without_an_account(tiny_model, tokenizer, examples, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    adapted = methods.apply(tiny_model, "lora", r=2, target_modules=["q_proj"], alpha=4, dropout=0.0)
    model = adapted.model
    train(adapted, TrainingData(examples[0], [], tokenizer), training(max_steps=2),
          RunContext(seed=0, progress=False,
                     logging={"wandb": True, "wandb_mode": "offline", "wandb_project": "test", "log_every": 1}))
    assert list(tmp_path.glob("wandb/offline-run-*"))


def test_batch_size_must_be_a_multiple_of_micro_batch(tiny_model, tokenizer, examples):
    adapted = methods.apply(tiny_model, "lora", r=2, target_modules=["q_proj"], alpha=4, dropout=0.0)
    model = adapted.model
    with pytest.raises(ValueError, match="batch_size=5 is not a multiple of training.micro_batch_size=2"):
        train(adapted, TrainingData(examples[0], [], tokenizer), training(batch_size=5), QUIET)


def test_examples_without_answer_tokens_are_dropped(tiny_model, tokenizer, data_dir):
    task = compose(["task.train_subset=8", "task.val_set_size=0"]).task
    records, _ = commonsense.training_records(task, seed=0)
    cut = [commonsense.tokenize(r, tokenizer, 16, train_on_inputs=False) for r in records]
    adapted = methods.apply(tiny_model, "lora", r=2, target_modules=["q_proj"], alpha=4, dropout=0.0)
    model = adapted.model
    with pytest.raises(ValueError, match="none of the 8 training examples has a supervised token"):
        train(adapted, TrainingData(cut, [], tokenizer), training(), QUIET)
    kept = [commonsense.tokenize(r, tokenizer, 256, train_on_inputs=False) for r in records[:4]]
    out = train(adapted, TrainingData(cut + kept, [], tokenizer), training(max_steps=2), QUIET)
    assert out["stats"]["dropped_examples"] == 8 and out["stats"]["examples"] == 4
    assert out["stats"]["final_loss"] == out["stats"]["final_loss"]  # not NaN


def test_warmup_from_steps_or_from_a_ratio_of_the_run():
    from harness.train import warmup_steps

    assert warmup_steps({"warmup_steps": 100, "warmup_ratio": 0.06}, 48) == 100
    assert warmup_steps({"warmup_steps": None, "warmup_ratio": 0.06}, 48) == 3  # ceil(2.88), GLUE's 6%
    assert warmup_steps({"warmup_steps": None}, 48) == 0


def test_full_ft_keeps_fp32_master_weights_when_bf16_is_asked_and_small_updates_land(tokenizer, examples):
    """SPEC 2.3 "Precision": with bf16 weights AdamW at lr 2e-5 leaves most weights unchanged; the run loads a
    fully trained model in fp32 and trains under bf16 autocast, so nearly every weight moves."""
    from harness import models
    from harness.config import compose
    from harness.placement import decide

    cfg = compose(["model=tiny-llama", "method=full", "model.dtype=bfloat16", "training.precision=bf16"])
    placement = decide(cfg.model, cfg.training, methods.get("full").trains_all_weights)
    assert placement.weights == torch.float32 and placement.compute == "bf16"
    assert decide(cfg.model, cfg.training).weights == torch.bfloat16  # an adapter's frozen base stays bf16
    torch.manual_seed(0)
    adapted = methods.apply(models.load_model(cfg.model, tokenizer, None, placement), "full")
    model = adapted.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = train(adapted, TrainingData(examples[0][:8], [], tokenizer),
                training(max_steps=3, lr=2e-5, batch_size=4, micro_batch_size=4, warmup_steps=0, precision="bf16"),
                RunContext(seed=0, progress=False, placement=placement))
    stats = out["stats"]
    assert stats["trainable_dtypes"] == ["float32"] and stats["optimizer_state_dtypes"] == ["float32"]
    assert stats["compute"] == "bf16"
    moved = sum(int((p.detach() != before[n]).sum()) for n, p in out["model"].named_parameters())
    assert moved / sum(p.numel() for p in before.values()) > 0.9


def test_a_new_head_on_a_bf16_base_trains_in_fp32(tokenizer):
    from harness.train import upcast_trainable

    model = torch.nn.Sequential(torch.nn.Linear(4, 4).to(torch.bfloat16), torch.nn.Linear(4, 2).to(torch.bfloat16))
    model[0].requires_grad_(False)
    upcast_trainable(model)
    assert model[0].weight.dtype == torch.bfloat16 and model[1].weight.dtype == torch.float32


def test_checkpoint_selection_restores_the_lowest_validation_loss(tiny_model, tokenizer, examples):
    from harness.train import make_loader, mean_loss

    adapted = methods.apply(tiny_model, "lora", r=4, alpha=8, target_modules=["q_proj", "v_proj"], dropout=0.0)
    model = adapted.model
    selected = RunContext(seed=0, progress=False, selection=Selection.of(compose(["selection=val_loss",
                                                                                 "selection.steps=2"]).selection))
    out = train(adapted, TrainingData(examples[0], examples[1], tokenizer), training(lr=5e-2), selected)
    stats = out["stats"]
    curve = [point["loss"] for point in stats["val_curve"]]
    assert [point["step"] for point in stats["val_curve"]] == [2, 4, 6]
    assert stats["selected_step"] == stats["val_curve"][curve.index(min(curve))]["step"] and stats["val_loss"] == min(curve)
    restored = mean_loss(out["model"], make_loader(examples[1], tokenizer, 2, False, 0))
    assert restored == pytest.approx(min(curve), rel=1e-5)  # the model scored is the selected one


def test_selection_is_one_component_whose_settings_are_checked_before_training(tmp_path):
    from harness.errors import ConfigError
    from harness.preflight import check

    val_loss = Selection.of(compose(["selection=val_loss"]).selection)
    assert (val_loss.on_held_out_loss, val_loss.steps, val_loss.per_epoch) == (True, 80, False)
    best_epoch = Selection.of(compose(["task=glue", "protocol=glue_dev"]).selection)  # the protocol selects it
    assert best_epoch.per_epoch and not best_epoch.on_held_out_loss
    assert Selection.of(compose(["task=glue", "protocol=glue_dev", "selection=last"]).selection) == Selection()
    with pytest.raises(ConfigError, match="selection=val_loss needs held-out records"):
        check(compose(["model=tiny-llama", "selection=val_loss", "task.val_set_size=0"]))
    with pytest.raises(ConfigError, match="selection.steps=0 must be a positive integer"):
        Selection.of(compose(["selection=val_loss", "selection.steps=0"]).selection)
    with pytest.raises(ConfigError, match="is selected with mode=min every=steps"):
        Selection.of(compose(["selection=val_loss", "selection.every=epoch"]).selection)


def test_a_full_models_best_state_goes_to_disk_and_comes_back(tmp_path, monkeypatch):
    from harness.selection import BestCheckpoint

    monkeypatch.setenv("HARNESS_CHECKPOINT_DIR", str(tmp_path))
    model = torch.nn.Linear(3, 2)
    best = BestCheckpoint(on_disk=True)
    assert best.offer(model, 1, 0.5)
    kept = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not best.offer(model, 2, 0.7) and len(list(tmp_path.glob("harness-best-*/best.pt"))) == 1
    best.restore(model)
    assert torch.equal(model.weight, kept) and best.step == 1 and not list(tmp_path.iterdir())


def test_the_schedule_is_chosen_by_name(tiny_model, tokenizer, examples):
    from harness.errors import ConfigError

    adapted = methods.apply(tiny_model, "lora", r=2, target_modules=["q_proj"], alpha=4, dropout=0.0)
    model = adapted.model
    out = train(adapted, TrainingData(examples[0], [], tokenizer),
                training(schedule="cosine", warmup_steps="null", warmup_ratio=0.03), QUIET)
    assert out["stats"]["steps"] == 6
    with pytest.raises(ConfigError, match="training.schedule='step'"):
        train(adapted, TrainingData(examples[0], [], tokenizer), training(schedule="step"), QUIET)


def test_throughput_counts_useful_tokens_and_padding(tiny_model, tokenizer, examples):
    import math

    from harness.throughput import flops_per_token, peak_flops, summary

    supervised = [e for e in examples[0] if any(label != -100 for label in e["labels"])]
    adapted = methods.apply(tiny_model, "lora", r=2, target_modules=["q_proj"], alpha=4, dropout=0.0)
    model = adapted.model
    steps = math.ceil(len(supervised) / 4)  # one epoch: every example once, in whatever order
    out = train(adapted, TrainingData(examples[0], [], tokenizer),
                training(max_steps=steps, batch_size=4, micro_batch_size=4, batching="padded"), QUIET)
    t = out["stats"]["throughput"]
    assert t["useful_tokens"] == sum(len(e["input_ids"]) for e in supervised)
    assert t["computed_tokens"] > t["useful_tokens"] and t["padding_share"] == pytest.approx(
        1 - t["useful_tokens"] / t["computed_tokens"])
    packed = train(adapted, TrainingData(examples[0], [], tokenizer),
                   training(max_steps=steps, batch_size=4, micro_batch_size=4), QUIET)["stats"]["throughput"]
    assert packed["useful_tokens"] == packed["computed_tokens"] == t["useful_tokens"] and packed["padding_share"] == 0
    assert t["useful_tokens_per_s"] > 0 and t["mfu"] is None  # no MFU off CUDA
    # the FLOPs estimate: 4N per token for an adapter, 6N for full FT; MFU against the device's bf16 peak
    assert flops_per_token(7e9, False) == 28e9 and flops_per_token(7e9, True) == 42e9
    h200 = summary(12_000, 12_000, 1.0, 6_500_000_000, False, "NVIDIA H200")
    assert peak_flops("NVIDIA H200") == 989e12 and h200["mfu"] == pytest.approx(4 * 6.5e9 * 12_000 / 989e12, rel=1e-3)
