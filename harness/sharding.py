"""Sharded data-parallel training (FSDP2 through accelerate): `sharding=fsdp2` on several processes.

    torchrun --nproc_per_node 8 -m harness.run method=full model=llama2-7b sharding=fsdp2 ...

Full fine-tuning of a 7B/8B model does not fit one 80 GB GPU: fp32 master weights (28 GB), their gradients
(28 GB) and AdamW's two moments (56 GB). FSDP2 splits each of them over the processes, one unit per decoder layer
(gathered for its forward and backward, freed after). accelerate's `FullyShardedDataParallelPlugin` with
`fsdp_version=2` does the wrapping (the units, the embeddings and the tail apart, tied weights, the optimizer's
parameters swapped for the sharded ones); this module chooses its options and handles what accelerate leaves to
the caller:

- accelerate 1.15 enables FSDP on accelerator devices only (its state selects FSDP for MULTI_GPU, MULTI_NPU, ...,
  never for MULTI_CPU). torch's FSDP2 itself runs on CPU processes with gloo, so for those (the tests) the same
  plugin is put into accelerate's state as accelerate would on a GPU, and the same code path runs.
- Only training is sharded. When it ends the weights are gathered into a plain copy of the model on every process
  (its structure taken on the meta device before sharding), so the parameter count, saving, merging and the
  sharded evaluation are the unsharded code: evaluation could not run on sharded weights, whose every forward
  is a collective while each process generates its own number of tokens.

With one process there is nothing to shard, and the run trains as without sharding.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch

from harness import distributed
from harness.errors import ConfigError

SHARDINGS = ("none", "fsdp2")


def kind(sharding: Mapping | None) -> str:
    name = str((sharding or {}).get("name") or "none")
    if name not in SHARDINGS:
        raise ConfigError(f"sharding={name!r}: use one of {list(SHARDINGS)}")
    return name


def active(sharding: Mapping | None) -> bool:
    """Whether this run's training is sharded: FSDP2 asked for, on more than one process."""
    return kind(sharding) == "fsdp2" and distributed.active()


def plugin(sharding: Mapping, compute: str):
    """accelerate's FSDP2 plugin for the `sharding` preset (conf/sharding/fsdp2.yaml). Mixed precision: the
    gathered weights compute in bf16 while the reduced gradients and the master weights stay fp32."""
    from accelerate import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(compute)
    policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32) if low else MixedPrecisionPolicy()
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",   # one unit per layer class in the model's _no_split_modules
        reshard_after_forward=bool(sharding.get("reshard_after_forward", True)),
        cpu_offload=CPUOffloadPolicy() if sharding.get("cpu_offload") else None,
        mixed_precision_policy=policy,
        state_dict_type="FULL_STATE_DICT",
        activation_checkpointing=False,   # training.gradient_checkpointing (transformers') does this
        cpu_ram_efficient_loading=False,  # every process loads the weights (a run loads before it adapts)
    )


def accelerator_options(sharding: Mapping | None, compute: str) -> dict:
    """Keyword arguments for `Accelerator`: the plugin when sharded. accelerate remembers a plugin through an
    environment variable (ACCELERATE_USE_FSDP), which a later unsharded run in the same process must not see."""
    os.environ.pop("ACCELERATE_USE_FSDP", None)
    return {"fsdp_plugin": plugin(sharding, compute)} if active(sharding) else {}


def enable_on_cpu(accelerator, fsdp_plugin) -> None:
    """On CPU processes, puts FSDP into accelerate's state where accelerate would on a GPU (see above)."""
    from accelerate.utils import DistributedType

    if accelerator.state.distributed_type == DistributedType.MULTI_CPU:
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = fsdp_plugin


def held_share(model: torch.nn.Module) -> float:
    """The share of the model's weights this process holds: 1/N when FSDP sharded them, 1 when it did not (the
    failure that matters: accelerate falling back to DDP without a word)."""
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    held = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)
    return held / max(sum(p.numel() for p in params), 1)


@torch.no_grad()
def gathered(sharded: torch.nn.Module, skeleton: torch.nn.Module, device) -> torch.nn.Module:
    """`skeleton` (from `harness.models.meta_copy`, taken after the method added its parameters and before
    sharding) holding the sharded model's full weights, on every process. One parameter
    at a time (each an all-gather, in the same order on every process), so the extra memory is one tensor."""
    from torch.distributed.tensor import DTensor

    _materialize(skeleton, device)
    weights = dict(sharded.named_parameters())
    for name, target in skeleton.named_parameters():
        if name not in weights:
            raise RuntimeError(f"sharded training lost parameter {name}")  # (a wrapper renamed it)
        source = weights[name]
        target.copy_(source.full_tensor() if isinstance(source, DTensor) else source)
    buffers = dict(sharded.named_buffers())  # FSDP moves buffers but does not shard them
    for name, target in skeleton.named_buffers():
        target.copy_(buffers[name])
    return skeleton


def _materialize(module: torch.nn.Module, device) -> None:
    """Real (uninitialised) tensors in place of the meta ones, one per meta tensor, so that tied weights stay tied
    (`Module.to_empty` gives each module its own copy of a shared parameter)."""
    made: dict[int, torch.Tensor] = {}
    for sub in module.modules():
        for slots in (sub._parameters, sub._buffers):
            for name, meta in list(slots.items()):
                if meta is None:
                    continue
                if id(meta) not in made:
                    empty = torch.empty_like(meta, device=device)
                    made[id(meta)] = torch.nn.Parameter(empty, requires_grad=meta.requires_grad) \
                        if isinstance(meta, torch.nn.Parameter) else empty
                slots[name] = made[id(meta)]
