"""A cell's cost on a GPU: whether its peak fits, the smallest change that makes it fit, and its hours.

Training hours: the FLOPs per useful token of `harness.throughput` (~4N for an adapter on a frozen model, ~6N
for full fine-tuning) x the cell's training tokens, at a stated MFU. Evaluation hours: the prompts' prefill at the
same MFU, and each decoding step of the protocol's static batches at the slower of reading every weight once
(memory-bound at batch sizes like 16 x 4 beams) and its FLOPs, each batch running to the protocol's
max_new_tokens (an upper bound: a batch whose every row stopped early ends early).

Fixes, smallest first: a smaller micro-batch (the recipe's batch is unchanged: more accumulation), gradient
checkpointing, then FSDP2 over 2, 4 or 8 GPUs (weights, gradients and moments split, one decoder layer gathered
at a time and the next prefetched).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from harness.gpus import GpuSpec, by_cuda_name
from harness.plan.memory import Batch, MemoryEstimate, estimate
from harness.plan.work import DataShape, Work
from harness.throughput import flops_per_token

FSDP_SIZES = (2, 4, 8)


@dataclass
class Fit:
    fits: bool
    fix: str | None          # the overrides that make it fit (None: fits as it is, or nothing found)
    gpus: int                # the GPUs one run of the cell takes (FSDP2's N, else 1)
    memory: MemoryEstimate   # the estimate of the configuration that runs (the fix's, when one is needed)
    per_gpu: int             # bytes per GPU of that configuration


def peak_batch(cfg, shape: DataShape, micro: int | None = None) -> Batch:
    """The largest micro-batch of the cell's data: its `micro` longest examples, packed into one row or padded
    to the longest (a task with a head of its own, GLUE's or an image set's, collates padded rows)."""
    micro = micro or int(cfg.training.micro_batch_size)
    longest = shape.lengths[:micro] or [int(cfg.task.get("cutoff_len") or 256)] * micro
    packed = cfg.training.get("batching", "packed") == "packed" and not shape.own_collator
    if packed:
        return Batch(1, sum(longest), len(longest), True)
    return Batch(len(longest), max(longest), len(longest), False)


def _accumulation(cfg, micro: int) -> int:
    return max(1, int(cfg.training.batch_size) // micro)


def fsdp_bytes(memory: MemoryEstimate, n: int) -> int:
    """Per GPU under FSDP2 over `n`: weights, moments and gradients / n, the forward / backward's activations
    whole, the optimizer step's scratch / n (it runs on the shards), and two decoder layers gathered in bf16 (the
    one computing and the one prefetched)."""
    static = memory.frozen_weights + memory.trainable_weights + memory.optimizer + memory.buffers
    layer = 2 * (memory.frozen + memory.trainable) // max(memory.layers, 1)
    step = 0
    for phase, (dynamic, grads) in memory.phase_peaks.items():
        step = max(step, dynamic // n if phase == "optimizer" else dynamic - grads + grads // n)
    return static // n + step + 2 * layer


def fit(cfg, shape: DataShape, gpu: GpuSpec, headroom: float) -> Fit:
    usable = gpu.memory_bytes * (1.0 - headroom)
    micro = int(cfg.training.micro_batch_size)
    first = estimate(cfg, peak_batch(cfg, shape), _accumulation(cfg, micro))
    if first.untraced:  # the weights and moments only: no fix is searched on a peak that is not known
        return Fit(first.total <= usable, None, 1, first, first.total)
    if first.total <= usable:
        return Fit(True, None, 1, first, first.total)
    for option in _options(cfg, micro):
        batch = peak_batch(option.cfg, shape, option.micro)
        if not option.checkpointing and _scaled(first, batch) > usable * 1.05:
            continue  # (activations scale with the tokens: this micro-batch cannot fit, no need to trace it)
        mem = estimate(option.cfg, batch, _accumulation(cfg, option.micro))
        if mem.total <= usable:
            return Fit(False, option.label, 1, mem, mem.total)
    for checkpointed in (False, True):  # FSDP2, without then with checkpointing
        base = _with(cfg, checkpointing=checkpointed)
        mem = estimate(base, peak_batch(base, shape), _accumulation(cfg, micro))
        for n in FSDP_SIZES:
            per_gpu = fsdp_bytes(mem, n)
            if per_gpu <= usable:
                label = f"sharding=fsdp2 on {n} GPUs" + (" training.gradient_checkpointing=true" if checkpointed else "")
                return Fit(False, label, n, mem, per_gpu)
    return Fit(False, None, 1, first, first.total)


@dataclass
class _Option:
    cfg: object
    micro: int
    label: str
    checkpointing: bool = False


def _scaled(memory: MemoryEstimate, batch: Batch) -> float:
    """`memory`'s total with its activations scaled to `batch`'s tokens."""
    ratio = (batch.rows * batch.length) / (memory.batch.rows * memory.batch.length)
    return memory.total - memory.activations * (1.0 - ratio)


def _with(cfg, checkpointing: bool | None = None, micro: int | None = None):
    from omegaconf import OmegaConf

    changed = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    if checkpointing is not None:
        changed.training.gradient_checkpointing = checkpointing
    if micro is not None:
        changed.training.micro_batch_size = micro
    return changed


def _options(cfg, micro: int) -> list[_Option]:
    """Smaller micro-batches that divide the batch, then checkpointing at the recipe's micro-batch and at the
    smaller ones."""
    batch = int(cfg.training.batch_size)
    smaller = [m for m in range(micro - 1, 0, -1) if batch % m == 0]
    options = [_Option(_with(cfg, micro=m), m, f"training.micro_batch_size={m}") for m in smaller]
    if not cfg.training.get("gradient_checkpointing"):
        options.append(_Option(_with(cfg, checkpointing=True), micro, "training.gradient_checkpointing=true", True))
        options += [_Option(_with(cfg, checkpointing=True, micro=m), m,
                            f"training.gradient_checkpointing=true training.micro_batch_size={m}", True)
                    for m in smaller]
    return options


def measured_mfu(results_dir: str, gpu: GpuSpec) -> tuple[float | None, int]:
    """The median training MFU of the finished results made on this GPU type, and how many there were."""
    from harness.results import load_results

    values = [r["train"]["throughput"]["mfu"] for r in load_results(results_dir)
              if r.get("status") == "finished" and by_cuda_name(r["run"].get("environment", {}).get("gpu")) == gpu
              and ((r.get("train") or {}).get("throughput") or {}).get("mfu")]
    return (statistics.median(values) if values else None), len(values)


@dataclass
class Hours:
    train: float
    evaluate: float

    @property
    def total(self) -> float:
        return self.train + self.evaluate


def hours(work: Work, memory: MemoryEstimate, trains_all_weights: bool, gpu: GpuSpec, gpus: int, mfu: float,
          bandwidth_share: float) -> Hours:
    """Wall hours of one run of the cell on `gpus` GPUs (FSDP2's, or 1): training at `mfu`, evaluation sharded over
    the same GPUs (each scores every N-th record)."""
    flops_per_s = gpu.peak_flops * mfu
    train = flops_per_token(memory.matrix_params, trains_all_weights) * work.train_tokens / flops_per_s / gpus
    n = memory.matrix_params
    prefill = 2.0 * n * work.prompt_tokens / flops_per_s
    weight_bytes = 2.0 * (memory.frozen + memory.trainable)  # merged bf16 weights, read once per decoding step
    step = max(weight_bytes / (gpu.memory_tb_s * 1e12 * bandwidth_share), 2.0 * n * work.batch_rows / flops_per_s)
    evaluate = (prefill + work.generation_steps * step) / gpus
    return Hours(train / 3600.0, evaluate / 3600.0)


def schedule(durations: list[tuple[float, int]], gpus: int) -> float:
    """Wall hours of runs (hours, GPUs each) on `gpus` GPUs, longest first onto the GPUs that free up first (a
    job array's order does not matter to the total; this is its usual makespan)."""
    free = [0.0] * gpus
    for length, need in sorted(durations, key=lambda d: -d[0]):
        need = min(need, gpus)
        free.sort()
        start = free[need - 1]
        for i in range(need):
            free[i] = start + length
    return max(free) if durations else 0.0

