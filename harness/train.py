"""The training loop: `Trainer` (setup, loop, finish -> `TrainStats`) and `train`, which runs the three.

A short accelerate loop rather than HF Trainer: the method hooks (optimizer parameter groups with their own
learning rates, a pre-training phase that reads gradients, as RoSA's mask generation needs) plug in directly,
and the loop reads top to bottom. accelerate provides device placement, bf16 autocast, gradient accumulation
and the wandb tracker; transformers provides the collator and the linear warm-up schedule. What the loop does
besides stepping (selection, per-epoch scoring, progress, tracking) are callbacks (harness.callbacks).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import DataLoader

from harness.batching import (batching_of, check_packing, choice_of, example_mean_loss, language_model_collator,
                              loss_weighting_of, token_counts)
from harness import distributed, sharding
from harness.callbacks import Callback, EpochScoring, HeldOutLoss, Progress, Tracker
from harness.errors import ConfigError, DataError
from harness.models import meta_copy
from harness.placement import Placement, decide
from harness.selection import Selection
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
    selection: Selection = field(default_factory=Selection)  # which weights the run reports (conf/selection)


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
    if choice_of(training, "adapter_precision", ADAPTER_PRECISIONS, "fp32") == "fp32":
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


@dataclass
class TrainStats:
    """What a training run measured, as the result file's `train` section (`as_dict`)."""

    steps: int
    examples: int
    dropped_examples: int
    train_seconds: float
    step_seconds_mean: float | None
    first_loss: float | None
    final_loss: float | None
    loss_curve: list[float]            # the mean micro-batch loss of each optimizer step
    trainable_dtypes: list[str]        # what the weights that trained were kept in (fp32 master weights)
    optimizer_state_dtypes: list[str]  # and the optimizer's moments
    compute: str
    batching: str
    processes: int
    sharding: str
    weights_held_per_process: float
    throughput: dict
    extra: dict = field(default_factory=dict)  # the callbacks' (selection, epochs)

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        return {**out, **self.extra}


def supervised_examples(examples: list[dict]) -> list[dict]:
    """The examples with at least one supervised token. An example whose answer was cut off by cutoff_len has
    none; a micro-batch of only such examples gives a NaN loss that would poison the weights."""
    return [e for e in examples if not isinstance(e["labels"], (list, tuple)) or any(label != -100 for label in e["labels"])]


def reset_accelerate_state() -> None:
    """accelerate keeps one process-wide state and refuses another mixed precision later in the same process (a
    reproduction whose cells differ in training.precision): the run's own setting is put in place of the last."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)


class Trainer:
    """Trains a run's adapted model (`harness.methods.Adapted`) in place with its method's hooks on `data` by the
    `training` recipe: `setup` (examples, processes, accelerator, loaders, the method's pre-training phase,
    precision, optimizer), `loop` (the optimizer steps, the callbacks at their events), `finish` (the statistics,
    the model unwrapped and gathered, and put back in the handle)."""

    def __init__(self, adapted, data: TrainingData, training: Mapping, run: RunContext):
        self.adapted, self.data, self.training, self.run = adapted, data, training, run
        self.model, self.method = adapted.model, adapted.method
        self.placement = run.placement or decide(None, training)
        self.callbacks: list[Callback] = []
        self.step, self.losses, self.step_times = 0, [], []
        self.useful_tokens = self.computed_tokens = 0  # real and padded positions of the text batches

    def plain_model(self):
        return self.accelerator.unwrap_model(self.model)

    # -- setup ---------------------------------------------------------------------------------------------------
    def setup(self) -> "Trainer":
        training, run, data = self.training, self.run, self.data
        self.examples = supervised_examples(data.train)
        self.dropped = len(data.train) - len(self.examples)
        if not self.examples:
            raise DataError(f"none of the {len(data.train)} training examples has a supervised token: "
                            "raise task.cutoff_len or set task.train_on_inputs=true")
        if self.dropped:
            print(f"[harness] dropped {self.dropped} of {len(data.train)} training examples with no answer token "
                  "left after truncation to cutoff_len", flush=True)
        self._processes_and_accelerator()
        self._loaders()
        self._method_and_optimizer()
        self._callbacks()
        return self

    def _processes_and_accelerator(self) -> None:
        from accelerate import Accelerator

        training, run = self.training, self.run
        batch_size, self.micro = int(training["batch_size"]), int(training["micro_batch_size"])
        # With N processes the global batch stays the recipe's: each accumulates batch / (micro x N) micro-batches.
        distributed.start(cpu=self.placement.device == "cpu")
        self.processes = distributed.world_size()
        if batch_size % (self.micro * self.processes):
            raise ConfigError(f"training.batch_size={batch_size} is not a multiple of training.micro_batch_size="
                              f"{self.micro}" + (f" x {self.processes} processes" if self.processes > 1 else ""))
        self.accumulation = batch_size // (self.micro * self.processes)
        self.sharded = sharding.active(run.sharding)
        if self.sharded and run.on_epoch_end is not None:
            raise ConfigError("sharding=fsdp2 with selection=best_epoch: the per-epoch scoring would run on "
                              "sharded weights, whose forwards are collective", "use sharding=none (DDP) for this task")
        if self.sharded and self.data.validation and len(self.data.validation) < self.processes:
            raise ConfigError(f"sharding=fsdp2 on {self.processes} processes needs at least as many held-out records "
                              f"(task.val_set_size gives {len(self.data.validation)})")
        logging = dict(run.logging or {})
        self.tracked = bool(logging.get("wandb")) and distributed.is_main()  # (one run: the main process logs)
        reset_accelerate_state()
        shard_options = sharding.accelerator_options(run.sharding, self.placement.compute)
        self.accelerator = Accelerator(mixed_precision=self.placement.compute,
                                       gradient_accumulation_steps=self.accumulation,
                                       log_with="wandb" if self.tracked else None,
                                       cpu=self.placement.device == "cpu", **shard_options)
        if self.sharded:
            sharding.enable_on_cpu(self.accelerator, shard_options["fsdp_plugin"])
        if self.tracked:
            self.accelerator.init_trackers(logging.get("wandb_project", "peft-harness"), config=dict(training),
                                           init_kwargs={"wandb": {"mode": logging.get("wandb_mode", "offline"),
                                                                  "name": run.name}})

    def _loaders(self) -> None:
        training, model, method = self.training, self.model, self.method
        if training.get("gradient_checkpointing"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        batching = batching_of(training)
        if batching == "packed" and self.data.collator is None and not method.can_pack(self.adapted):
            print(f"[harness] method={method.name} adds to every row of a batch: padded batches, not packed", flush=True)
            batching = "padded"
        self.loader = make_loader(self.examples, self.data.tokenizer, self.micro, shuffle=True, seed=self.run.seed,
                                  num_workers=int(training.get("num_workers", 0)), collator=self.data.collator,
                                  batching=batching)
        # (accelerate gives each process every N-th micro-batch of the loader)
        self.steps_per_epoch = math.ceil(len(self.loader) / (self.accumulation * self.processes))
        self.total_steps = (int(training["max_steps"]) if training.get("max_steps")
                            else self.steps_per_epoch * int(training["epochs"]))
        self.batching = batching if self.data.collator is None else "benchmark"  # (its own collator: not text)

    def _method_and_optimizer(self) -> None:
        training, model, method = self.training, self.model, self.method
        # Before the optimizer exists: a method may add parameters here (RoSA's sparse part, from gradients).
        model.to(self.accelerator.device)
        # (the whole loader, not a process's shard; `on_main`: what the main process computes for all, RoSA's masks)
        method.before_training(self.adapted, {"loader": self.loader, "device": self.accelerator.device, "training": training,
                                       "accumulation": self.accumulation * self.processes,
                                       "total_steps": self.total_steps, "on_main": distributed.on_main})
        upcast_trainable(model, keep=method.set_trainable_precision(self.adapted) | adapter_in_base_dtype(model, training))
        groups = with_module_lrs(model, method.param_groups(self.adapted, dict(training)), training.get("module_lrs"))
        self.optimizer, self.scheduler = optimizer_and_schedule(groups, training, self.total_steps)
        self.skeleton = meta_copy(model) if self.sharded else None  # what the trained weights are gathered into
        # The schedule is stepped here once per optimizer step: accelerate's wrapper would step it once per process
        # (it assumes the processes' batches add up to a larger one; here they split the recipe's batch).
        self.model, self.optimizer, self.loader = self.accelerator.prepare(model, self.optimizer, self.loader)
        self.held_share = sharding.held_share(self.model) if self.sharded else 1.0  # (1/N when FSDP sharded them)

    def _callbacks(self) -> None:
        training, run, data = self.training, self.run, self.data
        selection = run.selection
        selection.check(len(data.validation))
        select = selection.on_held_out_loss
        eval_steps = int(selection.steps) if select else 0
        self.callbacks.append(Progress(self.total_steps, run.name, run.progress and distributed.is_main()))
        if self.tracked:
            self.callbacks.append(Tracker(int(dict(run.logging or {}).get("log_every", 10))))
        if data.validation:
            # the held-out loss (padded batches, whatever the training batching) is a mean over the held-out
            # tokens; each process takes its shard (not accelerate's, which repeats examples to even them out)
            val_loader = make_loader(distributed.shard(data.validation), data.tokenizer, self.micro, shuffle=False,
                                     seed=run.seed, collator=data.collator)
            self.callbacks.append(HeldOutLoss(val_loader, eval_steps, select, self.method.trains_all_weights,
                                              self.sharded, mean_loss))
        if run.on_epoch_end is not None:
            self.callbacks.append(EpochScoring(run.on_epoch_end, self.steps_per_epoch))

    # -- loop ----------------------------------------------------------------------------------------------------
    def loop(self) -> "Trainer":
        accelerator, model, optimizer = self.accelerator, self.model, self.optimizer
        if self.batching == "packed":  # once, before the first step: packed examples must not see each other
            probe = language_model_collator(self.data.tokenizer, "packed")(self.examples[:2])
            with accelerator.autocast():
                check_packing(accelerator.unwrap_model(model), {k: v.to(accelerator.device) for k, v in probe.items()},
                              self.placement.compute)
        weighting = loss_weighting_of(self.training)  # (token: the model's own loss; example: each example alike)
        clip = clip_norm(self.training)
        model.train()
        self.start = step_start = time.perf_counter()
        window_loss, epoch = 0.0, 0
        while self.step < self.total_steps:
            for batch in self.loader:
                useful, computed = token_counts(batch)
                self.useful_tokens, self.computed_tokens = self.useful_tokens + useful, self.computed_tokens + computed
                with accelerator.accumulate(model):
                    loss = example_mean_loss(model, batch) if weighting == "example" else model(**batch).loss
                    value = loss.item()
                    # before backward and step: no NaN ever reaches the weights (and every process stops together)
                    finite = math.isfinite(value) if self.processes == 1 else \
                        distributed.sum_over_processes([float(not math.isfinite(value))])[0] == 0
                    if not finite:
                        raise DivergedError(self.step, value)
                    accelerator.backward(loss)
                    window_loss += value / self.accumulation
                    if accelerator.sync_gradients and clip:
                        accelerator.clip_grad_norm_(model.parameters(), clip)
                    optimizer.step()  # (accelerate's optimizer steps only at the end of an accumulation)
                    if accelerator.sync_gradients:
                        self.scheduler.step()
                        self.method.after_optimizer_step(self.adapted, self.step + 1)
                    optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue
                self.step += 1
                if self.processes > 1:  # the mean over the processes' micro-batches: the loss of the whole batch
                    window_loss = distributed.sum_over_processes([window_loss])[0] / self.processes
                now = time.perf_counter()
                self.step_times.append(now - step_start)
                step_start = now
                self.losses.append(window_loss)
                for callback in self.callbacks:
                    callback.on_step(self, self.step, window_loss)
                window_loss = 0.0
                if self.step >= self.total_steps:
                    break
            epoch += 1
            for callback in self.callbacks:
                callback.on_epoch(self, epoch)
        return self

    # -- finish --------------------------------------------------------------------------------------------------
    def finish(self) -> dict:
        """{"model": the trained model (unwrapped; gathered when sharded; also the handle's model now), "stats":
        the result's `train` section}."""
        for callback in self.callbacks:
            callback.on_train_end(self)
        train_seconds = time.perf_counter() - self.start
        losses, model, placement = self.losses, self.model, self.placement
        useful, computed = (int(n) for n in distributed.sum_over_processes([self.useful_tokens, self.computed_tokens]))
        stats = TrainStats(
            steps=self.step, examples=len(self.examples), dropped_examples=self.dropped,
            train_seconds=round(train_seconds, 2),
            step_seconds_mean=round(sum(self.step_times) / len(self.step_times), 4) if self.step_times else None,
            first_loss=losses[0] if losses else None,
            final_loss=sum(losses[-10:]) / len(losses[-10:]) if losses else None,
            loss_curve=[round(loss, 6) for loss in losses],
            trainable_dtypes=dtypes(p for p in model.parameters() if p.requires_grad),
            optimizer_state_dtypes=dtypes(v for state in self.optimizer.state.values() for v in state.values()
                                          if torch.is_tensor(v) and v.dim() > 0),
            compute=placement.compute, batching=self.batching, processes=self.processes,
            sharding="fsdp2" if self.sharded else "none", weights_held_per_process=round(self.held_share, 4),
            throughput=summary(useful, computed, train_seconds, matrix_parameters(model), self.method.trains_all_weights,
                               torch.cuda.get_device_name(0) if placement.device == "cuda" else None, self.processes))
        for callback in self.callbacks:
            stats.extra.update(callback.statistics(self))
        stats = stats.as_dict()
        for callback in self.callbacks:
            callback.on_statistics(self, stats)
        model = self.accelerator.unwrap_model(model)
        if self.sharded:  # the optimizer's sharded moments are freed before the full weights are gathered
            del self.optimizer, self.scheduler
            self.accelerator.free_memory()
            model = sharding.gathered(model, self.skeleton, self.accelerator.device)
        model.config.use_cache = True
        self.adapted.model = model
        return {"model": model, "stats": stats}


def train(adapted, data: TrainingData, training: Mapping, run: RunContext) -> dict:
    """Trains the run's adapted model (`harness.methods.Adapted`) in place with its method's hooks on `data` by
    the `training` recipe; returns the trained model and the training statistics (with the per-step loss curve)."""
    return Trainer(adapted, data, training, run).setup().loop().finish()
