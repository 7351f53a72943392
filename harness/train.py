"""The training loop.

A short accelerate loop rather than HF Trainer: the method hooks (optimizer parameter groups with their own
learning rates, a pre-training phase that reads gradients, as RoSA's mask generation needs) plug in directly,
and the loop reads top to bottom. accelerate provides device placement, bf16 autocast, gradient accumulation
and the wandb tracker; transformers provides the collator and the linear warm-up schedule.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from harness.batching import (batching_of, check_packing, example_mean_loss, language_model_collator, loss_weighting_of,
                              token_counts)
from harness import distributed, sharding
from harness.errors import ConfigError, DataError
from harness.models import meta_copy
from harness.placement import Placement, decide
from harness.selection import BestCheckpoint
from harness.throughput import summary

SCHEDULES = ("linear", "cosine", "constant_with_warmup")  # transformers' get_scheduler names

# Bumped by a change to the loop that alters what a run computes (it enters the run id; README, "For developers").
# 2: fp32 master weights for every trained parameter; checkpoint selection; the schedule by name.
# 3: language-modelling micro-batches packed by default (training.batching); the held-out loss a mean over tokens.
BEHAVIOUR_VERSION = 3


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite; raised in that step, before the optimizer applies it."""

    hint = "lower training.lr, set training.max_grad_norm, or check the data"

    def __init__(self, step: int, loss: float):
        super().__init__(f"training diverged: loss {loss} at optimizer step {step + 1}")
        self.step, self.loss = step, loss


@dataclass
class TrainingData:
    """What to train on: encoded examples, the held-out ones, and how to batch them (`collator`: the
    benchmark's, or None for language modelling with the tokenizer's padding)."""

    train: list[dict]
    validation: list[dict] = field(default_factory=list)
    tokenizer: Any = None
    collator: Any = None


@dataclass
class RunContext:
    """What the loop needs to know about the run it is part of."""

    seed: int
    name: str = "run"
    progress: bool = True
    logging: Mapping = field(default_factory=dict)
    placement: Placement | None = None   # None: decided from the machine and training.precision
    # called with (model, epoch) after every epoch (a protocol that reports the best epoch scores there); what it
    # returns is kept in the statistics' `epochs`
    on_epoch_end: Callable[[Any, int], Any] | None = None
    sharding: Mapping | None = None      # conf/sharding: none, or fsdp2 (harness.sharding) on several processes


def make_loader(examples: list[dict], tokenizer, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                collator=None, batching: str = "padded"):
    """Batches of examples; language-modelling examples are padded or packed (`batching`, harness.batching), a
    task may bring its own collator (a classification label per example, images)."""
    collator = collator or language_model_collator(tokenizer, batching)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(examples, batch_size=batch_size, shuffle=shuffle, collate_fn=collator,
                      generator=generator, num_workers=num_workers)


def with_module_lrs(model, groups: list[dict], module_lrs: Mapping | None) -> list[dict]:
    """Splits optimizer groups so that parameters under a named module (`training.module_lrs`, e.g.
    {classifier: 5e-3} for a GLUE head) get their own learning rate. A name that matches no trainable
    parameter is an error (a head under another name would silently train at the base rate)."""
    if not module_lrs:
        return groups
    names = {id(p): n for n, p in model.named_parameters()}
    out, matched = [], set()
    for group in groups:
        rest = dict(group, params=[])
        special: dict[str, list] = {}
        for p in group["params"]:
            parts = names.get(id(p), "").split(".")
            key = next((k for k in module_lrs if k in parts), None)
            (special.setdefault(key, []) if key else rest["params"]).append(p)
        if rest["params"]:
            out.append(rest)
        out.extend(dict(group, params=params, lr=float(module_lrs[key])) for key, params in special.items())
        matched.update(special)
    unmatched = sorted(set(module_lrs) - matched)
    if unmatched:
        raise ConfigError(f"training.module_lrs: no trainable parameter under module(s) {unmatched}")
    return out


def upcast_trainable(model, keep: set[int] = frozenset()) -> None:
    """fp32 master weights for whatever trains: a parameter that trains in bf16 / fp16 loses most small updates
    (AdamW at lr 2e-5 leaves most bf16 weights unchanged). Full fine-tuning loads in fp32 already
    (harness.placement); this catches the rest (a new head, peft's modules_to_save), while the frozen weights keep
    their dtype, and so do the parameters in `keep` (a method's deliberate choice, `Method.set_trainable_precision`).
    The compute precision stays the autocast's."""
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16) and id(p) not in keep:
            p.data = p.data.float()


ADAPTER_PRECISIONS = ("fp32", "base")


def adapter_in_base_dtype(model, training: Mapping) -> set[int]:
    """`training.adapter_precision=base`: the trained parameters in the frozen weights' dtype (bf16 in a bf16 run),
    as peft <= 0.10 cast every new adapter (`update_layer`: `self.to(weight.dtype)`), the version LoRA-GA's
    baselines ran on (MiLoRA Table 5); returns their ids, which keep that dtype. `fp32` (the default, absent):
    fp32 master weights."""
    precision = training.get("adapter_precision", "fp32")
    if precision not in ADAPTER_PRECISIONS:
        raise ConfigError(f"training.adapter_precision={precision!r}: use one of {list(ADAPTER_PRECISIONS)}")
    if precision == "fp32":
        return set()
    frozen = next((p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()), None)
    kept = set()
    for p in model.parameters():
        if p.requires_grad and frozen is not None and p.is_floating_point():
            p.data = p.data.to(frozen)
            kept.add(id(p))
    return kept


def matrix_parameters(model) -> int:
    """Weights of the model's linear layers (and embeddings' output projection): the N of the FLOPs estimate."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def dtypes(tensors) -> list[str]:
    return sorted({str(t.dtype).removeprefix("torch.") for t in tensors})


def optimizer_and_schedule(groups: list[dict], training: Mapping, total_steps: int):
    """The recipe's AdamW (its betas, eps, weight decay; groups may carry their own lr) and its schedule: warm-up
    then `training.schedule` over `total_steps` (transformers' get_scheduler)."""
    from transformers import get_scheduler

    schedule = training.get("schedule", "linear")
    if schedule not in SCHEDULES:
        raise ConfigError(f"training.schedule={schedule!r}: use one of {list(SCHEDULES)}")
    optimizer = torch.optim.AdamW(groups, lr=float(training["lr"]), betas=tuple(training["adam_betas"]),
                                  eps=float(training["adam_eps"]), weight_decay=float(training["weight_decay"]))
    return optimizer, get_scheduler(schedule, optimizer, warmup_steps(training, total_steps), total_steps)


def clip_norm(training: Mapping) -> float | None:
    """`training.max_grad_norm` (None: no clipping, as RoSA's recipe)."""
    value = training.get("max_grad_norm")
    return float(value) if value else None


def warmup_steps(training: Mapping, total_steps: int) -> int:
    """`training.warmup_steps`, or else `training.warmup_ratio` of the run's optimizer steps (GLUE scripts: 6%)."""
    if training.get("warmup_steps") is not None:
        return int(training["warmup_steps"])
    return int(math.ceil(float(training.get("warmup_ratio") or 0.0) * total_steps))


@torch.no_grad()
def mean_loss(model, loader, device=None, lockstep: bool = False) -> float:
    """The held-out loss: the mean over every supervised token (over every example, for a classifier) of the
    held-out examples, whichever batches they are in, so that N processes' shards give one process's number.
    `lockstep` (sharded weights, whose every forward is a collective): a process with fewer batches than another
    repeats a forward whose loss it does not count, so every process runs as many."""
    device = device or next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    own = len(loader)
    rounds = max(distributed.gather(own)) if lockstep else own
    batches, batch = iter(loader), None
    for i in range(rounds):
        counted = i < own
        batch = next(batches) if counted else batch  # (past its own: the last one again, not counted)
        labels = batch["labels"]
        # the batch's loss is a mean over its targets: token labels shifted by one, or one label per example
        size = int((labels[:, 1:] != -100).sum()) if labels.dim() == 2 else labels.shape[0]
        if size or lockstep:
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss.item()
            if size and counted:
                total += loss * size
                count += size
    model.train()
    total, count = distributed.sum_over_processes([total, count])
    return total / max(count, 1)


def train(model, method, data: TrainingData, training: Mapping, run: RunContext) -> dict:
    """Trains `model` in place with `method`'s hooks on `data` by the `training` recipe; returns the trained
    model and the training statistics (with the per-step loss curve)."""
    from accelerate import Accelerator

    tokenizer, collator, seed, progress, run_name = data.tokenizer, data.collator, run.seed, run.progress, run.name
    train_examples, val_examples, logging = data.train, data.validation, dict(run.logging or {})
    placement = run.placement or decide(None, training)
    # An example whose answer was cut off by cutoff_len has no supervised token; a micro-batch of only such
    # examples gives a NaN loss that would poison the weights, so they are dropped (and counted).
    supervised = [e for e in train_examples
                  if not isinstance(e["labels"], (list, tuple)) or any(label != -100 for label in e["labels"])]
    dropped = len(train_examples) - len(supervised)
    if not supervised:
        raise DataError(f"none of the {len(train_examples)} training examples has a supervised token: "
                         "raise task.cutoff_len or set task.train_on_inputs=true")
    if dropped:
        print(f"[harness] dropped {dropped} of {len(train_examples)} training examples with no answer token "
              "left after truncation to cutoff_len", flush=True)
    train_examples = supervised
    batch_size, micro = int(training["batch_size"]), int(training["micro_batch_size"])
    # With N processes the global batch stays the recipe's: each accumulates batch / (micro x N) micro-batches.
    distributed.start(cpu=placement.device == "cpu")
    processes = distributed.world_size()
    if batch_size % (micro * processes):
        raise ConfigError(f"training.batch_size={batch_size} is not a multiple of training.micro_batch_size={micro}"
                          + (f" x {processes} processes" if processes > 1 else ""))
    accumulation = batch_size // (micro * processes)
    sharded = sharding.active(run.sharding)
    if sharded and run.on_epoch_end is not None:
        raise ConfigError("sharding=fsdp2 with protocol.report=best_epoch: the per-epoch scoring would run on "
                          "sharded weights, whose forwards are collective", "use sharding=none (DDP) for this task")
    if sharded and val_examples and len(val_examples) < processes:
        raise ConfigError(f"sharding=fsdp2 on {processes} processes needs at least as many held-out records "
                          f"(task.val_set_size gives {len(val_examples)})")
    trackers = "wandb" if logging.get("wandb") and distributed.is_main() else None  # (one run: the main process logs)
    # accelerate keeps one process-wide state and refuses another mixed precision later in the same process (a
    # reproduction whose cells differ in training.precision): the run's own setting is put in place of the last.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    shard_options = sharding.accelerator_options(run.sharding, placement.compute)
    accelerator = Accelerator(mixed_precision=placement.compute, gradient_accumulation_steps=accumulation,
                              log_with=trackers, cpu=placement.device == "cpu", **shard_options)
    if sharded:
        sharding.enable_on_cpu(accelerator, shard_options["fsdp_plugin"])
    if trackers:
        accelerator.init_trackers(logging.get("wandb_project", "peft-harness"), config=dict(training),
                                  init_kwargs={"wandb": {"mode": logging.get("wandb_mode", "offline"), "name": run_name}})

    if training.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    batching = batching_of(training)
    if batching == "packed" and collator is None and not method.can_pack(model):
        print(f"[harness] method={method.name} adds to every row of a batch: padded batches, not packed", flush=True)
        batching = "padded"
    loader = make_loader(train_examples, tokenizer, micro, shuffle=True, seed=seed,
                         num_workers=int(training.get("num_workers", 0)), collator=collator,
                         batching=batching)
    # (accelerate gives each process every N-th micro-batch of the loader)
    steps_per_epoch = math.ceil(len(loader) / (accumulation * processes))
    total_steps = int(training["max_steps"]) if training.get("max_steps") else steps_per_epoch * int(training["epochs"])

    # Before the optimizer exists: a method may add parameters here (RoSA's sparse part, from gradients).
    model.to(accelerator.device)
    # (the whole loader, not a process's shard; `on_main`: what the main process computes for all, RoSA's masks)
    method.before_training(model, {"loader": loader, "device": accelerator.device, "training": training,
                                   "accumulation": accumulation * processes, "total_steps": total_steps,
                                   "on_main": distributed.on_main})
    upcast_trainable(model, keep=method.set_trainable_precision(model) | adapter_in_base_dtype(model, training))
    groups = with_module_lrs(model, method.param_groups(model, dict(training)), training.get("module_lrs"))
    optimizer, scheduler = optimizer_and_schedule(groups, training, total_steps)
    skeleton = meta_copy(model) if sharded else None  # what the trained weights are gathered into
    # The schedule is stepped here once per optimizer step: accelerate's wrapper would step it once per process
    # (it assumes the processes' batches add up to a larger one; here they split the recipe's batch).
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    held_share = sharding.held_share(model) if sharded else 1.0  # (1/N when FSDP sharded the weights)
    eval_steps = int(training.get("eval_steps") or 0)
    selection = None
    if training.get("select_best"):
        if not val_examples or not eval_steps:
            raise ConfigError("training.select_best needs held-out records and training.eval_steps",
                              "set task.val_set_size (LLM-Adapters: 120) and training.eval_steps (80)")
        selection = BestCheckpoint(on_disk=method.trains_all_weights)
    # the held-out loss (padded batches, whatever the training batching) is a mean over the held-out tokens; each
    # process takes its shard (not accelerate's, which repeats examples to even the shards out)
    val_loader = (make_loader(distributed.shard(val_examples), tokenizer, micro, shuffle=False, seed=seed,
                              collator=collator) if val_examples else None)

    batching = batching if collator is None else "benchmark"  # (its own collator: not text)
    if batching == "packed":  # once, before the first step: packed examples must not see each other
        probe = language_model_collator(tokenizer, "packed")(train_examples[:2])
        with accelerator.autocast():
            check_packing(accelerator.unwrap_model(model), {k: v.to(accelerator.device) for k, v in probe.items()},
                          placement.compute)

    weighting = loss_weighting_of(training)  # (token: the model's own loss; example: each example weighs the same)
    model.train()
    step, losses, step_times = 0, [], []
    bar = tqdm(total=total_steps, desc=f"train {run_name}", disable=not (progress and distributed.is_main()))
    start = time.perf_counter()
    step_start = start
    window_loss = 0.0
    epoch, epoch_results = 0, []
    useful_tokens = computed_tokens = 0  # real and padded positions of the text batches (none for images)
    while step < total_steps:
        for batch in loader:
            useful, computed = token_counts(batch)
            useful_tokens, computed_tokens = useful_tokens + useful, computed_tokens + computed
            with accelerator.accumulate(model):
                loss = example_mean_loss(model, batch) if weighting == "example" else model(**batch).loss
                value = loss.item()
                # before backward and step: no NaN ever reaches the weights (and every process stops together)
                finite = math.isfinite(value) if processes == 1 else \
                    distributed.sum_over_processes([float(not math.isfinite(value))])[0] == 0
                if not finite:
                    raise DivergedError(step, value)
                accelerator.backward(loss)
                window_loss += value / accumulation
                if accelerator.sync_gradients and clip_norm(training):
                    accelerator.clip_grad_norm_(model.parameters(), clip_norm(training))
                optimizer.step()  # (accelerate's optimizer steps only at the end of an accumulation)
                if accelerator.sync_gradients:
                    scheduler.step()
                    method.after_optimizer_step(accelerator.unwrap_model(model), step + 1)
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            if processes > 1:  # the mean over the processes' micro-batches: the loss of the whole batch
                window_loss = distributed.sum_over_processes([window_loss])[0] / processes
            now = time.perf_counter()
            step_times.append(now - step_start)
            step_start = now
            losses.append(window_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{window_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if trackers and step % int(logging.get("log_every", 10)) == 0:
                accelerator.log({"train/loss": window_loss, "train/lr": scheduler.get_last_lr()[0]}, step=step)
            window_loss = 0.0
            if selection is not None and step % eval_steps == 0:
                plain = accelerator.unwrap_model(model)
                selection.offer(plain, step, mean_loss(plain, val_loader, accelerator.device, lockstep=sharded))
            if step >= total_steps:
                break
        epoch += 1
        if run.on_epoch_end is not None and (step % steps_per_epoch == 0 or step >= total_steps):
            model.eval()
            epoch_results.append(run.on_epoch_end(accelerator.unwrap_model(model), epoch))
            model.train()
    bar.close()
    if selection is not None:
        selection.restore(accelerator.unwrap_model(model))
    train_seconds = time.perf_counter() - start
    stats = {
        "steps": step,
        "examples": len(train_examples),
        "dropped_examples": dropped,
        "train_seconds": round(train_seconds, 2),
        "step_seconds_mean": round(sum(step_times) / len(step_times), 4) if step_times else None,
        "first_loss": losses[0] if losses else None,
        "final_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "loss_curve": [round(loss, 6) for loss in losses],  # the mean micro-batch loss of each optimizer step
        # what the weights that trained, and the optimizer's moments, were kept in (fp32 master weights)
        "trainable_dtypes": dtypes(p for p in model.parameters() if p.requires_grad),
        "optimizer_state_dtypes": dtypes(v for state in optimizer.state.values() for v in state.values()
                                         if torch.is_tensor(v) and v.dim() > 0),
        "compute": placement.compute,
        "batching": batching,
        "processes": processes,
        "sharding": "fsdp2" if sharded else "none",
        "weights_held_per_process": round(held_share, 4),
        "throughput": summary(*[int(n) for n in distributed.sum_over_processes([useful_tokens, computed_tokens])],
                              train_seconds, matrix_parameters(model), method.trains_all_weights,
                              torch.cuda.get_device_name(0) if placement.device == "cuda" else None, processes),
    }
    if epoch_results:
        stats["epochs"] = epoch_results
    if selection is not None:
        stats.update(selected_step=selection.step, val_loss=selection.loss, val_curve=selection.curve)
    elif val_loader is not None:
        stats["val_loss"] = mean_loss(accelerator.unwrap_model(model), val_loader, accelerator.device, lockstep=sharded)
        stats["val_curve"] = [{"step": step, "loss": stats["val_loss"]}]
    if trackers:
        accelerator.log({f"final/{k}": v for k, v in stats.items() if isinstance(v, (int, float))}, step=step)
        accelerator.end_training()
    model = accelerator.unwrap_model(model)
    if sharded:  # the optimizer's sharded moments are freed before the full weights are gathered
        del optimizer, scheduler
        accelerator.free_memory()
        model = sharding.gathered(model, skeleton, accelerator.device)
    model.config.use_cache = True
    return {"model": model, "stats": stats}
