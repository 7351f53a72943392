"""Several processes on one cell (data parallel): who is the main process, and what it shares.

    torchrun --nproc_per_node 4 -m harness.run method=lora ...      # or: accelerate launch --num_processes 4 -m harness.run

Every process runs the cell's phases; accelerate (DDP) averages the gradients, and the harness keeps the rest
one run: only the main process takes the run's lock and writes its files; what the weights decide once (a
PiSSA / MiLoRA SVD, RoSA's masks) is computed by the main process and sent to the others (`on_main`,
`broadcast_model`), never recomputed per process; evaluation scores a shard of each test set per process and
merges them in order (`shard`, `merge_shards`). One process (no launcher) is the same code with a world of one,
and every function here is then a no-op.

The process group is accelerate's (PartialState: NCCL on GPUs, gloo on CPUs), started once per process.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

import torch

T = TypeVar("T")


def launched() -> bool:
    """Started by a launcher (torchrun / accelerate launch) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(cpu: bool) -> None:
    """Starts the process group (once; nothing without a launcher). `cpu`: gloo, for CPU runs and the tests."""
    if launched() and not torch.distributed.is_initialized():
        from datetime import timedelta

        from accelerate import PartialState

        # the others wait while the main process computes for all (RoSA's masks, an lm-eval pass): a long wait
        PartialState(cpu=cpu, timeout=timedelta(hours=3))


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and world_size() > 1


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def broadcast(obj: T) -> T:
    """The main process's `obj` on every process (pickled)."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def on_main(compute: Callable[[], T]) -> T:
    """`compute()` run by the main process only, its result sent to every process (the others wait). An
    exception it raises is raised on every process, so none is left waiting."""
    if not active():
        return compute()
    box = None
    if is_main():
        try:
            box = ("ok", compute())
        except Exception as exc:  # sent on, then raised everywhere
            box = ("error", exc if _picklable(exc) else RuntimeError(f"{type(exc).__name__}: {exc}"))
    kind, value = broadcast(box)
    if kind == "error":
        raise value
    return value


def _picklable(obj) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(obj))
        return True
    except Exception:
        return False


def gather(obj: Any) -> list:
    """Every process's `obj`, in rank order, on every process."""
    if not active():
        return [obj]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _collective_device() -> str:
    """Where a collective's tensors must be: NCCL takes CUDA tensors, gloo CPU ones."""
    return "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"


def sum_over_processes(values: list[float]) -> list[float]:
    if not active():
        return list(values)
    device = _collective_device()
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


@torch.no_grad()
def broadcast_model(model) -> None:
    """Every parameter and buffer of the main process's model copied into the others' (after an initialisation
    that read the weights ran on the main process only: PiSSA also rewrites the base weights)."""
    if not active():
        return
    device = _collective_device()
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.device.type == "meta":
            continue
        # a contiguous buffer: the collectives send raw memory, and an SVD's factors are column-major
        buffer = tensor.data.to(device).contiguous()
        torch.distributed.broadcast(buffer, src=0)
        if buffer.data_ptr() != tensor.data.data_ptr():
            tensor.data.copy_(buffer)


def shard(records: list) -> list:
    """This process's records of a test set: every world_size-th, from its rank."""
    return records[rank()::world_size()] if active() else list(records)


def merge_shards(shards: list[list]) -> list:
    """The rows of all processes' shards (`gather` of `shard`'s results) back in the test set's order."""
    total = sum(len(s) for s in shards)
    merged = [None] * total
    for r, rows in enumerate(shards):
        merged[r::len(shards)] = rows
    return merged
